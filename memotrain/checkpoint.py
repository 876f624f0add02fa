"""Checkpoints: written atomically, verified when read, and rebuilt into models.

Two kinds, each one torch file that rebuilds its model on its own (docs/TRAINER.md
"Checkpoints"): the memo checkpoint of a :class:`MemoBert` (:func:`save_checkpoint`,
:func:`load_checkpoint`, :func:`load_model`) and the face CNN checkpoint of a
:class:`DenseNetBC` (:func:`save_face_cnn`, :func:`load_face_cnn`; :func:`load_face_features`
takes the ``features.*`` weights of any DenseNet state dict). Training states go through
:func:`atomic_save` and :func:`verify_torch_file` too.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memodb.errors import MemoError
from memodb.store.files import atomic_write
from memotrain.config import ConfigError, ModelConfig
from memotrain.facecnn import FACE_KIND, DenseNetBC
from memotrain.model import MemoBert


class CheckpointError(MemoError):
    """A checkpoint cannot be read, converted or loaded into the model."""


def memo_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("memo-emotion")
    except PackageNotFoundError:  # not installed: the source tree
        import memodb
        return memodb.__version__


def save_checkpoint(path, model: MemoBert, **extra) -> Path:
    """Write ``{"model", "config", "memo_version", **extra}`` to ``path`` atomically (a temp
    file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": model.state_dict(), "config": model.config.to_dict(),
                 "memo_version": memo_version(), **extra}, path)
    return path


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` through memodb's atomic writer (a temporary file in the same folder,
    fsync, rename): the file at ``path`` is always whole (the old one or the new one)."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def verify_torch_file(path) -> None:
    """Raise CheckpointError when a torch file (a zip archive) fails its CRC-32 checks.

    ``torch.load`` does not verify them: a flipped bit in the weights would load silently as a
    wrong weight. Reading the file once more costs far less than loading it. Files in torch's
    older, non-zip format are left to ``torch.load``."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as exc:  # noqa: BLE001 (a damaged archive raises many kinds of errors)
        raise CheckpointError(f"{path}: damaged torch file ({type(exc).__name__}: {exc}); "
                              "copy it again or use another checkpoint") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged torch file: {bad} fails its CRC-32 check (the "
                              "file changed after it was written); copy it again or use "
                              "another checkpoint")


def read_torch_file(path: Path, map_location="cpu"):
    """``torch.load`` of tensors only (``weights_only``); CheckpointError when the file is
    missing or unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 (corrupt files raise many kinds of errors)
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """The dict of a memo checkpoint (tensors only are unpickled: ``weights_only``)."""
    path = Path(path)
    ckpt = read_torch_file(path, map_location)
    verify_torch_file(path)  # what torch.load read whole may still hold flipped bits
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a memo checkpoint (no 'model' and 'config') (fix: "
                              "convert a Hugging Face BERT with `memo train convert-ckpt`)")
    return ckpt


def load_model(path_or_ckpt, device="cpu") -> MemoBert:
    """Rebuild the model from a memo checkpoint alone (a file or a ``load_checkpoint`` dict),
    on ``device``. The model is in training mode, like any new module."""
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    where = "checkpoint" if isinstance(path_or_ckpt, dict) else str(path_or_ckpt)
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    model = MemoBert(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: the weights do not fit the checkpoint's own config "
                              f"({exc})") from None
    return model.to(device)


# ----------------------------------------------------------------------------- face CNN checkpoints

def save_face_cnn(path, model: DenseNetBC, **extra) -> Path:
    """Write a face CNN checkpoint (docs/FORMAT.md section 10) atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"kind": FACE_KIND, "model": model.state_dict(), "config": dict(model.config),
                 "normalization": model.normalization, "classes": model.classes,
                 "memo_version": memo_version(), **extra}, path)
    return path


def read_face_checkpoint(path) -> dict:
    """The dict of a memo face CNN checkpoint (tensors only are unpickled)."""
    path = Path(path)
    ckpt = read_torch_file(path)
    if not (isinstance(ckpt, dict) and ckpt.get("kind") == FACE_KIND
            and isinstance(ckpt.get("model"), dict) and isinstance(ckpt.get("config"), dict)):
        raise CheckpointError(
            f"{path}: not a memo face CNN checkpoint (fix: train one with `memo train face-cnn`; "
            "weights of another DenseNet face model load with memotrain.checkpoint."
            "load_face_features)")
    return ckpt


def load_face_cnn(path, *, frozen_blocks: int = 0, checkpoint_activations: bool = False,
                  device="cpu") -> DenseNetBC:
    """Rebuild a face CNN from its checkpoint alone, on ``device`` (in training mode, like any
    new module), with its ``normalization`` and ``classes``."""
    ckpt = read_face_checkpoint(path)
    try:
        model = DenseNetBC(**ckpt["config"], frozen_blocks=frozen_blocks,
                           checkpoint_activations=checkpoint_activations)
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: its config does not describe a face CNN ({exc})") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the checkpoint's own config "
                              f"({exc})") from None
    model.normalization = ckpt.get("normalization")
    model.classes = ckpt.get("classes")
    return model.to(device)


@dataclass
class FeatureLoad:
    """What :func:`load_face_features` did."""

    source: str
    loaded: list = field(default_factory=list)  # model keys filled (features.*)
    dropped: list = field(default_factory=list)  # source keys not used (classifier, ...)


def _unwrap(obj, where: str) -> dict:
    """The state dict inside a checkpoint: the object itself, or its "model" / "state_dict"."""
    for _ in range(2):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor)
                                                 for v in obj.values()):
            return obj
        inner = [obj.get(k) for k in ("model", "state_dict")] if isinstance(obj, dict) else []
        inner = [v for v in inner if isinstance(v, dict)]
        if not inner:
            break
        obj = inner[0]
    raise CheckpointError(f"{where}: not a state dict (a mapping of names to tensors, maybe "
                          "under 'model' or 'state_dict')")


def load_face_features(model: DenseNetBC, src, *, prefix: str = "") -> FeatureLoad:
    """Fill ``model``'s feature extractor (``features.*``) from ``src`` (a checkpoint file or an
    already loaded dict); everything else of ``src`` (the classifier above all) is dropped and
    reported. ``prefix``: where the face CNN sits in ``src`` (e.g. ``"face_cnn."`` in a joint
    model); a ``module.`` prefix (DataParallel) is removed first.

    Raises CheckpointError naming the file and the key when a feature key of the model is
    missing, a source feature key has no place in the model, or shapes disagree. BN
    ``num_batches_tracked`` counters may be missing (old checkpoints)."""
    where = str(src) if isinstance(src, (str, Path)) else "checkpoint"
    sd = _unwrap(read_torch_file(Path(src)) if isinstance(src, (str, Path)) else src, where)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    head = prefix + "features."
    take = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(head)}
    dropped = [k for k in sd if not k.startswith(head)]
    if not take:
        shown = ", ".join(list(sd)[:4]) + (" ..." if len(sd) > 4 else "")
        raise CheckpointError(f"{where}: no '{head}*' key, so no face CNN features to load (it "
                              f"holds {shown}) (fix: pass the face CNN checkpoint, or the "
                              "prefix under which the CNN sits)")
    ours = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    homeless = [k for k in take if k not in ours]
    if homeless:
        raise CheckpointError(f"{where}: {prefix}{homeless[0]} {tuple(take[homeless[0]].shape)} "
                              f"has no place in the face CNN ({len(homeless)} such key(s); "
                              f"model: {model.describe()}) (fix: build the DenseNetBC with the "
                              "checkpoint's architecture)")
    missing = [k for k in ours if k not in take and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} face CNN key(s) missing: "
                              f"{', '.join(prefix + k for k in missing[:4])}"
                              f"{' ...' if len(missing) > 4 else ''} (model: "
                              f"{model.describe()})")
    for k, v in take.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            raise CheckpointError(f"{where}: {prefix}{k} has shape {tuple(v.shape)} in the "
                                  f"checkpoint but {tuple(ours[k].shape)} in the face CNN "
                                  f"(model: {model.describe()}) (fix: build the DenseNetBC with "
                                  "the checkpoint's architecture)")
    model.load_state_dict(take, strict=False)
    return FeatureLoad(where, loaded=sorted(take), dropped=dropped)
