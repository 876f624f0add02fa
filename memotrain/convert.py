"""Hugging Face BERT checkpoint -> memo checkpoint (``memo train convert-ckpt``).

The memo checkpoint written (:mod:`memotrain.checkpoint`) records its ``source``: ``{"path",
"sha256", "format", "seed", "fresh", "unexpected"}``. Conversion loads the embeddings, the encoder and the pooler; the MLM head when the source has
``cls.predictions.*`` (else it starts fresh, tied to the word embeddings); face and speech
embeddings start random (seeded). Source keys may be ``bert.``-prefixed or bare.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memodb.errors import OutputExistsError
from memodb.store.files import file_sha256
from memotrain.checkpoint import CheckpointError, save_checkpoint
from memotrain.config import ConfigError, ModelConfig, load_config
from memotrain.model import MemoBert

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
REQUIRED = ("embeddings.", "encoder.")  # a source without all of these does not convert
OPTIONAL = ("pooler.", "mlm.")  # loaded when present (whole groups), else fresh
FIX_CONFIG = ("pass a --config that matches the checkpoint, or none to use the source's "
              "config.json")


@dataclass
class Conversion:
    config: ModelConfig
    source: dict  # path, sha256, format, seed, fresh, unexpected
    loaded: list = field(default_factory=list)  # memo keys filled from the source
    fresh: list = field(default_factory=list)  # memo keys left at their (seeded) random init
    unexpected: list = field(default_factory=list)  # source keys not used
    out: Path | None = None

    @property
    def mlm_loaded(self) -> bool:
        return "mlm.bias" in self.loaded

    @property
    def pooler_loaded(self) -> bool:
        return "pooler.dense.weight" in self.loaded


# ----------------------------------------------------------------------------- reading

def find_weights(src) -> tuple[Path, dict | None]:
    """The weights file of ``src`` (a Hugging Face folder or a file) and the Hugging Face
    ``config.json`` next to it, if any."""
    src = Path(src)
    if src.is_dir():
        if (src / "model.safetensors.index.json").exists() or \
                (src / "pytorch_model.bin.index.json").exists():
            raise CheckpointError(f"{src}: sharded checkpoints are not supported (fix: "
                                  "save the model as one file, e.g. save_pretrained("
                                  "max_shard_size='100GB'))")
        found = [src / n for n in WEIGHT_FILES if (src / n).is_file()]
        if not found:
            raise CheckpointError(f"{src}: no {' or '.join(WEIGHT_FILES)} in the folder")
        weights, folder = found[0], src
    elif src.is_file():
        weights, folder = src, src.parent
    else:
        raise CheckpointError(f"{src}: no such file or folder")
    hf = None
    if (folder / "config.json").is_file():
        try:
            hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'config.json'}: unreadable ({exc})") from None
    return weights, hf


def read_state_dict(path) -> tuple[dict, str]:
    """All tensors of a ``.safetensors`` or torch file (on CPU) and the format name."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path)), "safetensors"
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (corrupt files raise many kinds of errors)
        raise CheckpointError(f"{path}: cannot read the weights ({exc})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return sd, "torch"


def map_key(key: str) -> str | None:
    """Hugging Face key -> memo key (``None``: a buffer to ignore). Keys with no memo
    counterpart come back unchanged and are reported as unexpected."""
    key = key.removeprefix("bert.")
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)  # TF-era names
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    if key == "embeddings.position_ids":
        return None
    if key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        return "mlm.bias"
    if key == "cls.predictions.decoder.weight":
        return "mlm.decoder.weight"
    if key.startswith("cls.predictions.transform."):
        return "mlm." + key[len("cls.predictions."):]
    return key


# ----------------------------------------------------------------------------- converting

def convert_state_dict(source: dict, cfg: ModelConfig, seed: int = 0,
                       where: str = "checkpoint") -> tuple[MemoBert, Conversion]:
    """Build a MemoBert (random parts seeded by ``seed``) and fill it from a Hugging Face BERT
    state dict. Raises CheckpointError on missing required keys or shape mismatches."""
    with torch.device("meta"):  # shapes only: check before paying for the initialisation
        ours = MemoBert(cfg).state_dict()
    mapped, unexpected, origin, homeless = {}, [], {}, []
    for key in sorted(source, key=lambda k: (k.endswith("decoder.bias"), k)):
        new = map_key(key)
        if new is None:
            continue
        if new == "mlm.bias" and new in mapped:
            continue  # cls.predictions.decoder.bias is an alias of cls.predictions.bias
        if new in ours:
            mapped[new], origin[new] = source[key], key
        elif new.startswith(REQUIRED + ("pooler.",)):
            homeless.append(key)  # e.g. a layer the config does not have
        else:
            unexpected.append(key)
    tied = mapped.pop("mlm.decoder.weight", None)
    for new, t in mapped.items():
        if tuple(t.shape) != tuple(ours[new].shape):
            raise CheckpointError(
                f"{where}: {origin[new]} has shape {tuple(t.shape)} in the checkpoint but "
                f"{tuple(ours[new].shape)} in the model ({_sizes(cfg)}) (fix: {FIX_CONFIG})")
    if homeless:
        key = homeless[0]
        raise CheckpointError(
            f"{where}: {key} {tuple(source[key].shape)} has no place in the model "
            f"({len(homeless)} such key(s); model: {_sizes(cfg)}; the checkpoint has "
            f"{_layers(source)} layers) (fix: {FIX_CONFIG})")
    missing = [k for k in ours if k.startswith(REQUIRED) and k not in mapped]
    if missing:
        raise CheckpointError(
            f"{where}: {len(missing)} key(s) the model needs are missing: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} (model: "
            f"{_sizes(cfg)}; the checkpoint has {_layers(source)} layers) (fix: {FIX_CONFIG})")
    for group in OPTIONAL:
        keys = [k for k in ours if k.startswith(group) and k != "mlm.decoder.weight"]
        have = [k for k in keys if k in mapped]
        if have and len(have) != len(keys):
            raise CheckpointError(
                f"{where}: the {group.rstrip('.')} weights are incomplete: "
                f"{', '.join(k for k in keys if k not in mapped)} missing")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MemoBert(cfg)
    model.load_state_dict(mapped, strict=False)
    word = model.embeddings.word_embeddings.weight.data
    if tied is not None and not torch.equal(tied.to(word.dtype), word):
        unexpected.append("cls.predictions.decoder.weight (differs from the word embeddings; "
                          "memo ties them)")
    fresh = [k for k in ours if k not in mapped and k != "mlm.decoder.weight"]
    return model, Conversion(cfg, {"seed": seed, "fresh": _groups(fresh),
                                   "unexpected": unexpected},
                             loaded=sorted(mapped), fresh=fresh, unexpected=unexpected)


def convert_bert(src, out=None, config=None, seed: int = 0,
                 overwrite: bool = False) -> Conversion:
    """Convert the Hugging Face BERT checkpoint ``src`` (folder or weights file) and write it to
    ``out`` (atomically). ``config``: preset name, JSON file or ModelConfig; default: the
    source's ``config.json``."""
    if out is not None and Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists (fix: remove it or pass --force)")
    weights, hf = find_weights(src)
    if config is not None:
        cfg = load_config(config)
    elif hf is not None:
        try:
            cfg = ModelConfig.from_hf_config(hf)
        except ConfigError as exc:
            raise ConfigError(f"{weights.parent / 'config.json'}: {exc}") from None
    else:
        raise ConfigError(f"{src}: no config.json next to the weights (fix: pass --config "
                          "base|small|tiny|FILE)")
    sd, fmt = read_state_dict(weights)
    model, conv = convert_state_dict(sd, cfg, seed=seed, where=str(weights))
    conv.source = {"path": str(weights.resolve()), "sha256": file_sha256(weights), "format": fmt,
                   **conv.source}
    if out is not None:
        conv.out = save_checkpoint(out, model, source=conv.source)
    return conv


def _sizes(cfg: ModelConfig) -> str:
    return (f"{cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads, intermediate "
            f"{cfg.intermediate}, vocab {cfg.vocab_size}, {cfg.max_text_positions} positions")


def _layers(sd: dict) -> int:
    ns = [int(m.group(1)) for k in sd for m in [re.search(r"encoder\.layer\.(\d+)\.", k)] if m]
    return max(ns) + 1 if ns else 0


def _groups(keys: list) -> list:
    """Top-level module names of ``keys`` (``face_embeddings``, ``mlm`` ...), in order."""
    return list(dict.fromkeys(k.split(".")[0] for k in keys))
