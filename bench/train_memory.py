"""Memory of DataLoader workers over a large dataset index against a small one.

Builds a face db and a text db over ``--segments`` segments (``bench.common.make_train_dbs``)
and a ``MemoDataset`` over them (the baseline: the small index). The large index
(``--index``, default 1M entries) is that dataset with its compact index arrays tiled to
``--index`` entries: a copy of the dataset whose ``ids`` is a ``StringArray`` of the real ids
repeated (``ids[i % n]``) and whose ``text_lens`` / ``face_lens`` are the real ones tiled, so
every entry reads a real segment; this is exactly the state ``MemoDataset.__init__`` leaves
(it stores nothing else per example), without building a 1M-segment database. Each case runs in
a fresh Python process (``bench.common.in_child``): dataset, ``BucketBatchSampler``,
``DataLoader`` (``--loader-workers`` forked workers, ``collate``), ``--batches`` batches read,
then VmRSS, Pss and private memory (Private_Clean + Private_Dirty of smaps_rollup) of each
worker and of the main process are read from /proc. Goal: a worker over the large index uses
at most 50 MiB more than one over the small index.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import torch

from memotrain.data import MemoDataset, StringArray, collate
from memotrain.sampler import BucketBatchSampler

from .common import in_child, make_train_dbs, met, parser, report, scratch

GOAL_MIB = 50


def _mem(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:")):
                out[line.split(":")[0]] = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k = line.split(":")[0]
            if k in ("Pss", "Private_Clean", "Private_Dirty"):
                out[k] = int(line.split()[1])
    out["Private"] = out.pop("Private_Clean", 0) + out.pop("Private_Dirty", 0)
    return out


def tiled(ds: MemoDataset, n: int) -> MemoDataset:
    """``ds`` with its index arrays tiled to ``n`` entries (see the module doc)."""
    big = copy.copy(ds)
    real = list(ds.ids)
    big.ids = StringArray(real[i % len(real)] for i in range(n))
    reps = -(-n // len(ds))
    big.text_lens = np.tile(ds.text_lens, reps)[:n]
    big.face_lens = None if ds.face_lens is None else np.tile(ds.face_lens, reps)[:n]
    big._readers = None
    return big


def measure(txt: str, img: str, index: int, workers: int, batches: int, batch_size: int,
            seed: int) -> dict:
    """In a fresh process: the dataset (tiled to ``index`` entries when > 0), the loader,
    ``batches`` batches read; memory (KiB) of the main process and of each worker."""
    ds = MemoDataset(txt, img, max_text_len=100, max_faces=36)
    if index:
        ds = tiled(ds, index)
    sampler = BucketBatchSampler(ds.lengths, batch_size=batch_size, max_tokens=None, seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=workers)
    it = iter(loader)
    for _ in range(batches):
        next(it)
    pids = [w.pid for w in it._workers]
    result = {"examples": len(ds), "main": _mem(os.getpid()),
              "workers": [_mem(p) for p in pids],
              "index_bytes": int(ds.ids.blob.nbytes + ds.ids.offsets.nbytes
                                 + ds.text_lens.nbytes
                                 + (0 if ds.face_lens is None else ds.face_lens.nbytes))}
    del it
    return result


def main(argv=None) -> str:
    ap = parser(__doc__, segments=2000, movies=20)
    ap.add_argument("--index", type=int, default=1_000_000, help="entries of the large index")
    ap.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--batches", type=int, default=50, help="batches read before measuring")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    with scratch(args, "train-memory") as d:
        txt, img = make_train_dbs(d, args.segments, args.movies, args.seed,
                                  workers=args.workers)
        runs = {k: in_child(measure, str(txt), str(img), n, args.loader_workers, args.batches,
                            args.batch_size, args.seed)["result"]
                for k, n in (("small", 0), ("large", args.index))}
    mib = 1024

    def worst(k, field):
        return max(w[field] for w in runs[k]["workers"]) / mib

    rows = []
    for k, what in (("small", "small index (baseline)"), ("large", "large index (tiled)")):
        r = runs[k]
        rows.append([what, f"{r['examples']:,}", f"{r['index_bytes'] / 2**20:.1f}",
                     f"{r['main']['VmRSS'] / mib:.0f} / {r['main']['Pss'] / mib:.0f}",
                     f"{worst(k, 'VmRSS'):.0f}", f"{worst(k, 'Pss'):.0f}",
                     f"{worst(k, 'Private'):.0f}", f"{worst(k, 'RssAnon'):.0f}"])
    diff = {f: worst("large", f) - worst("small", f) for f in ("VmRSS", "Pss", "Private")}
    ok = max(diff["Pss"], diff["Private"]) <= GOAL_MIB
    rows.append(["large - small", "", "", "", f"{diff['VmRSS']:+.1f}", f"{diff['Pss']:+.1f}",
                 f"{diff['Private']:+.1f}", f"<= {GOAL_MIB} MiB: {met(ok)}"])
    notes = [
        f"{args.segments:,} segments over {args.movies} movies (bench.common.make_train_dbs: "
        "~30 faces of 342-d, max_bb 36); MemoDataset(max_text_len 100, max_faces 36); the "
        f"large index: the same dataset with its index arrays tiled to {args.index:,} entries "
        "(StringArray of the real ids repeated, text_lens / face_lens tiled)",
        f"each case in a fresh process: BucketBatchSampler(batch_size {args.batch_size}) + "
        f"DataLoader({args.loader_workers} forked workers, collate), {args.batches} batches "
        "read, then /proc of the main process and of each worker; worker columns: the "
        "largest worker; Pss splits pages shared with the parent (the copy-on-write index) "
        "among the processes mapping them; private = Private_Clean + Private_Dirty; goal "
        f"judged on the larger of the Pss and private differences",
    ]
    return report("train_memory", "DataLoader worker memory: large index vs small",
                  ["index", "examples", "index MiB", "main RSS / Pss MiB", "worker RSS MiB",
                   "worker Pss MiB", "worker private MiB", "worker RssAnon MiB"], rows, notes)


if __name__ == "__main__":
    main()
