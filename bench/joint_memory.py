"""Joint face CNN + transformer on CPU: examples/s and peak memory per example with 0 / 1 / 2
frozen dense blocks, with and without activation checkpointing.

The model is the tiny transformer (preset ``tiny``) with the Denseface CNN as its face backbone
(DenseNet-BC growth 12, blocks 16/16/16, 64x64 crops, 342-d features: the CNN is where the
memory goes), wrapped in a ``Pretrainer`` with the ``vnce`` task, and trained with the run's own
optimizers (``memotrain.recipes.pretrain.build_optimizers``: a CNN AdamW over the unfrozen blocks, a
transformer AdamW over the rest). A batch is held in memory: ``B`` examples of ``--text`` word
pieces + [CLS]/[SEP] and ``--faces`` float16 crops each (no padding), so the CNN encodes
``B x faces`` crops per update. One update = forward + backward + both optimizer steps.

Each case (frozen blocks x checkpointing x batch size) runs in a fresh Python process
(``bench.common.in_child``), so that its peak resident memory (VmHWM) is its own: model and
optimizer set up, ``--warmup`` untimed updates, ``--steps`` timed ones (the fastest is kept:
the machine may be shared). examples/s is measured at the larger batch size. Peak memory per example is the slope of the peak between the two batch
sizes, ``(peak(B2) - peak(B1)) / (B2 - B1)``: what one more example costs (activations kept for
the backward pass, mostly the CNN's), without the fixed part (weights, optimizer states, the
interpreter). No GPU is lent to this task: the bf16 figures of the base config on a GPU are not
measured here.
"""
from __future__ import annotations

import time

import torch

from .common import in_child, parser, report

CNN_BLOCKS = 3


def measure(frozen: int, checkpointing: bool, batch: int, faces: int, text: int, warmup: int,
            steps: int, threads: int, seed: int) -> dict:
    """In a fresh process: seconds per update of the tiny joint model (see the module doc)."""
    from memotrain.model import MemoBert
    from memotrain.recipes.pretrain import build_optimizers
    from memotrain.tasks import Pretrainer
    from memotrain.trainconfig import load_train_config

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = load_train_config({
        "model": "tiny", "steps": warmup + steps, "optim": {"warmup_steps": 0},
        "data": {"corpora": [{"txt_db": "-", "rawimg_db": "-", "tasks": {"vnce": 1}}]},
        "face_backbone": {"frozen_dense_blocks": frozen, "checkpoint_activations": checkpointing,
                          "warmup_steps": 0}})
    model = MemoBert(cfg.model_config())
    model.face_cnn.set_frozen_blocks(frozen)
    model.face_cnn.checkpoint_activations = checkpointing
    pre = Pretrainer(model, ["vnce"], 103, (999, 30522)).train()
    optims = build_optimizers(pre, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    b = {"input_ids": torch.randint(1000, 30000, (batch, text + 2), generator=g),
         "text_lens": torch.full((batch,), text + 2),
         "faces": torch.randn(batch, faces, 64, 64, generator=g).half(),
         "face_lens": torch.full((batch,), faces)}

    def update(i):
        out = pre("vnce", b, torch.Generator().manual_seed(i))
        out.loss.backward()
        for op in optims:
            op.optimizer.step()
            op.optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        update(i)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        update(warmup + i)
        times.append(time.perf_counter() - t)
    return {"s_per_update": min(times),  # the best: the machine is shared
            "cnn_trainable": sum(p.numel() for p in model.face_cnn.trainable_parameters()),
            "cnn_params": sum(p.numel() for p in model.face_cnn.parameters())}


def main(argv=None) -> str:
    ap = parser(__doc__, segments=0)
    ap.add_argument("--batches", default="1,3", help="the two batch sizes (examples)")
    ap.add_argument("--faces", type=int, default=6, help="crops per example")
    ap.add_argument("--text", type=int, default=30, help="word pieces per text")
    ap.add_argument("--frozen", default="0,1,2", help="frozen dense blocks to compare")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed updates per case (best kept)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    b1, b2 = (int(x) for x in args.batches.split(","))
    if not 0 < b1 < b2:
        raise SystemExit(f"--batches {args.batches}: give two sizes, smaller first")
    rows = []
    for k in (int(x) for x in args.frozen.split(",")):
        for ckpt in (False, True):
            runs = {n: in_child(measure, k, ckpt, n, args.faces, args.text, args.warmup,
                                args.steps, args.threads, args.seed) for n in (b1, b2)}
            big = runs[b2]["result"]
            peak = {n: r["peak_rss_kib"] / 1024 for n, r in runs.items()}
            per_example = (peak[b2] - peak[b1]) / (b2 - b1)
            rows.append([k, "yes" if ckpt else "no",
                         f"{big['cnn_trainable']:,} / {big['cnn_params']:,}",
                         f"{big['s_per_update']:.2f}", f"{b2 / big['s_per_update']:.2f}",
                         f"{peak[b2]:,.0f}", f"{per_example:,.0f}",
                         f"{per_example / args.faces:.1f}"])
    notes = [
        f"preset 'tiny' transformer + Denseface CNN (growth 12, blocks 16/16/16, 64x64, "
        f"{CNN_BLOCKS} blocks; frozen k = the stem and the first k blocks); task vnce; "
        f"{args.faces} crops and {args.text} word pieces per example, no padding; one update "
        "= forward + backward + the CNN's and the transformer's AdamW steps; "
        f"{args.warmup} untimed update(s), then {args.steps} timed, the fastest kept; "
        f"examples/s at batch {b2}",
        f"each case in a fresh process; peak = VmHWM of that process at batch {b2}; per "
        f"example = (peak at batch {b2} - peak at batch {b1}) / {b2 - b1}: the memory one more "
        "example costs (kept activations), the fixed part (weights, optimizer states, "
        f"interpreter) left out; torch {torch.__version__}, {args.threads} threads",
        "no GPU was lent to this task: bf16 on a GPU with the base config is not measured",
    ]
    return report("joint_memory", "Joint face CNN: memory and speed by frozen blocks (CPU)",
                  ["frozen blocks", "activation checkpointing", "CNN trainable / all params",
                   "s / update", "examples/s", "peak RSS MiB", "MiB per example",
                   "MiB per crop"], rows, notes)


if __name__ == "__main__":
    main()
