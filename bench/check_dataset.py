"""`memo db check` on a whole dataset folder (a face feature db, train / val / trn3k text dbs,
splits.json, dataset.json) against the raw read floor: every value of every database read
with an LMDB cursor and hashed with sha256, nothing decoded.

    python -m bench.check_dataset [--segments 200000] [--repeat 3] [--profile]
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lmdb

from memodb import build_dataset, check

from .common import (MIB, OUT, cores, cprofile, in_child, make_captions, make_lexicon, make_npz,
                     met, npz_ids, parser, ratio, report, scratch, summarize, timed, warm,
                     watch_anon)

GOAL_S = 60  # `memo db check` on a 200k-segment dataset folder, 2 cores
GOAL_SEGMENTS = 200_000
SPLIT = 3000  # texts in val and in trn3k (a tenth of the corpus when that is fewer)


# --- the dataset folder ---------------------------------------------------------------------
def splits(segments: int) -> list[str]:
    n = min(SPLIT, segments // 10)
    return [f"val={n}", f"trn3k={n}@train"]


def write_captions(path, segments, movies, seed) -> dict:
    """Captions for the segment ids make_npz wrote (run in a child process, so that this
    process stays small: a child's peak RSS starts at its parent's RSS at the fork)."""
    return make_captions(path, segments, movies, seed, ids=npz_ids(segments, movies))


def write_config(d: Path, segments: int) -> Path:
    """The dataset config (paths relative to it, in the scratch folder)."""
    cfg = {"name": "bench", "lexicon": "lexicon.tsv",
           "features": {"face": {"source": "npz", "conf_th": 0.5, "max_bb": 36}},
           "text": {"source": "captions.json", "faces_from": "face", "max_len": 100,
                    "splits": splits(segments), "seed": 0}}
    path = d / "dataset.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def build(config, out, workers) -> dict:
    """memo db build: every database, then its own check of the folder."""
    res = build_dataset(config, out, workers=workers)
    return {"steps": [[s.stage, s.name, s.seconds] for s in res.steps],
            "warnings": len(res.warnings), "ok": res.report.ok}


# --- what is timed ----------------------------------------------------------------------------
def memo_check(out, workers) -> dict:
    """What `memo db check OUT --workers N` runs (the report, not its printing)."""
    rep = check([out], workers=workers)
    return {"ok": rep.ok,
            "dbs": [[os.path.relpath(d.path, out), d.kind, d.summary(), len(d.problems),
                     len(d.warnings), [str(p) for p in d.problems[:3]], d.counts]
                    for d in rep.databases]}


def _read_db(path: str) -> list:
    """Every value of one database through a cursor, sha256 of each; nothing decoded."""
    t = time.perf_counter()
    n = size = 0
    with lmdb.open(path, readonly=True, lock=False, readahead=False) as env, \
            env.begin(buffers=True) as txn:
        for _, value in txn.cursor():
            hashlib.sha256(value).digest()
            n += 1
            size += len(value)
    return [path, n, size, time.perf_counter() - t]


def raw_read(out, workers) -> list:
    """The floor: one process per database (``workers`` at a time, largest first)."""
    dbs = sorted((str(p.parent) for p in Path(out).rglob("data.mdb")),
                 key=lambda p: -os.path.getsize(os.path.join(p, "data.mdb")))
    with mp.get_context("fork").Pool(min(workers, len(dbs))) as pool:
        got = list(pool.imap_unordered(_read_db, dbs))
        pool.close()
        pool.join()
    return [[os.path.relpath(p, out), n, size, s] for p, n, size, s in sorted(got)]


# Runs in a child polled for anonymous memory (one more run of each, not timed).
ANON_CHILD = """
import sys
from bench.check_dataset import memo_check, raw_read
{"base": raw_read, "memo": memo_check}[sys.argv[1]](sys.argv[2], int(sys.argv[3]))
"""


def anon_peaks(which: str, out: Path, workers: int) -> dict:
    warm(out)
    proc = subprocess.Popen([sys.executable, "-c", ANON_CHILD, which, str(out), str(workers)],
                            cwd=OUT.parent.parent)
    peaks = watch_anon(proc)
    if proc.wait():
        raise SystemExit(f"{which} failed in a child process (exit {proc.returncode})")
    return peaks


def profile(out: Path, workers: int) -> str:
    """cProfile of the check: workers=1 (all the work in one process), then the main process
    at ``workers``."""
    text = ""
    for w in sorted({1, workers}):
        warm(out)
        text += (f"\n===== memo db check, workers={w}"
                 f"{' (main process only)' if w > 1 else ''} =====\n")
        text += cprofile(check, [out], workers=w, sorts=("tottime", "cumulative"), limit=30)
    return text


def main(argv=None) -> str:
    ap = parser(__doc__, segments=200_000, movies=100)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (best reported)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile the check into bench/out/check_dataset_profile.txt")
    args = ap.parse_args(argv)
    with scratch(args, "check") as d:
        out = d / "dataset"
        t_npz, npz_bytes = timed(make_npz, d / "npz", args.segments, args.movies, args.seed,
                                 workers=args.workers)
        gen = in_child(write_captions, d / "captions.json", args.segments, args.movies,
                       args.seed)["result"]
        lex_lines = make_lexicon(d / "lexicon.tsv", gen["vocab"], seed=args.seed)
        config = write_config(d, args.segments)
        warm(d / "npz", d / "captions.json", d / "lexicon.tsv")
        built = in_child(build, config, out, args.workers)
        if not built["result"]["ok"]:
            raise SystemExit(f"the build's own check failed: {built['result']}")
        folder_bytes = warm(out)
        runs = {"base": [], "memo": []}
        for _ in range(args.repeat):  # round robin, so drift of the machine hits both
            for k, fn in (("base", raw_read), ("memo", memo_check)):
                warm(out)
                runs[k].append(in_child(fn, out, args.workers))
        anon = {k: anon_peaks(k, out, args.workers) for k in runs}
        if args.profile:
            (OUT / "check_dataset_profile.txt").write_text(profile(out, args.workers))
            print(f"profile written to {OUT / 'check_dataset_profile.txt'}")
    best, t, cpu, rss, wrss, rss0 = summarize(runs)
    reads = best["base"]["result"]
    checked = best["memo"]["result"]
    ok = all(r["result"]["ok"] for r in runs["memo"])
    n = sum(c.get("segments", 0) for *_, c in checked["dbs"] if c and "segments" in c)
    texts = sum(c.get("texts", 0) for _, kind, *_, c in checked["dbs"] if kind == "text")
    projected = t["memo"] * GOAL_SEGMENTS / n
    full = n >= GOAL_SEGMENTS

    def row(what, k, goal=""):
        return [what, f"{t[k]:.2f}", f"{statistics.median(x['seconds'] for x in runs[k]):.2f}",
                f"{cpu[k]:.2f}", f"{n / t[k]:,.0f}", ratio(t[k] / t["base"], up=True),
                f"{rss[k]:,.0f}" + (f" / {wrss[k]:,.0f}" if wrss[k] else ""),
                f"{anon[k]['main'] / 1024:,.0f} / {anon[k]['worker'] / 1024:,.0f} / "
                f"{anon[k]['sum'] / 1024:,.0f}", goal,
                (met(t[k] < GOAL_S) if full else
                 f"{met(projected < GOAL_S)} (projected {projected:.0f} s at 200k)")
                if goal else ""]

    rows = [row("raw read floor: cursor + sha256, one process per db (baseline)", "base"),
            row("memo db check (memodb.check)", "memo", f"< {GOAL_S} s at 200k")]
    b = built["result"]
    # the text dbs of one source are one step: each records the time of all of them
    step_s = {}
    for stage, name, sec in b["steps"]:
        key = name if stage != "text" else "text dbs (" + ", ".join(
            x[1] for x in b["steps"] if x[0] == "text") + ")"
        step_s[key] = max(step_s.get(key, 0), sec)
    build_rss = f"{built['peak_rss_kib'] / 1024:,.0f} MiB" + (
        f" / {built['workers_peak_rss_kib'] / 1024:,.0f} MiB"
        if built["workers_peak_rss_kib"] else "")
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in step_s.items())
    dbs_read = "; ".join(f"{p} {e:,}, {s / MIB:,.0f} MiB, {sec:.2f} s" for p, e, s, sec in reads)
    found = "; ".join(f"{p} ({kind}{', ' + s if s else ''}"
                      + (f", {np_} problem(s): {first}" if np_ else "")
                      + (f", {nw} warning(s)" if nw else "") + ")"
                      for p, kind, s, np_, nw, first, _ in checked["dbs"])
    notes = [
        f"dataset folder built by memo db build (memodb.build_dataset, "
        f"{args.workers} workers, in a child process) in {built['seconds']:.1f} s "
        f"(information; steps: {steps}; dataset.json + the build's own check "
        f"{built['seconds'] - sum(step_s.values()):.1f} s), peak RSS "
        f"{build_rss}; {b['warnings']} build warning(s)",
        f"inputs: {args.segments:,} npz segments over {args.movies} movies (bench.common."
        f"make_npz: features (n, 342) float16, n uniform 0..60, mean 30; {npz_bytes / MIB:,.0f}"
        f" MiB, written in {t_npz:.0f} s), captions for the same segment ids (bench.common."
        f"make_captions, {gen['sentences']:,} sentences, {gen['words']:,} words), a "
        f"{lex_lines}-line emotion lexicon; config: face conf_th 0.5, max_bb 36; text faces_from"
        f" face (min_faces 1), max_len 100, lexicon, splits {', '.join(splits(args.segments))}",
        f"databases (LMDB entries, __keys__ included; stored value MiB; seconds of the "
        f"baseline's read): {dbs_read}; "
        f"the folder holds {folder_bytes / MIB:,.0f} MiB in all",
        f"check report: {'ok' if ok else '**NOT ok**'} — {found}",
        f"segments/s = {n:,} feature-db segments / seconds (the check also reads {texts:,} "
        "texts); ratio = seconds / baseline seconds (at most: lower is better); CPU s = user + "
        "system seconds (all worker processes; least of the runs); peak RSS = VmHWM of the "
        "process, then of its largest worker (largest of the runs; "
        f"~{rss0:.0f} MiB of the first is the interpreter with its imports); it counts every "
        "page of the memory-mapped databases the process touched (page cache, shared, "
        "reclaimable; LMDB page faults also map neighbouring cached pages): in the check's main "
        "process, listing the feature db's keys maps nearly all of its data.mdb; and a child's "
        "ru_maxrss starts at its parent's RSS when it was forked (Linux keeps the high-water "
        "mark across exec), which is what the baseline's main process shows; peak anon = "
        "RssAnon (heap and private pages, no mapped file), polled every 50 ms in one more, "
        "untimed run of each: the main process, its largest worker, the tree summed",
        f"each run in a fresh Python process (imports not timed), {args.workers} worker "
        f"processes ({cores()} cores), the whole folder read once (page cache warm, dirty pages "
        f"synced) right before each; {args.repeat} runs of each, round robin; rates and ratios "
        "use the best run; the baseline reads each database in one process, so with one large "
        "database it is bounded by that one (a check that splits a database across workers "
        "could in principle go below it)",
        f"goal: memo db check of a {GOAL_SEGMENTS:,}-segment dataset folder in under {GOAL_S} s "
        f"on 2 cores; "
        + (f"measured {t['memo']:.1f} s" if full else
           f"this run has {n:,} segments: projected linearly, {projected:.0f} s"),
    ]
    return report("check_dataset", f"memo db check of a {n:,}-segment dataset folder",
                  ["run", "best s", "median s", "CPU s", "segments/s", "vs raw read",
                   "peak RSS MiB (main / worker)", "peak anon MiB (main / worker / sum)",
                   "goal", "met"], rows, notes)


if __name__ == "__main__":
    main()
