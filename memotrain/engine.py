"""The training machinery every recipe shares, each piece written once: device and precision,
autocast, seeding, AdamW parameter groups, the learning-rate schedule (a ``LambdaLR``) and one
update step (accumulate, unscale, clip, finite check, step) over a list of optimizers.

How the recipes use it: docs/TRAINER.md "The update step".
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from memodb.errors import MemoError
from memotrain.trainconfig import TrainConfigError

NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainError(MemoError):
    """Training cannot start or continue (a resume state that does not fit, a run folder in
    use)."""


class NonFiniteError(TrainError):
    """Losses or gradients stayed non-finite for ``max_nonfinite`` updates in a row."""


# ----------------------------------------------------------------------------- device, precision

def resolve_device(device="auto", *, error=TrainError, local_rank: bool = False) -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; or ``cpu``, ``cuda``, ``cuda:N``.
    ``error``: the exception raised for a device torch does not know or CUDA without CUDA.
    ``local_rank``: a bare ``cuda`` is this process's GPU (torchrun's ``LOCAL_RANK``), made the
    current one."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise error(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise error(f"device {device}: CUDA is not available here (use cpu or auto)")
        if local_rank and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA when supported, else fp16 there, fp32 on the CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise TrainConfigError("precision fp16 needs CUDA (GradScaler); use bf16 or fp32 on CPU")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (fp32: a disabled one)."""
    dtype = AMP_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, precision: str = "fp32") -> torch.amp.GradScaler:
    """A GradScaler, enabled with fp16 only (elsewhere every call passes straight through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (a fixed mix, the same on every platform)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------- optimizers

def param_groups(module: nn.Module, weight_decay: float, exclude=frozenset()) -> list[dict]:
    """AdamW groups: no decay for every bias and every parameter of a normalisation module
    (told by module type, not by name); decay for the rest. Tied parameters appear once;
    frozen parameters and those whose ``id`` is in ``exclude`` do not appear."""
    decay, no_decay, seen = [], [], set(exclude)
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if name == "bias" or isinstance(mod, NORM_MODULES) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, lr: float, warmup: int, total: int) -> float:
    """Learning rate of the update that follows ``step`` finished updates: linear warmup to
    ``lr`` over ``warmup`` updates, then linear decay to 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def schedule(optimizer: torch.optim.Optimizer, lr: float, warmup: int, total: int,
             step: int = 0) -> LambdaLR:
    """The :func:`lr_at` schedule as a ``LambdaLR``, set for the update that follows ``step``
    (a resumed run passes its step: the position is never saved). The lambda returns the
    learning rate itself over a base of 1.0, so every rate equals ``lr_at``'s to the bit."""
    for g in optimizer.param_groups:
        g["initial_lr"] = 1.0
    sched = LambdaLR(optimizer, lambda s: lr_at(s, lr, warmup, total), last_epoch=step - 1)
    for g in optimizer.param_groups:  # read once, above: not part of the optimizer's state
        del g["initial_lr"]
    return sched


@dataclass
class Optim:
    """One optimizer of a run with its own schedule (peak ``lr``, ``warmup`` updates, linear
    decay to 0 at the last update: :meth:`start`) and gradient clipping (``clip`` <= 0:
    none)."""

    name: str  # "transformer", "cnn", "classifier"
    optimizer: torch.optim.Optimizer
    lr: float
    warmup: int
    clip: float
    scheduler: LambdaLR | None = None

    @property
    def params(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def start(self, total: int, step: int = 0) -> Optim:
        """Attach the schedule over ``total`` updates, at update ``step``."""
        self.scheduler = schedule(self.optimizer, self.lr, self.warmup, total, step)
        return self


@dataclass
class Update:
    """What one :meth:`Stepper.step` did."""

    finite: bool  # loss and gradients finite: the optimizers stepped
    loss: float  # the sum of the micro-batch losses (each divided by grad_accum)
    norms: dict = field(default_factory=dict)  # optimizer name -> gradient norm before clipping
    lrs: dict = field(default_factory=dict)  # optimizer name -> learning rate of this update


class Stepper:
    """The update step of every recipe, over a list of optimizers sharing one GradScaler.

    ``backward(loss)`` for each of ``grad_accum`` micro-batches (the loss is divided by
    ``grad_accum``), then ``step()``: unscale every optimizer's gradients, clip each with its
    own ``clip``, one finite verdict for the whole update (the losses and every norm), then
    either step every optimizer that has gradients or skip them all; the scaler updates, the
    gradients are cleared and every schedule moves to the next update (skipped or not)."""

    def __init__(self, optims: list[Optim], scaler: torch.amp.GradScaler, grad_accum: int = 1):
        self.optims, self.scaler, self.grad_accum = list(optims), scaler, grad_accum
        self._loss = None  # the micro-batch losses summed in float64 on their device

    def backward(self, loss: torch.Tensor) -> None:
        """Nothing is read back here: the loss is summed on its device (float64, as a Python
        float would), and :meth:`step` reads it once per update."""
        loss = loss / self.grad_accum
        part = loss.detach().double()
        self._loss = part if self._loss is None else self._loss + part
        self.scaler.scale(loss).backward()

    def step(self, agree=None) -> Update:
        """``agree(finite, loss) -> (finite, loss)``: the verdict all processes share (the
        distributed all-reduce), taken before any optimizer steps."""
        for op in self.optims:  # one scaler: unscale every optimizer before judging the update
            self.scaler.unscale_(op.optimizer)
        norms = {op.name: torch.nn.utils.clip_grad_norm_(
            op.params, op.clip if op.clip > 0 else math.inf) for op in self.optims}
        # one read-back per update: the summed loss, and whether it and every norm are finite
        # (a sum of float32 losses in float64 is finite exactly when each of them is)
        total = torch.zeros((), dtype=torch.float64) if self._loss is None else self._loss
        ok = torch.isfinite(total)
        for n in norms.values():
            ok = ok & torch.isfinite(n).to(ok.device)
        loss, finite = torch.stack([total, ok.double()]).tolist()
        finite = bool(finite)
        if agree is not None:
            finite, loss = agree(finite, loss)
        lrs = {op.name: op.optimizer.param_groups[0]["lr"] for op in self.optims}
        if finite:
            for op in self.optims:
                if any(p.grad is not None for p in op.params):  # (e.g. no face in the batch)
                    self.scaler.step(op.optimizer)
        self.scaler.update()  # skipped with fp16: inf gradients lower the loss scale
        for op in self.optims:
            op.optimizer.zero_grad(set_to_none=True)
            if op.scheduler is not None:
                with warnings.catch_warnings():  # a skipped update moves the schedule too
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                    op.scheduler.step()
        self._loss = None
        return Update(finite, loss, norms, lrs)


def append_jsonl(path: Path, rec: dict) -> None:
    """One JSON object as a line at the end of ``path`` (``metrics.jsonl``)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
