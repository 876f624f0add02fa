"""The benchmark suite: every benchmark at one scale, one after the other, each table a ratio
against a baseline measured in the same run, gathered in one markdown file.

    python -m bench --scale small|full [--only NAME,...] [--out FILE] [--tmp DIR]

Scales (the arguments each benchmark gets are in :data:`SCALES`):

- ``small``: a smoke run, seconds per benchmark (a few minutes in all on 2 cores; CI runs it:
  tests/test_bench.py). Every code path of every benchmark runs, baselines included, but on
  corpora of a few hundred to a few thousand segments: its figures are not measurements.
- ``full``: the documented figures. The benchmarks about corpus size run on generated
  200k-segment corpora (~30 faces per segment, 342-d, with captions): build_memory,
  txtdb_build, check_dataset, end_to_end (which measures the builds at that size). The
  throughput and model benchmarks run at their own defaults (a few thousand segments,
  repeated, best run kept: on a shared machine repetition matters more than size). Under an
  hour on 2 cores (estimated from the scripts' own run times), and ~20 GB of scratch space
  under ``--tmp`` at its peak (end_to_end).

``gpu`` measures on a CUDA device at ``full`` scale on a machine with one; otherwise (``small``
passes ``--tiny``, or no CUDA) it runs its tiny CPU smoke run.

``--out FILE`` (default bench/out/ALL.md) gets the command line, the machine, the git revision,
a contents table (seconds per benchmark) and every table; each table is also written beside it
as ``<name>.md``. A benchmark that fails is named at the top of the file and the suite exits 1
after running the others. ``--quick`` is kept as another name for ``--scale small``.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path

from memodb.store.manifest import write_json_atomic

from . import common

# Benchmark modules (bench/<name>.py, each with main(argv) -> markdown), in the order they run,
# and their arguments per scale. ``--tmp`` is added to each when given to the suite.
SCALES = {
    "small": {
        "imgdb_build": ["--segments", "300", "--repeat", "1"],
        "read_random": ["--segments", "500", "--reads", "2000", "--rounds", "1"],
        "build_memory": ["--segments", "1000"],
        "txtdb_build": ["--segments", "3000", "--repeat", "1"],
        "check_dataset": ["--segments", "2000", "--repeat", "1"],
        "end_to_end": ["--segments", "1000", "--movies", "10", "--steps", "5",
                       "--warmup", "3"],
        "train_loader": ["--segments", "500", "--movies", "10", "--batches", "10",
                         "--warmup", "2", "--repeat", "1"],
        "loader_scale": ["--segments", "2000", "--small", "500", "--movies", "10",
                         "--batches", "5", "--warmup", "2", "--repeat", "1"],
        "train_model": ["--preset", "tiny", "--iters", "2", "--warmup", "1", "--repeat", "1"],
        "train_memory": ["--segments", "300", "--movies", "10", "--index", "20000",
                         "--batches", "5"],
        "extract": ["--presets", "tiny:100", "--batch-size", "16", "--steps", "1",
                    "--min-seconds", "0.2", "--repeat", "1"],
        "finetune": ["--presets", "tiny:100", "--steps", "2", "--min-seconds", "0.2",
                     "--repeat", "1"],
        "joint_memory": ["--batches", "1,2", "--faces", "2", "--frozen", "2", "--warmup",
                         "0", "--steps", "1"],
        "gpu": ["--tiny"],
        "speech_extract": ["--segments", "6", "--repeat", "1"],
        "prep_speed": ["--seconds", "3", "--sizes", "384x216", "--repeat", "1"],
        "pretraining_gain": ["--movies", "2", "--segments", "24", "--steps", "4",
                             "--per-speaker", "4", "--fractions", "0.5", "--folds", "1,2",
                             "--seeds", "0", "--epochs", "1"],
    },
    "full": {
        "imgdb_build": [],  # 3,000 segments, best of 5
        "read_random": [],  # 5,000 segments, 20,000 reads, best of 5
        "build_memory": ["--segments", "200000"],
        "txtdb_build": [],  # 200,000 captions
        "check_dataset": [],  # 200,000 segments
        "end_to_end": [],  # 200,000 segments
        "train_loader": [],  # 10,000 segments
        "loader_scale": [],  # 200,000 segments against 10,000
        "train_model": [],  # base preset
        "train_memory": [],  # 1M-entry index
        "extract": [],  # tiny on 2,000 segments, base on 64
        "finetune": ["--presets", "tiny:2000,base:100", "--batch-size", "16", "--steps", "3"],
        "joint_memory": [],
        "gpu": [],  # the CUDA device when there is one, else its tiny CPU run
        "speech_extract": [],  # 120 wavs of 1-3 s, best of 2
        "prep_speed": [],  # 30 s of lines at 640x360 and 1280x720
        "pretraining_gain": [],  # 400 movie segments, 5 folds x 2 seeds, 5 / 10 / 100 % labels
    },
}
NAMES = list(SCALES["full"])


def load(names: list[str]) -> tuple[dict, dict]:
    """The benchmark modules, imported before :func:`common.set_out` moves the output folder
    (some bind ``common.OUT`` at import): (modules, failures {name: error text})."""
    modules, failures = {}, {}
    for name in names:
        try:
            modules[name] = importlib.import_module(f"bench.{name}")
        except Exception as exc:  # reported at the top of the file; the others still run
            traceback.print_exc()
            failures[name] = f"import failed: {type(exc).__name__}: {exc}"
    return modules, failures


def run(modules: dict, scale: str, tmp: str | None) -> tuple[list, dict]:
    """Each benchmark's main in turn: (tables [(name, seconds, markdown)], failures)."""
    tables, failures = [], {}
    for name, module in modules.items():
        argv = SCALES[scale][name] + (["--tmp", tmp] if tmp else [])
        print(f"== bench.{name} {shlex.join(argv)}", flush=True)
        t = time.perf_counter()
        try:
            md = module.main(argv)
        except (Exception, SystemExit) as exc:  # reported at the top of the file; go on
            traceback.print_exc()
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        tables.append((name, time.perf_counter() - t, md))
    return tables, failures


def document(command: str, scale: str, tables: list, failures: dict) -> str:
    lines = [f"# memo benchmarks, scale {scale}", "", f"Produced by `{command}`.", ""]
    if failures:
        lines += ["**FAILED** (no table): " + "; ".join(f"`{k}`: {v}" for k, v in
                                                          failures.items()), ""]
    lines += ["| benchmark | seconds |", "|---|---|"]
    lines += [f"| {name} | {s:,.0f} |" for name, s, _ in tables]
    lines += ["", f"- {common.machine()}", ""]
    return "\n".join(lines) + "\n" + "\n".join(md for _, _, md in tables)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default=None,
                    help="small: a smoke run (minutes); full: the documented figures")
    ap.add_argument("--quick", action="store_true", help="the same as --scale small")
    ap.add_argument("--only", default=None, metavar="NAME,...",
                    help=f"run only these benchmarks (of {', '.join(NAMES)})")
    ap.add_argument("--out", default=str(common.OUT / "ALL.md"), metavar="FILE",
                    help="the gathered tables (default bench/out/ALL.md); each table is also "
                         "written beside it as NAME.md")
    ap.add_argument("--tmp", default=None, metavar="DIR",
                    help="parent of the benchmarks' scratch folders (default: $TMPDIR)")
    args = ap.parse_args(argv)
    if args.quick and args.scale == "full":
        ap.error("--quick is --scale small: give one of them")
    scale = "small" if args.quick else args.scale
    if scale is None:
        ap.error("give --scale small (a smoke run, minutes) or --scale full (the documented "
                 "figures, under an hour on 2 cores)")
    names = NAMES
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in NAMES]
        if unknown or not names:
            ap.error(f"--only: unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(NAMES)}")
    out = Path(args.out).resolve()
    modules, failures = load(names)
    common.set_out(out.parent)
    tables, failed = run(modules, scale, args.tmp)
    failures.update(failed)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else
                                                     sys.argv[1:])])
    write_json_atomic(out, document(command, scale, tables, failures))
    print(f"written {out}" + (f"; FAILED: {', '.join(failures)}" if failures else ""))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
