"""Face CNN training (``memo train face-cnn``): the DenseNet-BC on labelled face crops.

    summary = train_face_cnn("fer2013.csv", "face_cnn.pt", ferplus="fer2013new.csv")

The inputs, the optimisation and the checkpoint written: docs/TRAINER.md "Face CNN".
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from memodb.errors import BadInputError, MemoError, OutputExistsError
from memotrain.checkpoint import save_face_cnn
from memotrain.engine import Optim, Stepper, grad_scaler, param_groups, resolve_device
from memotrain.events import EventLog
from memotrain.facecnn import DenseNetBC
from memotrain.facedata import augment, pixel_stats, read_face_data


class FaceTrainError(MemoError):
    """Face CNN training cannot continue (a non-finite loss)."""


@torch.no_grad()
def accuracy(model: DenseNetBC, images: torch.Tensor, labels: torch.Tensor, mean: float,
             std: float, batch_size: int, device) -> float:
    """Top-1 accuracy in eval mode (batch-norm running statistics)."""
    was = model.training
    model.eval()
    correct = 0
    for b in range(0, len(labels), batch_size):
        x = (images[b:b + batch_size].to(device).float() - mean) / std
        correct += int((model(x).argmax(1).cpu() == labels[b:b + batch_size]).sum())
    model.train(was)
    return correct / max(1, len(labels))


def events_dir(out) -> Path:
    """Where the event files of the checkpoint ``out`` go: ``face_cnn.pt`` ->
    ``face_cnn.tb``."""
    return Path(out).with_suffix(".tb")


def train_face_cnn(src, out, *, ferplus=None, classes=None, image_size: int = 64,
                   model_args: dict | None = None, epochs: int = 30, batch_size: int = 128,
                   lr: float = 1e-3, weight_decay: float = 5e-4, warmup_epochs: float = 1.0,
                   patience: int | None = None, augment_crops: bool = True, seed: int = 0,
                   device="auto", overwrite: bool = False, log=None) -> dict:
    """Train a face CNN on ``src`` and write the best-validation model to ``out``; see
    docs/TRAINER.md "Face CNN". ``model_args``: DenseNetBC arguments other than ``n_classes`` /
    ``image_size`` (e.g. ``{"blocks": [4, 4, 4]}``). ``log(line)`` receives one line per
    epoch. The epochs' scalars go to TensorBoard event files in ``<out without suffix>.tb``
    (:func:`events_dir`). Returns a summary: checkpoint, classes, counts, history, best epoch,
    validation and test accuracy."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists (fix: remove it or pass --force)")
    if epochs < 1 or batch_size < 1 or lr <= 0 or warmup_epochs < 0:
        raise BadInputError(f"need epochs >= 1, batch_size >= 1, lr > 0, warmup_epochs >= 0 "
                            f"(got {epochs}, {batch_size}, {lr}, {warmup_epochs})")
    log = log or (lambda line: None)
    device = resolve_device(device, error=BadInputError)
    data = read_face_data(src, image_size=image_size, ferplus=ferplus, classes=classes)
    split = {k: (torch.from_numpy(im), torch.from_numpy(y)) for k, (im, y) in data.splits.items()}
    train_x, train_y = split["train"]
    mean, std = pixel_stats(data.splits["train"][0])
    if not std > 0:
        raise BadInputError("every training pixel has the same value; nothing to learn",
                            file=src)
    log(f"{len(train_y)} train / {len(split['val'][1])} val"
        + (f" / {len(split['test'][1])} test" if "test" in split else "")
        + f" crops, {len(data.classes)} classes"
        + (f", {data.dropped} rows without a usable label dropped" if data.dropped else "")
        + f"; pixel mean {mean:.3f} std {std:.3f}")

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DenseNetBC(**{**(model_args or {}), "n_classes": len(data.classes),
                              "image_size": image_size})
    model.normalization = {"mean": mean, "std": std, "computed": True,
                           "formula": "(gray - mean) / std"}
    model.classes = list(data.classes)
    model.to(device)
    per_epoch = math.ceil(len(train_y) / batch_size)
    total, warmup = epochs * per_epoch, round(warmup_epochs * per_epoch)
    optim = Optim("cnn", torch.optim.AdamW(param_groups(model, weight_decay), lr=lr), lr, warmup,
                  0.0).start(total)
    stepper = Stepper([optim], grad_scaler(device))

    history, best, best_state, step = [], -1.0, None, 0
    events = EventLog(events_dir(out), purge_step=1)  # a re-run replaces the curves
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_y), generator=g)
        loss_sum = correct = 0.0
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            x = ((train_x[idx].float() - mean) / std).unsqueeze(1)
            if augment_crops:
                x = augment(x, g)
            y = train_y[idx].to(device)
            logits = model(x.to(device))
            loss = F.cross_entropy(logits, y)
            stepper.backward(loss)
            update = stepper.step()
            if not update.finite:
                raise FaceTrainError(f"the loss is {update.loss} at epoch {epoch}, update "
                                     f"{step + 1}; training diverged (fix: lower --lr)")
            step += 1
            loss_sum += update.loss * len(idx)  # grad_accum 1: the batch's loss
            correct += int((logits.argmax(1) == y).sum())
        val = accuracy(model, *split["val"], mean, std, batch_size, device)
        rec = {"epoch": epoch, "loss": loss_sum / len(order), "train_accuracy":
               correct / len(order), "val_accuracy": val,
               "lr": update.lrs["cnn"]}
        history.append(rec)
        events.add(rec, step=epoch)
        improved = val > best
        if improved:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(f"epoch {epoch}/{epochs}: loss {rec['loss']:.4f}, train acc "
            f"{rec['train_accuracy']:.4f}, val acc {val:.4f}, lr {rec['lr']:.2e}"
            + (" (best)" if improved else ""))
        if patience is not None and epoch - best_epoch >= patience:
            log(f"no better validation accuracy for {patience} epochs: stopping")
            break

    model.load_state_dict(best_state)
    test = accuracy(model, *split["test"], mean, std, batch_size, device) \
        if "test" in split else None
    if test is not None:
        events.add({"test_accuracy": test}, step=best_epoch)
    events.close()
    summary = {"classes": list(data.classes), "counts": data.counts(), "dropped": data.dropped,
               "epochs": len(history), "best_epoch": best_epoch, "val_accuracy": best,
               "test_accuracy": test, "history": history}
    options = {"image_size": image_size, "epochs": epochs, "batch_size": batch_size, "lr": lr,
               "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
               "patience": patience, "augment": augment_crops, "seed": seed}
    summary["checkpoint"] = str(save_face_cnn(out, model.cpu(), training={
        "source": data.source, "options": options, **summary}))
    log(f"best validation accuracy {best:.4f} (epoch {best_epoch})"
        + (f"; test accuracy {test:.4f}" if test is not None else "") + f"; wrote {out}")
    return summary
