"""GPU readiness in one command: the CUDA tests, then pre-training examples/s and peak memory
of the model in bf16 against transformers' BertModel fed the same lengths (same run), a joint
face-CNN update with 0 and 2 frozen blocks, and 2-process DDP over NCCL when two devices exist.

    python -m bench.gpu [--tiny] [--out FILE.md] [--tmp DIR]

On a CUDA machine: ``pytest -m cuda`` over the test files holding CUDA tests (in a child
process), then each case in turn on ``cuda:0``, bf16 autocast, the base preset at the reference
lengths (text 30 word pieces + [CLS]/[SEP], 36 faces: 68 positions, no padding) and the batch
the token budget gives (10,240 // 68 = 150 examples). One case = build the model and its AdamW
(fused), ``--warmup`` untimed updates, then timed updates until ``--seconds`` have passed (at
least ``--min-steps``); examples/s over the timed updates (the device synchronised at both
ends), peak = ``torch.cuda.max_memory_allocated`` of the case (weights, optimizer states,
activations). Every update starts from the batch on the host (pinned, as the DataLoader hands
it) and moves it, as training does. Cases:

- BertModel (baseline): transformers' ``BertModel`` of the same sizes, ``input_ids`` of the
  same 68 positions; loss = mean of the last hidden states + mean of the pooled output.
- MemoBert: text ids + 342-d face features (float16, as the loader hands them), same loss.
- pre-training mlm / mrfr: ``Pretrainer`` updates (masks drawn on the host), through
  ``memotrain.engine.Stepper`` (clipping, the finite check: one read-back per update).
- joint CNN, 0 / 2 frozen blocks: the Denseface CNN (growth 12, blocks 16/16/16, 64x64 float16
  crops) as the face backbone, task vnce, the CNN's and the transformer's AdamW; its batch is
  halved until it fits in memory (the batch used is in the row).
- DDP: 2 processes (NCCL, one device each), pre-training mlm, the batch per process; examples/s
  of both together. Not run with fewer than two devices (said in the notes).

Without CUDA, or with ``--tiny``: a smoke run of every code path on the CPU (fp32, the tiny
preset and a tiny CNN, a 680-token budget, 2 timed updates, DDP over gloo): what
tests/test_bench.py runs; its figures are not measurements. The table goes to stdout and to
``--out`` (default bench/out/gpu.md; ``python -m bench`` runs it too). Exit 1 when the CUDA
tests fail (the table is written).
"""
from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import common

TINY_CNN = {"growth": 4, "blocks": [2, 2, 2], "init_features": 8}
DENSEFACE = {}  # face_backbone.arch: the Denseface defaults (growth 12, blocks 16/16/16)
MASK_ID, V_RANGE = 103, (999, 30522)


# ----------------------------------------------------------------------------- the cases

def host_batch(B: int, text: int, faces, device, seed: int) -> dict:
    """A collated batch on the host (pinned on CUDA): ``B`` examples of ``text`` word pieces
    + [CLS]/[SEP] and ``faces`` (a (F, D) feature shape, or (F, S, S) crops), float16."""
    g = torch.Generator().manual_seed(seed)
    T = text + 2
    ids = torch.randint(V_RANGE[0], V_RANGE[1], (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    word_ids = torch.arange(-1, T - 1).expand(B, T).clone()
    word_ids[:, -1] = -1
    b = {"input_ids": ids, "text_lens": torch.full((B,), T), "word_ids": word_ids,
         "faces": torch.randn(B, *faces, generator=g).half(),
         "face_lens": torch.full((B,), faces[0]), "targets": None,
         "ids": [str(i) for i in range(B)]}
    if device.type == "cuda":
        b = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
    return b


def adamw(module, device) -> torch.optim.AdamW:
    """AdamW as the runs build it (no decay on biases and norms; fused on CUDA)."""
    from memotrain.engine import param_groups

    return torch.optim.AdamW(param_groups(module, 0.01), lr=1e-4,
                             fused=device.type == "cuda" or None)


def run_case(build, args, device) -> dict:
    """``build() -> (update, examples per update)``; warm up, then time updates."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    update, per_update = build()
    for i in range(args.warmup):
        update(i)
    if cuda:
        torch.cuda.synchronize(device)
    t, n = time.perf_counter(), 0
    while n < args.min_steps or time.perf_counter() - t < args.seconds:
        update(args.warmup + n)
        n += 1
    if cuda:
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return {"eps": per_update * n / dt, "steps": n, "peak_gib": peak, "batch": per_update}


def bert_case(cfg, B, L, device, precision, seed):
    from memotrain.engine import autocast

    from .train_model import hf_model

    def build():
        torch.manual_seed(seed)
        hf = hf_model(cfg).to(device).train()
        opt = adamw(hf, device)
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(V_RANGE[0], V_RANGE[1], (B, L), generator=g)
        mask = torch.ones(B, L, dtype=torch.long)
        if device.type == "cuda":
            ids, mask = ids.pin_memory(), mask.pin_memory()

        def update(_):
            with autocast(device, precision):
                out = hf(input_ids=ids.to(device, non_blocking=True),
                         attention_mask=mask.to(device, non_blocking=True))
                loss = out.last_hidden_state.float().mean() + out.pooler_output.float().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return update, B
    return build


def memo_case(cfg, batch, device, precision, seed):
    from memotrain.data import to_device
    from memotrain.engine import autocast
    from memotrain.model import MemoBert

    def build():
        torch.manual_seed(seed)
        model = MemoBert(cfg).to(device).train()
        opt = adamw(model, device)

        def update(_):
            b = to_device(batch, device)
            with autocast(device, precision):
                out = model(b["input_ids"], b["text_lens"], b["faces"], b["face_lens"])
                loss = out.hidden.float().mean() + out.pooled.float().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return update, len(batch["ids"])
    return build


def train_config(name: str, tasks: dict, arch: dict | None = None, frozen: int = 0) -> dict:
    """A pre-training config (as a dict) for the run's own optimizers: preset ``name``; with
    ``arch``, the joint face CNN of that architecture with ``frozen`` blocks."""
    corpus = {"txt_db": "-", "tasks": tasks}
    cfg = {"model": name, "steps": 1000, "optim": {"warmup_steps": 0},
           "data": {"corpora": [corpus]}}
    if arch is None:
        corpus["img_db"] = "-"
    else:
        corpus["rawimg_db"] = "-"
        cfg["face_backbone"] = {"arch": arch, "frozen_dense_blocks": frozen,
                                "warmup_steps": 0}
    return cfg


def pretrain_case(config: dict, task, batch, device, precision, seed):
    """Updates of ``task`` through the run's own pieces: the model and its optimizers as
    ``memotrain.recipes.pretrain`` builds them (a CNN AdamW too for a joint model), the
    Pretrainer, the Stepper (clipping, the finite check) and the GradScaler."""
    from memotrain.engine import Stepper, autocast, grad_scaler
    from memotrain.model import MemoBert
    from memotrain.recipes.pretrain import build_optimizers
    from memotrain.tasks import Pretrainer
    from memotrain.trainconfig import load_train_config

    def build():
        torch.manual_seed(seed)
        tcfg = load_train_config(config)
        model = MemoBert(tcfg.model_config())
        if model.face_cnn is not None:
            model.face_cnn.set_frozen_blocks(tcfg.face_backbone.frozen_dense_blocks)
        pre = Pretrainer(model, [task], MASK_ID, V_RANGE).to(device).train()
        stepper = Stepper(build_optimizers(pre, tcfg, device), grad_scaler(device, precision))

        def update(i):
            with autocast(device, precision):
                res = pre(task, batch, torch.Generator().manual_seed(seed + i))
            stepper.backward(res.loss.float())
            stepper.step()
        return update, len(batch["ids"])
    return build


def fitting(run, B: int, device) -> tuple[dict, int]:
    """``run(B)``, halving ``B`` while the device runs out of memory."""
    while True:
        try:
            return run(B), B
        except torch.OutOfMemoryError:
            if B == 1:
                raise
        B //= 2  # out of the except block: the failed case's tensors are released
        gc.collect()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- DDP

def _ddp_worker(rank: int, world: int, init: str, out: str, spec: dict) -> None:
    """One process of the DDP case: the mlm pre-training update under DDP, timed.

    The process group is torn down only after :func:`_ddp_updates` has returned, so the DDP
    module, its reducer and their buffers are gone by then (as in ``memo train pretrain``), and
    after a barrier, so neither process closes its connections while the other still uses
    them: a process that exits with gloo work in flight aborts ("terminate called without an
    active exception")."""
    import torch.distributed as dist

    cuda = spec["backend"] == "nccl"
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(spec["backend"], init_method=init, rank=rank, world_size=world)
    try:
        result = _ddp_updates(rank, world, device, spec)
        gc.collect()  # the DDP module's reference cycles (hooks) too
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(result))


def _ddp_updates(rank: int, world: int, device: torch.device, spec: dict) -> dict:
    """The timed updates of one DDP process: examples/s, updates, peak GiB (None on CPU)."""
    import torch.distributed as dist

    from memotrain.engine import Stepper, autocast, grad_scaler
    from memotrain.model import MemoBert
    from memotrain.recipes.pretrain import build_optimizers
    from memotrain.tasks import Pretrainer
    from memotrain.trainconfig import load_train_config

    cuda = device.type == "cuda"
    torch.manual_seed(spec["seed"])
    tcfg = load_train_config(train_config(spec["preset"], {"mlm": 1}))
    cfg = tcfg.model_config()
    pre = Pretrainer(MemoBert(cfg), ["mlm"], MASK_ID, V_RANGE).to(device).train()
    # no device_ids: the batch stays on the host, the Pretrainer moves it (as in a run)
    net = torch.nn.parallel.DistributedDataParallel(pre, find_unused_parameters=True)
    stepper = Stepper(build_optimizers(pre, tcfg, device),
                      grad_scaler(device, spec["precision"]))
    batch = host_batch(spec["batch"], spec["text"], (spec["faces"], cfg.face_dim), device,
                       spec["seed"] + rank)

    def update(i):
        with autocast(device, spec["precision"]):
            res = net("mlm", batch, torch.Generator().manual_seed(i * world + rank))
        stepper.backward(res.loss.float())
        stepper.step()

    for i in range(spec["warmup"]):
        update(i)
    if cuda:
        torch.cuda.synchronize(device)
    dist.barrier()
    t, n = time.perf_counter(), 0
    while n < spec["min_steps"] or time.perf_counter() - t < spec["seconds"]:
        update(spec["warmup"] + n)
        n += 1
        flag = torch.tensor([n], device=device)  # every rank runs as many updates
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        n = int(flag)
    if cuda:
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return {"eps": spec["batch"] * n / dt, "steps": n, "peak_gib": peak}


def ddp_case(spec: dict, tmp_parent) -> dict:
    """Both processes (spawned); examples/s summed, the larger peak."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="memo-bench-ddp-", dir=tmp_parent) as tmp:
        mp.spawn(_ddp_worker, args=(2, f"file://{tmp}/rendezvous", tmp, spec), nprocs=2)
        res = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(2)]
    peaks = [r["peak_gib"] for r in res if r["peak_gib"] is not None]
    return {"eps": sum(r["eps"] for r in res), "steps": min(r["steps"] for r in res),
            "peak_gib": max(peaks) if peaks else None, "batch": 2 * spec["batch"]}


# ----------------------------------------------------------------------------- CUDA tests

def cuda_tests() -> tuple[bool, str]:
    """``pytest -m cuda`` over the test files that hold CUDA tests: (passed, summary)."""
    files = sorted(str(p.relative_to(common.ROOT)) for p in (common.ROOT / "tests").glob(
        "test_*.py") if "pytest.mark.cuda" in p.read_text(encoding="utf-8"))
    if not files:
        return False, "no test file marks a CUDA test"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p",
                           "no:cacheprovider", *files], cwd=common.ROOT, capture_output=True,
                          text=True)
    lines = [ln.strip("= ") for ln in proc.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else f"pytest exited {proc.returncode}"
    if proc.returncode:
        print(proc.stdout[-5000:], proc.stderr[-2000:], sep="\n")
    return proc.returncode == 0, f"`pytest -m cuda` over {len(files)} files: {summary}"


# ----------------------------------------------------------------------------- main

def main(argv=None) -> str:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("--tiny", action="store_true",
                    help="the CPU smoke run (the default without CUDA)")
    ap.add_argument("--out", default=None, metavar="FILE.md",
                    help="where the table goes (default bench/out/gpu.md)")
    ap.add_argument("--tmp", default=None, metavar="DIR",
                    help="parent of the DDP case's scratch folder (default: $TMPDIR)")
    ap.add_argument("--text", type=int, default=30, help="word pieces per text (+ CLS, SEP)")
    ap.add_argument("--faces", type=int, default=36, help="faces per example")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="token budget per batch (default 10,240; 680 in the tiny run)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed updates per case")
    ap.add_argument("--seconds", type=float, default=None,
                    help="timed seconds per case (default 15; 0 in the tiny run)")
    ap.add_argument("--min-steps", type=int, default=None, help="timed updates at least")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.out is not None and not args.out.endswith(".md"):
        ap.error(f"--out {args.out}: give a .md file")
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    tiny = not cuda
    args.max_tokens = args.max_tokens or (680 if tiny else 10_240)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.seconds = args.seconds if args.seconds is not None else (0.0 if tiny else 15.0)
    args.min_steps = args.min_steps or (2 if tiny else 5)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    precision = "bf16" if cuda else "fp32"
    name = "tiny" if tiny else "base"
    from memotrain.config import preset

    cfg = preset(name)
    T = args.text + 2
    L = T + args.faces
    B = args.max_tokens // L
    if B < 1:
        raise SystemExit(f"--max-tokens {args.max_tokens} holds no example of {L} positions")
    tests_ok, tests = cuda_tests()
    feats = host_batch(B, args.text, (args.faces, cfg.face_dim), device, args.seed)
    rows, res = [], {}

    def row(label, r, base=None, against=""):
        rows.append([label, f"{r['batch']:,}", f"{r['eps']:,.1f}",
                     common.ratio(r["eps"] / base["eps"]) if base else "1.00x", against,
                     "n/a (CPU)" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}",
                     r["steps"]])

    res["bert"] = run_case(bert_case(cfg, B, L, device, precision, args.seed), args, device)
    row("transformers BertModel, input_ids (baseline)", res["bert"])
    res["memo"] = run_case(memo_case(cfg, feats, device, precision, args.seed), args, device)
    row("memo MemoBert (text ids + float16 faces)", res["memo"], res["bert"], "BertModel")
    for task in ("mlm", "mrfr"):
        res[task] = run_case(pretrain_case(train_config(name, {task: 1}), task, feats, device,
                                           precision, args.seed), args, device)
        row(f"memo pre-training update, task {task}", res[task], res["bert"], "BertModel")
    arch = TINY_CNN if tiny else DENSEFACE
    for frozen in (0, 2):
        def joint(b, frozen=frozen):
            crops = host_batch(b, args.text, (args.faces, 64, 64), device, args.seed)
            config = train_config(name, {"vnce": 1}, arch, frozen)
            return run_case(pretrain_case(config, "vnce", crops, device, precision,
                                          args.seed), args, device)
        res[f"joint{frozen}"], _ = fitting(joint, B, device)
        row(f"joint CNN update (vnce), {frozen} frozen blocks", res[f"joint{frozen}"],
            res["joint0"] if frozen else None, "0 frozen blocks" if frozen else "")
    devices = torch.cuda.device_count() if cuda else 0
    spec = {"backend": "nccl" if cuda else "gloo", "preset": name, "precision": precision,
            "batch": B, "text": args.text, "faces": args.faces, "seed": args.seed,
            "warmup": args.warmup, "seconds": args.seconds, "min_steps": args.min_steps}
    if devices >= 2 or tiny:
        res["ddp"] = ddp_case(spec, args.tmp)
        row(f"DDP, 2 processes ({spec['backend']}), task mlm", res["ddp"], res["mlm"],
            "1 process, task mlm")
        ddp_note = (f"DDP: 2 processes over {spec['backend']}, {B} examples each; "
                    "examples/s of both together, peak of the larger")
    else:
        ddp_note = f"DDP not run: {devices} CUDA device(s), it needs 2"
    command = shlex.join(["python", "-m", "bench.gpu",
                          *(argv if argv is not None else sys.argv[1:])])
    cnn = ("a tiny CNN (growth 4, blocks 2/2/2)" if tiny else
           "Denseface (growth 12, blocks 16/16/16)")
    where = (torch.cuda.get_device_name(device) if cuda else
             "CPU (tiny smoke run: not measurements)")
    notes = [
        f"{where}; {precision}; preset {name!r} ({cfg.layers} layers, hidden {cfg.hidden}); "
        f"text {args.text} + [CLS]/[SEP], {args.faces} faces: {L} positions, no padding; "
        f"batch {B} = token budget {args.max_tokens:,} // {L}",
        f"per case: {args.warmup} untimed updates, then timed ones for {args.seconds:g} s "
        f"(at least {args.min_steps}); each update moves the host batch to the device; peak "
        "= torch.cuda.max_memory_allocated of the case",
        f"joint CNN: {cnn}, 64x64 float16 crops, {args.faces} per example; batch halved "
        "until it fits",
        ddp_note,
        f"CUDA tests: {tests}" + ("" if tests_ok else " **FAILED**"),
        f"`{command}`, {time.perf_counter() - started:,.0f} s in all; torch "
        f"{torch.__version__}",
    ]
    table = "gpu"
    if args.out is not None:
        common.set_out(Path(args.out).resolve().parent)
        table = Path(args.out).name[:-3]
    md = common.report(table, "GPU readiness: pre-training rate and memory",
                       ["case", "batch (examples)", "examples/s", "ratio", "against",
                        "peak GiB", "timed updates"], rows, notes)
    if not tests_ok:
        raise SystemExit(1)
    return md


if __name__ == "__main__":
    main()
