"""Pre-training (``memo train pretrain``): one file, read top to bottom.

    summary = pretrain("cfg.json", overrides=["--optim.lr", "1e-4"])   # or a TrainConfig

The loop, the exact-resume rules, the output folder and the joint face backbone:
docs/TRAINER.md "Pre-training".
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from memodb.config import changes
from memodb.store.manifest import write_json_atomic
from memotrain.checkpoint import (CheckpointError, atomic_save, load_checkpoint, load_face_features,
                                  load_model, save_checkpoint, verify_torch_file)
from memotrain.config import ConfigError, ModelConfig
from memotrain.data import ConcatDataset, MemoDataset, collate
from memotrain.engine import (NonFiniteError, Optim, Stepper, TrainError, append_jsonl, autocast,
                              grad_scaler, param_groups, resolve_device, resolve_precision,
                              seed_for)
from memotrain.events import EventLog
from memotrain.model import MemoBert
from memotrain.sampler import BucketBatchSampler
from memotrain.tasks import Pretrainer
from memotrain.trainconfig import TrainConfig, TrainConfigError, check_model, load_train_config

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: the logging window (``log_window``); version 1 states still resume
STATE_VERSIONS = (1, STATE_VERSION)
STATE_KEYS = ("skipped", "nonfinite_run", "pretrainer", "optimizer", "scaler", "samplers", "rng")


@dataclass
class Proc:
    """This process of the run: its device, its rank and the number of processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Run:
    """What a resume state holds: the model with its heads, the optimizers, the scaler, each
    task's data stream and the counters."""

    cfg: TrainConfig
    proc: Proc
    pretrainer: Pretrainer
    optims: list[Optim]
    scaler: torch.amp.GradScaler
    streams: dict
    step: int = 0
    skipped: int = 0
    nonfinite_run: int = 0
    # the updates since the last log line, (task, loss, skipped): saved in the resume state,
    # so a resumed run's next log line averages the same updates as the uninterrupted run's
    window: list = field(default_factory=list)


# ----------------------------------------------------------------------------- the run

def pretrain(config, resume: bool = False, overrides=(), stop_after: int | None = None,
             console=None) -> dict:
    """Pre-train as ``config`` says (a TrainConfig, a dict or a JSON file, plus
    ``overrides``). ``resume``: continue from ``output_dir/ckpt/latest``. ``stop_after``:
    save and return after this update (as if killed right after a checkpoint). Returns a
    summary: steps, per-update ``losses`` [(step, task, loss)], skipped, last checkpoint, and
    ``val``: the last validation of this call ({task: metrics}; None if it validated none)."""
    cfg = load_train_config(config, overrides)

    # -- processes and device ---------------------------------------------------------------
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    device = resolve_device(cfg.device, local_rank=True)
    own_group = False
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    proc = Proc(device, dist.get_rank() if distributed else 0,
                dist.get_world_size() if distributed else 1)
    try:
        return _run(cfg, proc, resume, stop_after, console)
    finally:
        if own_group:
            dist.destroy_process_group()


def _run(cfg: TrainConfig, proc: Proc, resume: bool, stop_after, console) -> dict:
    """The run of one process: data, model, optimizers, then the loop (see :func:`pretrain`)."""
    device, rank, world = proc.device, proc.rank, proc.world
    out = Path(cfg.output_dir)
    ckpt_dir = out / "ckpt"
    latest = ckpt_dir / "latest"
    if latest.exists() and not resume:
        raise TrainError(f"{out} already holds a run (ckpt/latest); pass --resume to continue "
                         "it or choose another output_dir")
    if resume and not latest.exists():
        raise TrainError(f"--resume: {latest} does not exist (no complete state to resume)")
    if proc.main and ckpt_dir.is_dir():  # temp files of a save that was killed (GBs for base)
        for tmp in ckpt_dir.glob(".*.pt.tmp-*"):
            tmp.unlink(missing_ok=True)
    precision = resolve_precision(cfg.precision, device)
    # a resumed joint run takes its model config from its own checkpoint, not from the face
    # checkpoint of its first start (which is never read again)
    joint_resume = resume and cfg.face_backbone is not None
    model_cfg = _saved_model_config(latest) if joint_resume else cfg.model_config()
    check_model(cfg, model_cfg)

    # -- data: one dataset, sampler and loader per task -------------------------------------
    d = cfg.data
    corpora = [MemoDataset(c.txt_db, c.img_db, c.speech_db, rawimg_db=c.rawimg_db,
                           max_text_len=d.max_text_len,
                           max_faces=d.max_faces if c.face_db else None,
                           max_speech=d.max_speech if c.speech_db else None,
                           min_faces=d.min_faces if c.face_db else 0, name=c.name)
               for c in d.corpora]
    if model_cfg.face_backbone is not None:
        size = model_cfg.face_backbone["image_size"]
        for c, ds in zip(d.corpora, corpora):
            if ds.crops and ds.crop_size != size:
                raise TrainConfigError(
                    f"{c.rawimg_db}: crops of {ds.crop_size}x{ds.crop_size}, but the face CNN "
                    f"takes {size}x{size} (fix: rebuild it with memo db rawimg-db --size {size})")
    ratios = cfg.task_ratios()
    tasks, weights = list(ratios), list(ratios.values())
    streams, val_sets = {}, {}
    for t in tasks:
        listing = [i for i, c in enumerate(d.corpora) if t in c.tasks]
        ds = ConcatDataset([corpora[i] for i in listing])
        sampler = BucketBatchSampler(ds.lengths, batch_size=d.batch_size,
                                     max_tokens=d.max_tokens, seed=seed_for(cfg.seed, 1),
                                     rank=rank, world_size=world, ids=_namer(ds))
        streams[t] = TaskStream(ds, sampler, d.num_workers, device.type == "cuda",
                                seed_for(cfg.seed, rank, len(streams), 3))
        vals = [MemoDataset(d.corpora[i].val_txt_db, d.corpora[i].img_db,
                            d.corpora[i].speech_db, rawimg_db=d.corpora[i].rawimg_db,
                            max_text_len=d.max_text_len,
                            max_faces=d.max_faces if d.corpora[i].face_db else None,
                            max_speech=d.max_speech if d.corpora[i].speech_db else None,
                            name=f"{corpora[i].name}/val")
                for i in listing if d.corpora[i].val_txt_db]
        if vals:
            val_sets[t] = ConcatDataset(vals)
    first = corpora[0]

    # -- model, heads, optimizers -----------------------------------------------------------
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model, heads = _build_model(cfg, model_cfg, joint_resume)
        pretrainer = Pretrainer(model, tasks, first.mask_id, first.v_range,
                                vnce_temperature=cfg.vnce_temperature)
    if heads and not resume:
        loaded = pretrainer.load_heads(heads, str(cfg.init_checkpoint))
        log.info("heads from %s: %s", cfg.init_checkpoint, ", ".join(loaded) or "none needed")
    pretrainer.to(device)
    run = Run(cfg, proc, pretrainer, build_optimizers(pretrainer, cfg, device),
              grad_scaler(device, precision), streams)
    net = pretrainer
    if world > 1:
        # no device_ids: DDP would move the batch to the device itself, and the Pretrainer
        # needs it on the host (it draws the masks there, then moves it)
        net = nn.parallel.DistributedDataParallel(
            pretrainer, find_unused_parameters=True)  # each task uses only its heads
    if resume:
        _load_state(run, latest)
    for op in run.optims:  # the learning rates are functions of the update number
        op.start(cfg.steps, run.step)
    stepper = Stepper(run.optims, run.scaler, cfg.optim.grad_accum)
    if proc.main:
        cfg.save(out / "config.json")
        _trim_metrics(out / "metrics.jsonl", run.step)
    # rank 0's event files continue the curves after the resume point (as metrics.jsonl does)
    events = EventLog(out, enabled=proc.main, purge_step=run.step + 1)
    show = console or _Console(proc.main)
    show.start(cfg, model_cfg, tasks, weights, corpora, precision, device, world, run.step)

    def agree(finite: bool, loss: float) -> tuple[bool, float]:
        """One verdict for the update and the mean loss, over every process."""
        flags = torch.tensor([0.0 if finite else 1.0, loss], device=device)
        if world > 1:
            dist.all_reduce(flags)
        return not flags[0].item() > 0, flags[1].item() / world

    # -- the loop ---------------------------------------------------------------------------
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    losses, window, last_ckpt, last_val = [], run.window, None, None
    t0, examples = time.perf_counter(), 0
    pretrainer.train()
    while run.step < end:
        step = run.step
        task = draw_task(tasks, weights, cfg.seed, step)
        torch.manual_seed(seed_for(cfg.seed, rank, step, 1))  # dropout of this update
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, rank, step, 2))  # masks
        for micro in range(stepper.grad_accum):
            batch = streams[task].next()  # on the host: the Pretrainer moves it
            examples += len(batch["ids"])
            sync = micro == stepper.grad_accum - 1 or world == 1
            with (contextlib.nullcontext() if sync else net.no_sync()), \
                    autocast(device, precision):
                res = net(task, batch, gen)
            stepper.backward(res.loss.float())
        update = stepper.step(agree)
        bad, mean_loss, norm = not update.finite, update.loss, update.norms["transformer"]
        if bad:
            run.skipped += 1
            run.nonfinite_run += 1
        else:
            run.nonfinite_run = 0
        run.step = step = step + 1
        losses.append((step, task, mean_loss))
        if cfg.log_every:
            window.append((task, mean_loss, bad))
        if run.nonfinite_run >= cfg.max_nonfinite:
            raise NonFiniteError(
                f"update {step}: {run.nonfinite_run} updates in a row had a non-finite loss or "
                f"gradients ({run.skipped} skipped in all; last task {task}, loss {mean_loss}, "
                f"grad norm {float(norm)}, precision {precision}"
                + (f", loss scale {run.scaler.get_scale()}" if run.scaler.is_enabled() else "")
                + "); lower optim.lr, check the data (memo db check) or use precision bf16/fp32")
        # the run's last update closes the window; a stop_after stop does not (it acts as a
        # kill right after the checkpoint: the resumed run writes the lines from there on)
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            dt = time.perf_counter() - t0
            rec = {"step": step, "lr": update.lrs["transformer"],
                   "loss": _mean([x[1] for x in window if not x[2]]),
                   "tasks": {t: _mean([x[1] for x in window if x[0] == t and not x[2]])
                             for t in dict.fromkeys(x[0] for x in window)},
                   "grad_norm": float(norm), "skipped": run.skipped,
                   "examples_per_s": examples * world / dt if dt > 0 else None}
            if "cnn" in update.norms:
                rec["cnn_lr"], rec["cnn_grad_norm"] = (update.lrs["cnn"],
                                                       float(update.norms["cnn"]))
            if run.scaler.is_enabled():
                rec["loss_scale"] = run.scaler.get_scale()
            window.clear()
            t0, examples = time.perf_counter(), 0
            if proc.main:
                append_jsonl(out / "metrics.jsonl", rec)
                events.add(rec)
            show.log(rec, cfg.steps)
        if val_sets and cfg.val_every and step % cfg.val_every == 0:
            last_val = validate(pretrainer, val_sets, cfg, proc, precision)
            rec = {"step": step, "val": last_val}
            if proc.main:
                append_jsonl(out / "metrics.jsonl", rec)
                events.add(rec)
                show.val(rec)
        if (cfg.save_every and step % cfg.save_every == 0) or step == end:
            last_ckpt = _save(run, ckpt_dir)
    events.close()
    show.done(run.step, run.skipped, last_ckpt)
    return {"steps": run.step, "losses": losses, "skipped": run.skipped, "val": last_val,
            "checkpoint": None if last_ckpt is None else str(last_ckpt),
            "output_dir": str(out), "precision": precision, "world_size": world}


@torch.no_grad()
def validate(pretrainer: Pretrainer, val_sets: dict, cfg: TrainConfig, proc: Proc,
             precision: str) -> dict:
    """Per task: loss and the task's metrics (masked-token accuracy, MSE, KL, ITM accuracy),
    averaged over the validation examples weighted by targets; the same masks every time.
    Runs on rank 0 only (the unwrapped model: no collective); the others wait."""
    out = {}
    if proc.main:
        pretrainer.eval()
        for t, ds in val_sets.items():
            sampler = BucketBatchSampler(ds.lengths, batch_size=cfg.data.batch_size,
                                         max_tokens=cfg.data.max_tokens, shuffle=False)
            gen = torch.Generator().manual_seed(seed_for(cfg.seed, 0x5A1))
            totals, n = {}, 0
            for idx in sampler:
                batch = collate([ds[i] for i in idx])  # on the host: the Pretrainer moves it
                with autocast(proc.device, precision):
                    res = pretrainer(t, batch, gen)
                w = res.n_targets
                n += w
                for k, v in {"loss": float(res.loss), **res.metrics}.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * w
            out[t] = {k: v / max(n, 1) for k, v in totals.items()} | {"targets": n}
        pretrainer.train()
    if dist.is_initialized():
        dist.barrier()
    return out


# ----------------------------------------------------------------------------- optimizers

def build_optimizers(pretrainer: nn.Module, cfg: TrainConfig, device) -> list[Optim]:
    """``[transformer]`` or, with a face CNN that has trainable blocks, ``[transformer, cnn]``
    (docs/TRAINER.md "Joint face backbone"), checked by :func:`check_optimizer_split`."""
    o = cfg.optim
    fused = device.type == "cuda" or None
    cnn = getattr(pretrainer.model, "face_cnn", None)
    cnn_ids = frozenset(id(p) for p in cnn.parameters()) if cnn is not None else frozenset()
    optims = [Optim("transformer", torch.optim.AdamW(
        param_groups(pretrainer, o.weight_decay, cnn_ids), lr=o.lr, betas=o.betas,
        fused=fused), o.lr, cfg.warmup, o.grad_clip)]
    if cnn is not None and cnn.trainable_parameters():
        fb = cfg.face_backbone
        optims.append(Optim("cnn", torch.optim.AdamW(
            param_groups(cnn, fb.weight_decay), lr=fb.lr, betas=fb.betas, fused=fused),
            fb.lr, cfg.cnn_warmup, fb.grad_clip))
    check_optimizer_split(pretrainer, optims)
    return optims


def check_optimizer_split(module: nn.Module, optims: list[Optim]) -> None:
    """Every trainable parameter of ``module`` in exactly one optimizer, no frozen parameter in
    any, the face CNN's parameters only in ``cnn``; TrainError naming the parameter
    otherwise."""
    names = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), (name, p))
    owner = {}
    for op in optims:
        for p in op.params:
            if id(p) in owner:
                raise TrainError(f"{names.get(id(p), ('a parameter',))[0]} is in two "
                                 f"optimizers ({owner[id(p)]} and {op.name}): their parameter "
                                 "sets must be disjoint")
            owner[id(p)] = op.name
    for op in optims:
        for p in op.params:
            name = names.get(id(p), ("a parameter outside the model",))[0]
            if not p.requires_grad:
                raise TrainError(f"{name} is frozen but in the {op.name} optimizer")
            if name.startswith("model.face_cnn.") != (op.name == "cnn"):
                raise TrainError(f"{name} is in the {op.name} optimizer (the face CNN's "
                                 "parameters belong to the cnn optimizer, the others to the "
                                 "transformer's)")
    lost = [name for i, (name, p) in names.items() if p.requires_grad and i not in owner]
    if lost:
        raise TrainError(f"{len(lost)} trainable parameter(s) in no optimizer: "
                         f"{', '.join(lost[:4])}{' ...' if len(lost) > 4 else ''}")


# ----------------------------------------------------------------------------- tasks

def draw_task(names: list[str], weights: list[float], seed: int, step: int) -> str:
    """The task of update ``step``: a function of (seed, step), so every rank draws the same."""
    g = torch.Generator().manual_seed(seed_for(seed, step, 0x7A5C))
    return names[int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1,
                                       generator=g))]


class TaskStream:
    """Endless batches of one task; counts the batches the loop really consumed (the
    DataLoader's workers read ahead) for the resume state."""

    def __init__(self, dataset, sampler: BucketBatchSampler, num_workers: int, pin: bool,
                 seed: int):
        self.sampler = sampler
        # its own generator: starting an iterator draws the workers' base seed from it, not
        # from the global RNG (which would shift dropout after a resume)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
            pin_memory=pin, generator=torch.Generator().manual_seed(seed))
        self.position = sampler.start
        self._it = None

    def next(self) -> dict:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:  # epoch over: the next one, from its first batch
            self.sampler.set_epoch(self.sampler.epoch + 1)
            self.position = 0
            self._it = iter(self.loader)
            batch = next(self._it)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return self.sampler.state_dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.position, self._it = self.sampler.start, None


# ----------------------------------------------------------------------------- checkpoints

def _save(run: Run, ckpt_dir: Path) -> Path:
    """Weights (a memo checkpoint), then the resume state, then ``latest``: a kill at any
    moment leaves ``latest`` naming a complete state."""
    step, cfg = run.step, run.cfg
    if run.proc.world > 1:
        dist.barrier()
    model_path = ckpt_dir / f"model_step_{step}.pt"
    if run.proc.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model_path, run.pretrainer.model, step=step,
                        train_config=cfg.to_dict(), heads=run.pretrainer.head_state())
        cnn = run.optims[1].optimizer if len(run.optims) > 1 else None
        state = {
            "version": STATE_VERSION, "step": step, "skipped": run.skipped,
            "nonfinite_run": run.nonfinite_run, "log_window": list(run.window),
            "pretrainer": run.pretrainer.state_dict(),
            "optimizer": run.optims[0].optimizer.state_dict(),
            "cnn_optimizer": None if cnn is None else cnn.state_dict(),
            "scaler": run.scaler.state_dict(),
            "samplers": {t: s.state_dict() for t, s in run.streams.items()},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                    else None},
            "config": cfg.to_dict(),
        }
        atomic_save(state, ckpt_dir / f"state_step_{step}.pt")
        write_json_atomic(ckpt_dir / "latest", f"{step}\n")  # text, atomically
    if run.proc.world > 1:
        dist.barrier()
    return model_path


# Settings a resumed run may change; anything else must equal the saved run's config.
RESUMABLE_CHANGES = ("steps", "log_every", "val_every", "save_every", "max_nonfinite",
                     "output_dir", "device", "data.num_workers")


def _saved_model_config(latest: Path) -> ModelConfig:
    """The model config stored in the checkpoint of the state ``latest`` names (read lazily:
    the weights are memory-mapped, not loaded)."""
    try:
        step = int(latest.read_text().strip())
    except (OSError, ValueError) as exc:
        raise TrainError(f"{latest}: unreadable ({exc})") from None
    path = latest.parent / f"model_step_{step}.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return ModelConfig.from_dict(ckpt["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise TrainError(f"{path}: not the model checkpoint of the run ({exc})") from None
    except Exception as exc:  # noqa: BLE001 (a damaged file raises many kinds of errors)
        raise TrainError(f"{path}: cannot read the run's model checkpoint, whose config "
                         f"rebuilds the model on resume ({exc})") from None


def _build_model(cfg: TrainConfig, mc: ModelConfig, joint_resume: bool):
    """The model of a run and the task heads its ``init_checkpoint`` holds (a dict, maybe
    empty): from ``init_checkpoint`` (a model without a face CNN gets one) or random; on a
    first start the face CNN's features come from ``face_backbone.checkpoint``; then the CNN's
    frozen blocks and checkpointing are set. ``joint_resume``: a random model of the saved
    config (the resume state fills it; nothing else is read)."""
    fb, heads = cfg.face_backbone, {}
    if joint_resume or cfg.init_checkpoint is None:
        model = MemoBert(mc)
    else:
        ckpt = load_checkpoint(cfg.init_checkpoint)
        heads = ckpt.get("heads") or {}
        if ckpt["config"].get("face_backbone") is None and mc.face_backbone is not None:
            model = MemoBert(mc)
            _load_without_cnn(model, ckpt["model"], cfg.init_checkpoint)
        else:
            model = load_model(ckpt)
    if fb is None:
        return model, heads
    if fb.checkpoint is not None and not joint_resume:
        res = load_face_features(model.face_cnn, fb.checkpoint)
        log.info("face CNN: %d feature tensors from %s (%d other keys dropped)",
                 len(res.loaded), fb.checkpoint, len(res.dropped))
    model.face_cnn.set_frozen_blocks(fb.frozen_dense_blocks)
    model.face_cnn.checkpoint_activations = fb.checkpoint_activations
    return model, heads


def _load_without_cnn(model: MemoBert, sd: dict, where) -> None:
    """Every weight of ``model`` but its (new) face CNN from the state dict ``sd``."""
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("face_cnn.")}
    missing = [k for k in ours if k not in sd]
    extra = [k for k in sd if k not in ours]
    bad = [k for k in ours if k in sd and tuple(sd[k].shape) != tuple(ours[k].shape)]
    if missing or extra or bad:
        k = (bad or missing or extra)[0]
        what = (f"has shape {tuple(sd[k].shape)}, the model {tuple(ours[k].shape)}" if bad
                else "is missing" if missing else "has no place in the model")
        raise TrainError(f"{where}: {k} {what} (the init checkpoint must be the same model "
                         f"without face CNN; face_dim must be the CNN's feature width "
                         f"{model.config.face_dim})")
    model.load_state_dict(sd, strict=False)


def _load_state(run: Run, latest: Path) -> None:
    """Fill ``run`` from the state ``latest`` names; TrainError when it does not fit."""
    cfg, streams = run.cfg, run.streams
    try:
        step = int(latest.read_text().strip())
    except (OSError, ValueError) as exc:
        raise TrainError(f"{latest}: unreadable ({exc})") from None
    path = latest.parent / f"state_step_{step}.pt"
    earlier = (f"(fix: write the step of an earlier state_step_N.pt into {latest} to resume "
               "from it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        verify_torch_file(path)  # what torch.load read whole may still hold flipped bits
    except CheckpointError as exc:
        raise TrainError(f"{exc} {earlier}") from None
    except Exception as exc:  # noqa: BLE001 (a damaged file raises many kinds of errors)
        raise TrainError(f"{path}: cannot read the resume state ({exc}) {earlier}") from None
    if not isinstance(state, dict) or state.get("version") not in STATE_VERSIONS \
            or state.get("step") != step:
        found = (f"version {state.get('version')}, step {state.get('step')}"
                 if isinstance(state, dict) else f"a {type(state).__name__}")
        raise TrainError(f"{path}: not a resume state of this memo ({found}) {earlier}")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise TrainError(f"{path}: an incomplete resume state (no {', '.join(missing)}) "
                         f"{earlier}")
    changed = changes(state.get("config") or {}, cfg.to_dict(), ignore=RESUMABLE_CHANGES)
    if changed:
        raise TrainError(f"{path}: the config differs from the run being resumed in "
                         f"{', '.join(changed)}; resume with the same settings (only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change) or start a new "
                         "output_dir")
    missing = sorted(set(streams) - set(state["samplers"]))
    if missing:
        raise TrainError(f"{path}: the run had no task {', '.join(missing)}; resume with the "
                         "same tasks")
    try:
        run.pretrainer.load_state_dict(state["pretrainer"])
        run.optims[0].optimizer.load_state_dict(state["optimizer"])
        if len(run.optims) > 1:
            run.optims[1].optimizer.load_state_dict(state["cnn_optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise TrainError(f"{path}: the model or optimizer does not fit this config ({exc})") \
            from None
    run.scaler.load_state_dict(state["scaler"])
    for t, s in streams.items():
        s.load_state_dict(state["samplers"][t])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    run.step, run.skipped, run.nonfinite_run = step, state["skipped"], state["nonfinite_run"]
    # version 1 states hold no logging window: the window restarts at the resume point
    run.window[:] = [tuple(x) for x in state.get("log_window") or ()]


# ----------------------------------------------------------------------------- reporting

def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _namer(ds: ConcatDataset):
    def name(i):
        k, j = ds.index.locate(i)
        return ds.datasets[k].ids[j]
    return name


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop the lines a killed run logged after its last saved state."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    write_json_atomic(path, "".join(line + "\n" for line in keep))


class _Console:
    """Rank 0's console lines (rich markup on a terminal, plain text otherwise)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.console import Console
            self.c = Console(stderr=True, highlight=False)

    def _print(self, text):
        if self.enabled:
            self.c.print(text)

    def start(self, cfg, mc, tasks, weights, corpora, precision, device, world, step):
        total = sum(weights)
        mix = ", ".join(f"{t} {w / total:.2f}" for t, w in zip(tasks, weights))
        n = sum(len(c) for c in corpora)
        fb = cfg.face_backbone
        cnn = (f" + face CNN ({'/'.join(map(str, mc.face_backbone['blocks']))} layers, "
               f"{fb.frozen_dense_blocks} block(s) frozen"
               f"{', checkpointed' if fb.checkpoint_activations else ''})" if fb else "")
        self._print(f"[bold]pretrain[/] {mc.layers} layers, hidden {mc.hidden}{cnn}; {n} "
                    f"examples in {len(corpora)} corpora; tasks {mix}; {precision} on {device}"
                    f"{f' x {world}' if world > 1 else ''}; "
                    + (f"resuming at update {step}" if step else f"{cfg.steps} updates")
                    + f" -> {cfg.output_dir}")

    def log(self, rec, total):
        tasks = " ".join(f"{t} {v:.4f}" for t, v in rec["tasks"].items() if v is not None)
        loss = "nan" if rec["loss"] is None else f"{rec['loss']:.4f}"
        speed = rec["examples_per_s"]
        self._print(f"step [cyan]{rec['step']}[/]/{total} loss [bold]{loss}[/] ({tasks}) "
                    f"lr {rec['lr']:.2e} |g| {rec['grad_norm']:.2f}"
                    + (f" {speed:.0f} ex/s" if speed else "")
                    + (f" [red]skipped {rec['skipped']}[/]" if rec["skipped"] else ""))

    def val(self, rec):
        parts = [f"{t}: " + " ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "targets")
                 for t, m in rec["val"].items()]
        self._print(f"val step {rec['step']}: " + "; ".join(parts))

    def done(self, step, skipped, ckpt):
        self._print(f"done: {step} updates, {skipped} skipped; checkpoint {ckpt}")
