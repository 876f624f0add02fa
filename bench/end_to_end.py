"""End to end at corpus scale: raw Denseface h5 files + captions -> a built, checked dataset
folder (what `memo db build CONFIG OUT` runs), then the pre-training input pipeline over that
folder; against the original tools' pipeline on the same inputs, and the model's step rate.

    python -m bench.end_to_end [--segments 200000] [--movies 100] [--steps 50]

Inputs (generated in the scratch folder, not timed): one h5 file per movie
(``bench.common.make_h5_parallel``: ~30 faces of 342-d float32 per segment), captions for the
same segment ids and a 300-word emotion lexicon. The dataset config builds the face feature
db from the h5 files in one pass (conf_th 0.5, max_bb 36) and the text dbs with faces_from,
the lexicon and splits (val, trn3k); no raw-crop db: pre-training on features does not read
crops, and 200k segments of 64x64 crops would be ~25 GB of generated images.

Each stage runs in a fresh Python process (imports not timed) with its inputs read once right
before (page cache warm, dirty pages synced), polled every 50 ms for the memory of its whole
process tree (``bench.common.watch_tree``); one run each (a full-scale stage takes minutes).

- memo: ``memodb.build_dataset`` (the face db, the text dbs, dataset.json, then the
  folder's check: ``memodb.check``, what `memo db check` runs). Wall time per step (the
  build's own step timings) and in all; CPU seconds; peak summed RSS and RssAnon of the tree.
- Baseline for the build: the original two-pass pipeline over the same inputs, each stage in
  its own process, summed: trans2npz (h5 -> npz files), the UNITER-style feature builder
  (``bench.imgdb_build.baseline_build``: npz -> db) and the MEmoBERT-style text builder
  (``bench.txtdb_build.baseline_build``: captions -> one text db). It does less than memo's
  build (no lexicon fields, no face filter, no splits, no check of what it wrote), so the ratio
  understates memo's lead.
- Input pipeline over the built folder: ``MemoDataset`` (txt/train + the face db) +
  ``BucketBatchSampler`` + ``DataLoader`` (``--loader-workers`` workers, ``collate``), one
  whole epoch, timed after ``--warmup`` batches: examples/s and batches/s. Baseline: the tiny
  model's pre-training step rate on batches of that folder (``Pretrainer`` mlm: forward +
  backward + AdamW, on up to 64 batches collated beforehand), examples/s; the ratio says how
  far ahead of the model the loader stays (``bench.train_loader``'s goal: >= 5x).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .common import (MIB, busy_seconds, cores, cpu_seconds, in_child, make_captions,
                     make_h5_parallel, make_lexicon, parser, ratio, report, scratch, timed, warm)

FACE_DB = "face"  # the feature's name in the config: the folder's face/ sub-folder
SPLIT = 3000  # texts in val and in trn3k (a tenth of the corpus when that is fewer)


def splits(segments: int) -> list[str]:
    n = min(SPLIT, segments // 10)
    return [f"val={n}", f"trn3k={n}@train"]


def write_config(d: Path, segments: int) -> Path:
    """The dataset config (paths relative to it, in the scratch folder)."""
    cfg = {"name": "bench", "lexicon": "lexicon.tsv",
           "features": {FACE_DB: {"source": "h5", "conf_th": 0.5, "max_bb": 36}},
           "text": {"source": "captions.json", "faces_from": FACE_DB, "min_faces": 1,
                    "max_len": 100, "splits": splits(segments), "seed": 0}}
    path = d / "dataset.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


# --- the stages, each called in a child process (bench.common.in_child) -------------------
def memo_build(config, out, workers) -> dict:
    """What `memo db build CONFIG OUT --workers N` runs (the summary table not printed)."""
    from memodb import build_dataset

    res = build_dataset(config, out, workers=workers)
    return {"steps": [[s.stage, s.name, s.seconds, s.summary] for s in res.steps],
            "warnings": res.warnings, "ok": res.report.ok,
            "problems": [f"{d.path}: {p}" for d in res.report.databases for p in d.problems][:5],
            "checked": [f"{os.path.relpath(d.path, out)} ({d.kind}, {d.summary()})"
                        for d in res.report.databases]}


def base_trans2npz(h5, npz, workers) -> int:
    from memodb.feature.trans2npz import trans2npz

    return trans2npz(h5, npz, workers=workers).written


def base_features(npz, out, workers) -> int:
    from .imgdb_build import baseline_build

    baseline_build(npz, out, workers=workers)
    return len(os.listdir(npz))


def base_text(captions, out) -> int:
    from memodb.text.wordpiece import bundled_vocab_dir, load_vocab

    from .txtdb_build import baseline_build

    baseline_build(captions, out, str(load_vocab(bundled_vocab_dir()).file))
    with open(captions, encoding="utf-8") as f:
        return len(json.load(f))


def _dataset(folder):
    from memotrain.data import MemoDataset

    dbs = json.loads((Path(folder) / "dataset.json").read_text())["databases"]
    return MemoDataset(Path(folder) / dbs["txt/train"]["path"],
                       Path(folder) / dbs[FACE_DB]["path"], max_text_len=100, max_faces=36)


def _loader_args(batch_size, loader_workers, seed):
    from types import SimpleNamespace

    return SimpleNamespace(batch_size=batch_size, max_tokens=None, seed=seed,
                           loader_workers=loader_workers)


def loader_epoch(folder, batch_size, loader_workers, warmup, seed) -> dict:
    """One epoch of the pre-training input pipeline over the folder's train texts; the first
    ``warmup`` batches (workers starting, first reads) are not timed."""
    from .train_loader import loader

    ds = _dataset(folder)
    batches = examples = 0
    t = None
    for i, b in enumerate(loader(ds, _loader_args(batch_size, loader_workers, seed))):
        if i == warmup:
            t = time.perf_counter()
        if i >= warmup:
            batches += 1
            examples += int(b["input_ids"].shape[0])
    seconds = time.perf_counter() - t
    return {"texts": len(ds), "batches": batches, "examples": examples, "seconds": seconds}


def step_rate(folder, batch_size, steps, seed) -> dict:
    """The tiny model's mlm pre-training steps on up to 64 of the folder's batches, collated
    beforehand and held in memory (3 untimed steps first)."""
    import torch

    from memotrain.config import preset
    from memotrain.model import MemoBert
    from memotrain.tasks import Pretrainer

    from .train_loader import loader, rate, stepper

    torch.manual_seed(seed)
    ds = _dataset(folder)
    held = [b for b, _ in zip(loader(ds, _loader_args(batch_size, 0, seed)), range(64))]
    pre = Pretrainer(MemoBert(preset("tiny")), ["mlm"], ds.mask_id, ds.v_range).train()
    opt = torch.optim.AdamW(pre.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    per_s = rate((held[i % len(held)] for i in range(10 ** 9)), steps, 3,
                 stepper(pre, opt, "mlm", gen))
    mean = sum(int(b["input_ids"].shape[0]) for b in held) / len(held)
    return {"steps_per_s": per_s, "examples_per_s": per_s * mean,
            "threads": torch.get_num_threads()}


# --- the run --------------------------------------------------------------------------------
def _run(fn, *args, inputs=()):
    """``fn(*args)`` in a watched child process, after reading ``inputs`` once; with
    ``others``: the cores other work kept busy meanwhile, on average (the machine is shared)."""
    warm(*inputs)
    t, busy, mine = time.perf_counter(), busy_seconds(), cpu_seconds()
    res = in_child(fn, *args, watch=True)
    other = (busy_seconds() - busy) - (cpu_seconds() - mine)
    return {**res, "others": max(0.0, other) / (time.perf_counter() - t)}


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> str:
    ap = parser(__doc__, segments=200_000, movies=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--warmup", type=int, default=10, help="untimed batches of the epoch")
    ap.add_argument("--steps", type=int, default=50, help="timed steps of the step rate")
    args = ap.parse_args(argv)
    w = args.workers
    with scratch(args, "end-to-end") as d:
        t_h5, ids = timed(make_h5_parallel, d / "h5", args.segments, args.movies, args.seed,
                          workers=w)
        gen = make_captions(d / "captions.json", len(ids), args.movies, args.seed, ids=ids)
        lex_lines = make_lexicon(d / "lexicon.tsv", gen["vocab"], 300, args.seed)
        config = write_config(d, len(ids))
        inputs = (d / "h5", d / "captions.json", d / "lexicon.tsv")
        in_bytes = _folder_bytes(d / "h5") + gen["bytes"]
        out = d / "dataset"
        memo = _run(memo_build, config, out, w, inputs=inputs)
        if not memo["result"]["ok"]:
            raise SystemExit(f"end_to_end: the built folder {out} fails its check: "
                             + "; ".join(memo["result"]["problems"]))
        out_bytes = _folder_bytes(out)
        loop = _run(loader_epoch, out, args.batch_size, args.loader_workers, args.warmup,
                    args.seed, inputs=[out])
        step = _run(step_rate, out, args.batch_size, args.steps, args.seed, inputs=[out])
        base = {"t2n": _run(base_trans2npz, d / "h5", d / "npz", w, inputs=[d / "h5"])}
        base["feat"] = _run(base_features, d / "npz", d / "base_face", w, inputs=[d / "npz"])
        npz_bytes = _folder_bytes(d / "npz")
        shutil.rmtree(d / "npz")  # 4 GiB at full scale
        base["text"] = _run(base_text, d / "captions.json", d / "base_txt",
                            inputs=[d / "captions.json"])
    n = len(ids)
    steps = memo["result"]["steps"]
    face_s = sum(s[2] for s in steps if s[0] == "feature")
    text_s = max(s[2] for s in steps if s[0] == "text")  # one create_txtdb call: one clock
    rest_s = memo["seconds"] - face_s - text_s
    base_s = sum(b["seconds"] for b in base.values())
    base_face_s = base["t2n"]["seconds"] + base["feat"]["seconds"]

    def mem(*runs):
        """Peak summed RSS / RssAnon of the process tree, the largest of ``runs`` (MiB)."""
        return " / ".join(f"{max(r['tree'][k] for r in runs) / 1024:,.0f}"
                          for k in ("rss_sum", "anon_sum"))

    def build_row(what, r, seconds=None, vs=""):
        s = r["seconds"] if seconds is None else seconds
        return [what, f"{s:.1f}", f"{r['cpu']:.1f}" if seconds is None else "",
                f"{n / s:,.0f} segments/s", mem(r) if seconds is None else "", vs]

    texts = [s for s in steps if s[0] == "text"]
    lp, st = loop["result"], step["result"]
    loader_ex = lp["examples"] / lp["seconds"]
    rows = [
        build_row("baseline: trans2npz, h5 -> npz files", base["t2n"]),
        build_row("baseline: UNITER-style feature builder, npz -> db", base["feat"]),
        build_row("baseline: MEmoBERT-style text builder, captions -> db", base["text"]),
        ["**baseline pipeline: the three above**", f"{base_s:.1f}",
         f"{sum(b['cpu'] for b in base.values()):.1f}", f"{n / base_s:,.0f} segments/s",
         mem(*base.values()), "1.00x"],
        build_row("memo db build: face db, h5 -> db in one pass", memo, face_s,
                  ratio(base_face_s / face_s)),
        build_row(f"memo db build: text dbs ({', '.join(s[1] for s in texts)}), lexicon, "
                  "faces_from", memo, text_s, ratio(base["text"]["seconds"] / text_s)),
        build_row("memo db build: dataset.json + check of the folder", memo, rest_s),
        build_row("**memo db build: raw h5 + captions -> built, checked folder**", memo,
                  vs=ratio(base_s / memo["seconds"])),
        [f"tiny model step, mlm, {st['threads']} threads (baseline)", "", "",
         f"{st['examples_per_s']:,.1f} examples/s ({st['steps_per_s']:,.1f} steps/s)",
         mem(step), "1.00x"],
        [f"input pipeline: one epoch of txt/train, {args.loader_workers} DataLoader workers",
         f"{lp['seconds']:.1f}", f"{loop['cpu']:.1f}",
         f"{loader_ex:,.0f} examples/s ({lp['batches'] / lp['seconds']:,.1f} batches/s)",
         mem(loop), ratio(loader_ex / st["examples_per_s"])],
    ]
    base_others = ", ".join(f"{b['others']:.2f}" for b in base.values())
    notes = [
        f"inputs: {n:,} segments over {args.movies} movies in h5 (make_h5_parallel: feat (n, "
        "342) float32, pred, confidence, frame_idx; n = 0 for every 9th segment, else 10..59, "
        f"mean ~31; {in_bytes / MIB:,.0f} MiB with the captions, generated in {t_h5:.0f} s, "
        f"not timed), captions for the same ids ({gen['sentences']:,} sentences, "
        f"{gen['words']:,} words; bench.common.make_captions) and a {lex_lines}-line lexicon; "
        "no raw-crop db (pre-training on features does not read crops; 200k segments of "
        "64x64 crops would be ~25 GB of generated images)",
        f"config: face h5 conf_th 0.5, max_bb 36; text faces_from face (min_faces 1), max_len "
        f"100, lexicon, splits {', '.join(splits(n))}; the built folder holds "
        f"{out_bytes / MIB:,.0f} MiB; memo's steps: "
        + "; ".join(f"{s[1]} {s[2]:.1f} s ({s[3]})" for s in steps if s[0] != "text")
        + f"; text dbs {text_s:.1f} s (" + ", ".join(f"{s[1]}: {s[3]}" for s in texts) + ")"
        + f"; {len(memo['result']['warnings'])} build warning(s); check: ok — "
        + "; ".join(memo["result"]["checked"]),
        "memo db build = memodb.build_dataset in one process with "
        f"{w} workers ({cores()} cores): the face db from the h5 files in one pass, the text "
        "dbs, dataset.json, then memodb.check of the whole folder (memo db check's "
        "work, every value decoded); its rows are the build's own step timings, the last the "
        "remainder; the bold row is the whole command",
        f"baseline = the original pipeline on the same inputs, three processes one after the "
        f"other: memo's trans2npz ({w} workers; {npz_bytes / MIB:,.0f} MiB of npz), the "
        "UNITER-style builder (bench.imgdb_build: fork Pool, np.load, msgpack-numpy, a commit "
        f"every 1000 puts, {w} workers), the MEmoBERT-style text builder (bench.txtdb_build: a "
        "tokenizer call per sentence, one db of every caption); it does less than memo (no "
        "lexicon, no face filter, no splits, no check); ratio = baseline seconds / seconds",
        "each stage in a fresh Python process (imports not timed), its inputs read once right "
        "before (page cache warm, dirty pages synced); one run each; other work on the "
        "machine meanwhile (cores it kept busy on average: the machine's busy CPU seconds from "
        "/proc/stat, less this benchmark's, per wall second): memo build "
        f"{memo['others']:.2f}, input pipeline {loop['others']:.2f}, step rate "
        f"{step['others']:.2f}, baseline {base_others}; "
        "CPU s = user + system seconds of the process and its workers (less sensitive to other "
        f"load than wall time: baseline / memo build = "
        f"{ratio(sum(b['cpu'] for b in base.values()) / memo['cpu'])} on CPU seconds); peak "
        "RSS MiB = the largest sum over the "
        "process tree of VmRSS / of RssAnon, polled every 50 ms: RSS counts the pages of "
        "memory-mapped databases a process touched (page cache, shared with other processes, "
        "reclaimable) once per process that maps them; RssAnon is heap and private memory "
        "only (a forked worker's pages still shared with its parent count in both)",
        f"input pipeline: MemoDataset(txt/train, face db, max_text_len 100, max_faces 36) "
        f"({lp['texts']:,} texts) + BucketBatchSampler(batch_size {args.batch_size}) + "
        f"DataLoader({args.loader_workers} workers, collate): {lp['batches']:,} batches timed "
        f"after {args.warmup}; baseline: Pretrainer(MemoBert(tiny), mlm) forward + backward + "
        f"AdamW, {args.steps} steps after 3 on up to 64 of those batches held in memory; "
        "ratio = loader examples/s / step examples/s",
    ]
    return report("end_to_end", f"End to end: {n:,} segments, raw h5 + captions -> built, "
                  "checked folder -> pre-training input pipeline",
                  ["stage", "wall s", "CPU s", "rate", "peak RSS MiB, tree (RSS / anon)",
                   "vs baseline"], rows, notes)


if __name__ == "__main__":
    main()
