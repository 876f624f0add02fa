"""``memo train face-cnn``: train the DenseNet-BC face CNN on labelled face crops (FER-style).

    summary = train_face_cnn("fer2013.csv", "face_cnn.pt", ferplus="fer2013new.csv")

Inputs (``src``):

- the FER2013 CSV: header ``emotion,pixels,Usage``, one face per row, ``pixels`` the
  space-separated gray values (0..255) of a square crop (48x48), ``Usage`` ``Training`` /
  ``PublicTest`` / ``PrivateTest`` for the train / validation / test split. Labels are
  ``emotion`` (FER2013's 7 classes ``angry disgust fear happy sad surprise neutral``), or,
  with ``ferplus`` (FER+'s ``fer2013new.csv``: the same images in the same row order with 10
  annotators' votes ``neutral happiness surprise sadness anger disgust fear contempt unknown
  NF``), the majority emotion: FER+'s 8 classes in the Denseface order, so the checkpoint's
  softmax is the ``soft_labels`` of the original features. A row is dropped when FER+ left its
  image name empty, when no emotion got a vote, when the top emotion is tied, or when
  ``unknown`` or ``NF`` (not a face) got at least as many votes as the top emotion.
- or a folder ``train/<class>/*.png|jpg|bmp`` + ``val/<class>/...`` (+ ``test/<class>/...``);
  classes are the sorted folder names of ``train/`` unless ``classes`` fixes their order.

Crops are turned gray and resized to ``image_size`` (bilinear, as ``memo db rawimg-db`` does),
then normalised ``(x - mean) / std`` with the mean and std of the training crops' pixels,
stored in the checkpoint (``normalization``). Training augments with a random horizontal flip
and a random shift of up to ``image_size / 16`` pixels (edge pixels repeated).

Optimisation: AdamW (``lr`` 1e-3, ``weight_decay`` 5e-4; no decay on biases and batch-norm
weights), linear warmup over ``warmup_epochs`` then linear decay to 0, cross-entropy, for
``epochs`` epochs (``patience``: stop after that many epochs without a better validation
accuracy). The model of the epoch with the best validation accuracy is kept (never chosen on
the test split); its test accuracy is reported when the input has a test split. The
checkpoint (``memotrain.facecnn.save_face_cnn``: weights, architecture, normalisation, class
names and a ``training`` record) is written once, atomically, at the end.
Every random draw (initialisation, order, augmentation) comes from ``seed``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memodb.errors import BadInputError, MemoError, OutputExistsError
from memotrain.checkpoint import save_face_cnn
from memotrain.facecnn import FERPLUS_CLASSES, DenseNetBC
from memotrain.train import lr_at, param_groups

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_OTHER = ("unknown", "NF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "test")


class FaceTrainError(MemoError):
    """Face CNN training cannot continue (a non-finite loss)."""


@dataclass
class FaceData:
    """Labelled crops, uint8 ``(n, S, S)`` and int64 labels per split."""

    classes: list
    splits: dict = field(default_factory=dict)  # "train" / "val" / "test" -> (images, labels)
    source: dict = field(default_factory=dict)
    dropped: int = 0  # rows without a usable label (FER+)

    def counts(self) -> dict:
        return {name: len(labels) for name, (_, labels) in self.splits.items()}


# ----------------------------------------------------------------------------- inputs

def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def read_fer_csv(path, *, image_size: int = 64, ferplus=None, classes=None) -> FaceData:
    """Crops and labels of a FER2013-style CSV (labels from FER+ votes with ``ferplus``)."""
    path = Path(path)
    if ferplus is not None and classes is not None:
        raise BadInputError("FER+ labels come with their own classes; --classes does not apply",
                            file=ferplus, fix="leave out --classes")
    if classes is None:
        classes = FERPLUS_CLASSES if ferplus is not None else FER2013_CLASSES
    rows = []  # (line, label, usage, pixels)
    side = None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not {"emotion", "pixels", "Usage"} <= set(header):
                raise BadInputError(f"not a FER2013 CSV: the header is {header[:6]}, expected "
                                    "emotion,pixels,Usage", file=path,
                                    fix="give the fer2013.csv file, or a folder of images")
            col = {name: header.index(name) for name in ("emotion", "pixels", "Usage")}
            for line, row in enumerate(reader, 2):
                if not row:
                    continue
                try:
                    pixels = np.array(row[col["pixels"]].split(), dtype=np.int64)
                    label = int(row[col["emotion"]])
                    usage = row[col["Usage"]].strip()
                except (ValueError, IndexError) as exc:
                    raise BadInputError(f"line {line}: unreadable row ({exc})", file=path,
                                        fix="repair or remove the row") from None
                n = math.isqrt(len(pixels))
                if n * n != len(pixels) or n == 0 or (side is not None and n != side):
                    raise BadInputError(
                        f"line {line}: {len(pixels)} pixels, not a square crop"
                        + (f" of {side}x{side} like the rows before" if side else ""),
                        file=path, fix="repair or remove the row")
                side = n
                if pixels.min() < 0 or pixels.max() > 255:
                    raise BadInputError(f"line {line}: pixel values must be 0..255", file=path,
                                        fix="repair or remove the row")
                if usage not in FER_USAGE:
                    raise BadInputError(f"line {line}: Usage {usage!r} is not one of "
                                        f"{', '.join(FER_USAGE)}", file=path,
                                        fix="repair or remove the row")
                rows.append((line, label, FER_USAGE[usage], pixels.astype(np.uint8)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"unreadable CSV ({type(exc).__name__}: {exc})", file=path) from None
    if not rows:
        raise BadInputError("holds no face rows", file=path)
    if ferplus is not None:
        labels = ferplus_labels(ferplus, len(rows))
    else:
        labels = np.array([r[1] for r in rows], dtype=np.int64)
        bad = [(r[0], y) for r, y in zip(rows, labels) if not 0 <= y < len(classes)]
        if bad:
            raise BadInputError(f"line {bad[0][0]}: emotion {bad[0][1]} is not a class index "
                                f"0..{len(classes) - 1} ({len(bad)} such row(s))", file=path,
                                fix="pass the class names (--classes)")
    data = FaceData(list(classes), source={"path": str(path.resolve()), "type": "fer-csv",
                                           "ferplus": None if ferplus is None
                                           else str(Path(ferplus).resolve())})
    keep = labels >= 0
    data.dropped = int((~keep).sum())
    for split in SPLIT_FOLDERS:
        idx = [i for i, r in enumerate(rows) if r[2] == split and keep[i]]
        if idx:
            imgs = np.stack([_resize(rows[i][3].reshape(side, side), image_size) for i in idx])
            data.splits[split] = (imgs, labels[idx])
    return data


def ferplus_labels(path, n_rows: int) -> np.ndarray:
    """Majority FER+ label of each FER2013 row (``-1``: dropped; see the module docstring)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            need = ["Image name", *FERPLUS_CLASSES, *FERPLUS_OTHER]
            lower = [h.lower() for h in header]
            if not all(n.lower() in lower for n in need):
                raise BadInputError(f"not a FER+ label file: the header lacks "
                                    f"{[n for n in need if n.lower() not in lower]}", file=path,
                                    fix="give FERPlus's fer2013new.csv")
            col = {n: lower.index(n.lower()) for n in need}
            labels = []
            for line, row in enumerate(reader, 2):
                if not row:
                    continue
                try:
                    votes = np.array([float(row[col[c]] or 0) for c in FERPLUS_CLASSES])
                    other = max(float(row[col[c]] or 0) for c in FERPLUS_OTHER)
                    named = row[col["Image name"]].strip() != ""
                except (ValueError, IndexError) as exc:
                    raise BadInputError(f"line {line}: unreadable votes ({exc})", file=path,
                                        fix="repair the row") from None
                top = votes.max()
                ok = named and top > 0 and top > other and (votes == top).sum() == 1
                labels.append(int(votes.argmax()) if ok else -1)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"unreadable CSV ({type(exc).__name__}: {exc})", file=path) from None
    if len(labels) != n_rows:
        raise BadInputError(f"{len(labels)} label rows for {n_rows} FER2013 rows; FER+ labels "
                            "must follow fer2013.csv row by row", file=path,
                            fix="give the fer2013new.csv that belongs to this fer2013.csv")
    return np.array(labels, dtype=np.int64)


def read_image_folders(root, *, image_size: int = 64, classes=None) -> FaceData:
    """Crops of ``root/{train,val,test}/<class>/*`` (test optional)."""
    from PIL import Image

    root = Path(root)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise BadInputError("needs train/<class>/ and val/<class>/ folders of images",
                            file=root, fix="arrange the crops so, or give a FER2013 CSV")
    found = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    classes = list(found if classes is None else classes)
    data = FaceData(classes, source={"path": str(root.resolve()), "type": "folders"})
    for split in SPLIT_FOLDERS:
        folder = root / split
        if not folder.is_dir():
            continue
        unknown = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in classes)
        if unknown:
            raise BadInputError(f"class folder(s) {unknown} not among the classes {classes}",
                                file=folder, fix="pass every class name (--classes) or "
                                "remove the folders")
        imgs, labels = [], []
        for y, name in enumerate(classes):
            files = sorted(p for p in (folder / name).glob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES) if (folder / name).is_dir() else []
            for p in files:
                try:
                    with Image.open(p) as img:
                        imgs.append(_resize(np.asarray(img.convert("L")), image_size))
                except (OSError, ValueError) as exc:
                    raise BadInputError(f"unreadable image ({exc})", file=p,
                                        fix="replace or remove it") from None
                labels.append(y)
        if imgs:
            data.splits[split] = (np.stack(imgs), np.array(labels, dtype=np.int64))
    return data


def read_face_data(src, *, image_size: int = 64, ferplus=None, classes=None) -> FaceData:
    src = Path(src)
    if src.is_dir():
        if ferplus is not None:
            raise BadInputError("FER+ labels go with a FER2013 CSV, not a folder of images",
                                file=src)
        data = read_image_folders(src, image_size=image_size, classes=classes)
    elif src.is_file():
        data = read_fer_csv(src, image_size=image_size, ferplus=ferplus, classes=classes)
    else:
        raise BadInputError("no such file or folder", file=src)
    for split, usage in (("train", "Training"), ("val", "PublicTest")):
        if split not in data.splits:
            raise BadInputError(f"no {split} faces (FER2013 Usage {usage} or {split}/<class>/ "
                                "images)", file=src,
                                fix="training needs a train and a validation split")
    return data


# ----------------------------------------------------------------------------- training

def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to S/16 pixels, per crop of
    ``(B, 1, S, S)``; edge pixels fill the uncovered border."""
    b, s = x.shape[0], x.shape[-1]
    pad = max(1, s // 16)
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=g).tolist()
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack([padded[i, :, dy:dy + s, dx:dx + s] for i, (dy, dx) in enumerate(shifts)])


def pixel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[float, float]:
    """Mean and (population) std of uint8 crops, in float64, a chunk at a time."""
    s = ss = 0.0
    for b in range(0, len(images), chunk):
        x = images[b:b + chunk].astype(np.float64)
        s += x.sum()
        ss += np.square(x).sum()
    n = images.size
    mean = s / n
    return float(mean), math.sqrt(max(float(ss / n - mean * mean), 0.0))


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


def resolve_device(device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device cuda was asked but CUDA is not available",
                            fix="use --device cpu or auto")
    return device


def train_face_cnn(src, out, *, ferplus=None, classes=None, image_size: int = 64,
                   model_args: dict | None = None, epochs: int = 30, batch_size: int = 128,
                   lr: float = 1e-3, weight_decay: float = 5e-4, warmup_epochs: float = 1.0,
                   patience: int | None = None, augment_crops: bool = True, seed: int = 0,
                   device="auto", overwrite: bool = False, log=None) -> dict:
    """Train a face CNN on ``src`` and write the best-validation model to ``out``; see the
    module docstring. ``model_args``: DenseNetBC arguments other than ``n_classes`` /
    ``image_size`` (e.g. ``{"blocks": [4, 4, 4]}``). ``log(line)`` receives one line per
    epoch. Returns a summary: checkpoint, classes, counts, history, best epoch, validation
    and test accuracy."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists (fix: remove it or pass --force)")
    if epochs < 1 or batch_size < 1 or lr <= 0 or warmup_epochs < 0:
        raise BadInputError(f"need epochs >= 1, batch_size >= 1, lr > 0, warmup_epochs >= 0 "
                            f"(got {epochs}, {batch_size}, {lr}, {warmup_epochs})")
    log = log or (lambda line: None)
    device = resolve_device(device)
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
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    per_epoch = math.ceil(len(train_y) / batch_size)
    total, warmup = epochs * per_epoch, round(warmup_epochs * per_epoch)

    history, best, best_state, step = [], -1.0, None, 0
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
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, lr, warmup, total)
            logits = model(x.to(device))
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FaceTrainError(f"the loss is {loss.item()} at epoch {epoch}, update "
                                     f"{step + 1}; training diverged (fix: lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        val = accuracy(model, *split["val"], mean, std, batch_size, device)
        rec = {"epoch": epoch, "loss": loss_sum / len(order), "train_accuracy":
               correct / len(order), "val_accuracy": val,
               "lr": optimizer.param_groups[0]["lr"]}
        history.append(rec)
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
