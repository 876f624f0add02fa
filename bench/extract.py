"""Feature extraction rate on CPU (``memo extract``) against the pre-training step rate.

For each ``--presets`` entry ``name:segments`` (model preset : corpus size): builds a face db
and a text db of that many segments (``bench.common.make_train_dbs``: ~30 faces of 342-d per
segment, max_bb 36, subtitle-like captions) and a checkpoint of the preset (random weights:
the rate does not depend on them), then measures, round robin, ``--repeat`` rounds, best kept:

- baseline, the pre-training step rate of the same model on the same batches: the batches
  extraction forms (``MemoDataset`` + ``BucketBatchSampler(shuffle=False)`` over key-ordered
  pools, ``--batch-size``), ``--steps`` of them evenly spread over the plan, collated
  beforehand and held in memory; train mode (dropout on), forward + mean of the last hidden
  states and the pooled output + backward (as ``bench.train_model``); examples/s;
- extraction: one whole ``memotrain.recipes.extract.extract`` call on CPU (checkpoint load and
  sha256, dataset index, eval-mode fp32 forward passes, float16 feature databases written and
  published); segments/s, fixed costs included.

Ratio = extraction segments/s / step examples/s. The issue states no goal; a forward pass
without its backward is about a third of a step's work, so about 3x is what to expect.
"""
from __future__ import annotations

import shutil
import sys
import time

import numpy as np
import torch

from memodb.store.ids import id_to_key
from memotrain.checkpoint import save_checkpoint
from memotrain.config import preset
from memotrain.data import MemoDataset, collate
from memotrain.model import MemoBert
from memotrain.recipes.extract import CHUNK, extract
from memotrain.sampler import BucketBatchSampler

from .common import make_train_dbs, parser, ratio, report, scratch


def plan_batches(ds: MemoDataset, batch_size: int, steps: int) -> list[dict]:
    """``steps`` of the batches extraction forms (key order, pools of CHUNK, by length),
    evenly spread over the plan, collated."""
    keys = [id_to_key(i) for i in ds.ids]
    order = np.array(sorted(range(len(keys)), key=lambda i: keys[i].encode()), dtype=np.int64)
    sampler = BucketBatchSampler(ds.lengths[order], batch_size=batch_size, max_tokens=None,
                                 shuffle=False, pool_size=CHUNK)
    plan = list(sampler)
    pick = np.unique(np.linspace(0, len(plan) - 1, min(steps, len(plan))).round().astype(int))
    return [collate([ds[int(order[j])] for j in plan[p]]) for p in pick]


def step_rate(model, batches: list[dict], min_seconds: float) -> float:
    """Examples/s of forward + backward over ``batches`` (after one untimed step), cycling
    through them until at least ``min_seconds`` have passed (one pass at least)."""
    model.train()

    def step(b):
        out = model(b["input_ids"], b["text_lens"], faces=b["faces"], face_lens=b["face_lens"])
        (out.hidden.mean() + out.pooled.mean()).backward()
        model.zero_grad(set_to_none=True)

    step(batches[0])
    t, n, k = time.perf_counter(), 0, 0
    while k < len(batches) or time.perf_counter() - t < min_seconds:
        step(batches[k % len(batches)])
        n += len(batches[k % len(batches)]["ids"])
        k += 1
    return n / (time.perf_counter() - t)


def extract_rate(ckpt, txt, img, out, batch_size: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    r = extract(ckpt, txt, out, img_db=img, batch_size=batch_size, device="cpu")
    return r.extracted / (time.perf_counter() - t), r.extracted


def main(argv=None) -> str:
    ap = parser(__doc__, segments=0)
    ap.add_argument("--presets", default="tiny:2000,base:64",
                    help="comma-separated preset:segments pairs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2, help="batches of the step rate")
    ap.add_argument("--min-seconds", type=float, default=2.0,
                    help="the step rate cycles through its batches at least this long")
    ap.add_argument("--repeat", type=int, default=2, help="rounds (best reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    command = " ".join(["python -m bench.extract", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    with scratch(args, "extract") as d:
        for spec in args.presets.split(","):
            name, segments = spec.split(":")
            cfg = preset(name)
            root = d / name
            txt, img = make_train_dbs(root, int(segments), args.movies, args.seed,
                                      workers=args.workers)
            torch.manual_seed(args.seed)
            model = MemoBert(cfg)
            ckpt = save_checkpoint(root / "model.pt", model)
            ds = MemoDataset(txt, img, max_text_len=cfg.max_text_positions - 2,
                             max_faces=min(36, cfg.max_face_positions))
            batches = plan_batches(ds, args.batch_size, args.steps)
            best_step = best_extract = 0.0
            for _ in range(args.repeat):
                best_step = max(best_step, step_rate(model, batches, args.min_seconds))
                rate, n = extract_rate(ckpt, txt, img, root / "out", args.batch_size)
                best_extract = max(best_extract, rate)
            seq = np.mean([b["input_ids"].shape[1] + b["faces"].shape[1] for b in batches])
            rows.append([f"{name} ({cfg.layers} layers, hidden {cfg.hidden})", f"{n:,}",
                         f"{best_step:,.1f}", f"{best_extract:,.1f}",
                         ratio(best_extract / best_step)])
            notes.append(f"{name}: {n:,} segments extracted (text, faces, pooled; float16 "
                         f"lmdb); step rate over {len(batches)} batches of up to "
                         f"{args.batch_size} examples, {seq:.0f} positions padded on average")
    notes += [
        "step = forward + backward (train mode, no optimizer step) on the extraction's own "
        f"batches held in memory, after one untimed step, for at least {args.min_seconds:g} s "
        "(one pass over the batches at least); extraction = one whole extract() call "
        "(checkpoint load + sha256, dataset index, eval-mode fp32 forward, float16 feature "
        "databases written and published), fixed costs included",
        f"batch_size {args.batch_size}; {args.repeat} rounds (round robin: step, then "
        f"extraction), best of each; torch {torch.__version__}, {args.threads} threads; "
        f"command: {command}",
    ]
    return report("extract", "Feature extraction vs pre-training step rate (CPU)",
                  ["model", "segments", "step examples/s (baseline)",
                   "extraction segments/s", "vs step"], rows, notes)


if __name__ == "__main__":
    main()
