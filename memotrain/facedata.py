"""Labelled face crops for training the face CNN: a FER2013 CSV (with FER+ labels) or folders
of images, read into uint8 arrays per split; the training augmentation and pixel statistics.
The inputs and the FER+ label rule: docs/TRAINER.md "Face CNN".
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memodb.errors import BadInputError
from memotrain.facecnn import FERPLUS_CLASSES

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_OTHER = ("unknown", "NF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "test")


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
    """Majority FER+ label of each FER2013 row (``-1``: dropped; docs/TRAINER.md "Face CNN")."""
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


# ----------------------------------------------------------------------------- training inputs

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
