"""Fine-tuning update rate on CPU (``memo train finetune``) against the pre-training update rate.

For each ``--presets`` entry ``name:segments``: builds a face db and a labelled text db of that
many segments (``bench.common.make_train_dbs``: ~30 faces of 342-d, max_bb 36, subtitle-like
captions; labels added as ``target``), takes ``--steps`` batches of ``--batch-size`` examples
the way the fine-tuning loop forms them (``memotrain.classifier.Batcher`` over a
``BucketBatchSampler``), collated beforehand and held in memory, and measures round robin
(``--repeat`` rounds, best kept), each a full update (forward, loss, backward, AdamW step):

- baseline, a pre-training update: ``Pretrainer`` with the ``mlm`` task (masks drawn, the tied
  MLM head on the masked tokens, cross-entropy), examples/s;
- fine-tuning updates with the ``emocls`` head (pooled [CLS] -> classes) and the ``prompt``
  head (``i am [MASK] .`` appended: 4 more tokens, the MLM head over the label words only),
  examples/s.

Ratio = fine-tuning examples/s / pre-training examples/s, same model, same batches. The issue
states no goal: fine-tuning does the same encoder work without the vocabulary-sized MLM
output, so about 1x is what to expect.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from memotrain.classifier import Batcher, Classifier, Prompt
from memotrain.config import preset
from memotrain.data import MemoDataset
from memotrain.engine import param_groups
from memotrain.model import MemoBert
from memotrain.sampler import BucketBatchSampler
from memotrain.tasks import Pretrainer

from .common import make_train_dbs, parser, ratio, report, scratch

LABELS = ["anger", "happy", "neutral", "sad"]


def batches(ds: MemoDataset, batcher: Batcher, batch_size: int, steps: int, labels) -> list:
    sampler = BucketBatchSampler(batcher.lengths(ds), batch_size=batch_size, max_tokens=None,
                                 seed=0)
    plan = list(sampler)[:steps]
    out = []
    for idx in plan:
        b = batcher([ds[int(i)] for i in idx])
        b["targets"] = torch.as_tensor(labels[np.asarray(idx)])
        out.append(b)
    return out


def rate(step, data: list, min_seconds: float) -> float:
    """Examples/s of ``step`` over ``data`` (one untimed step first), cycling until at least
    ``min_seconds`` have passed."""
    step(data[0])
    n, t0 = 0, time.perf_counter()
    while True:
        for b in data:
            step(b)
            n += len(b["ids"])
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def measure(args, name: str, segments: int, root) -> tuple[list, str]:
    txt, img = make_train_dbs(root, segments, movies=10, seed=args.seed)
    ds = MemoDataset(txt, img, max_text_len=60, max_faces=36)
    rows = []
    labels = np.arange(len(ds)) % len(LABELS)
    torch.manual_seed(args.seed)
    cfg = preset(name)
    model = MemoBert(cfg)
    pre = Pretrainer(model, ["mlm"], ds.mask_id, ds.v_range)
    prompt = Prompt("{text} i am [MASK] .", LABELS, txt)
    heads = {"emocls": Classifier(model, "emocls", 4),
             "prompt": Classifier(model, "prompt", 4, prompt.label_ids)}
    plain = batches(ds, Batcher(["text", "faces"]), args.batch_size, args.steps, labels)
    prompted = batches(ds, Batcher(["text", "faces"], prompt), args.batch_size,
                       args.steps, labels)
    gen = torch.Generator().manual_seed(args.seed)

    def updater(module, loss_of):
        opt = torch.optim.AdamW(param_groups(module, 0.01), lr=1e-5)
        module.train()

        def step(b):
            loss_of(b).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    steps = {
        "pretrain mlm (baseline)": (updater(pre, lambda b: pre("mlm", b, gen).loss), plain),
        "finetune emocls": (updater(heads["emocls"], lambda b: F.cross_entropy(
            heads["emocls"](b), b["targets"])), plain),
        "finetune prompt": (updater(heads["prompt"], lambda b: F.cross_entropy(
            heads["prompt"](b), b["targets"])), prompted),
    }
    best = {k: 0.0 for k in steps}
    for _ in range(args.repeat):
        for k, (fn, data) in steps.items():
            best[k] = max(best[k], rate(fn, data, args.min_seconds))
    base = best["pretrain mlm (baseline)"]
    for k, v in best.items():
        rows.append([f"{name}: {k}", f"{v:.1f}", ratio(v / base)])
    mean_len = float(np.mean([b["input_ids"].shape[1] + b["faces"].shape[1]
                              for b in plain]))
    note = (f"{name}: {cfg.layers} layers, hidden {cfg.hidden}; {len(ds)} segments, "
            f"batches of {args.batch_size}, {len(plain)} distinct batches (mean padded length "
            f"{mean_len:.0f} tokens; the prompt adds 4)")
    return rows, note


def main(argv=None) -> str:
    ap = parser(__doc__, segments=0)
    ap.add_argument("--presets", default="tiny:2000,base:200",
                    help="comma-separated preset:segments")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="distinct batches per measurement")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2, help="rounds (best reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    for spec in args.presets.split(","):
        name, segments = spec.split(":")
        with scratch(args, f"finetune_{name}") as root:
            rows_, note = measure(args, name, int(segments), root)
        rows += rows_
        notes.append(note)
    notes.append(f"one update = forward + loss + backward + AdamW step, train mode; "
                 f"{args.repeat} rounds round robin, each at least {args.min_seconds:g} s, "
                 f"best kept; torch {torch.__version__}, {args.threads} threads")
    return report("finetune", "Fine-tuning update rate on CPU vs pre-training",
                  ["update", "examples/s", "vs pre-training"], rows, notes)


if __name__ == "__main__":
    main()
