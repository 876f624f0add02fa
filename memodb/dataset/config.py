"""The dataset config of ``memo db build``: :func:`load_config` reads and validates it (JSON,
paths relative to the config file). The keys: README, "memo db build"."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInputError
from ..text.splits import TRAIN

TEXT_DIR = "txt"

_TOP = {"name", "vocab", "lexicon", "features", "text"}
_FEATURE = {"type", "source", "modality", "feature", "conf_th", "max_bb", "min_bb"}
_RAWIMG = {"type", "source", "size", "mean", "std", "conf_th", "max_bb", "min_bb"}
_TEXT = {"source", "sources", "folds", "faces_from", "min_faces", "max_len", "long", "labels",
         "splits", "seed", "dataset"}
SPLIT_ROLES = {"train": "train", "val": "heldout", "test": "heldout"}


def load_config(path) -> dict:
    """Read and validate a dataset config; paths become absolute (relative to its folder)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the config ({exc})", file=path) from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}", file=path, fix="repair the JSON") from None
    if not isinstance(cfg, dict):
        raise BadInputError("the config must be a JSON object", file=path)
    base = path.resolve().parent

    def where(*keys):
        return "config key " + ".".join(str(k) for k in keys)

    def unknown(obj, allowed, *keys):
        if not isinstance(obj, dict):
            raise BadInputError(f"{where(*keys)} must be an object", file=path)
        extra = sorted(set(obj) - allowed)
        if extra:
            raise BadInputError(f"{where(*keys)}: unknown key(s) {extra}", file=path,
                                fix=f"use only {sorted(allowed)}")

    def absolute(value, *keys):
        if not isinstance(value, str) or not value:
            raise BadInputError(f"{where(*keys)} must be a path string", file=path)
        return str((base / value).resolve()) if "{fold}" not in value else str(base / value)

    unknown(cfg, _TOP)
    out = {"name": cfg.get("name") or path.stem, "vocab": None, "lexicon": None,
           "features": {}, "text": None}
    for key in ("vocab", "lexicon"):
        if cfg.get(key) is not None:
            out[key] = absolute(cfg[key], key)
    features = cfg.get("features") or {}
    unknown(features, set(features), "features")
    for name, spec in features.items():
        kind = spec.get("type", "feature") if isinstance(spec, dict) else None
        if kind not in ("feature", "rawimg"):
            raise BadInputError(f"{where('features', name, 'type')} is {kind!r}", file=path,
                                fix="use \"feature\" (default) or \"rawimg\"")
        unknown(spec, _FEATURE if kind == "feature" else _RAWIMG, "features", name)
        if name == TEXT_DIR or not name.replace("_", "").replace("-", "").isalnum():
            raise BadInputError(f"{where('features', name)}: the name must be letters, digits, "
                                f"'_' or '-', and not {TEXT_DIR!r}", file=path)
        if "source" not in spec:
            raise BadInputError(f"{where('features', name)} has no source", file=path)
        out["features"][name] = {**spec, "type": kind,
                                 "source": absolute(spec["source"], "features", name)}
    text = cfg.get("text")
    if text is not None:
        unknown(text, _TEXT, "text")
        t = dict(text)
        if ("source" in t) == ("sources" in t):
            raise BadInputError(f"{where('text')} needs either source (one file, optional "
                                "splits) or sources (one file per split)", file=path)
        if "source" in t:
            t["source"] = absolute(t["source"], "text", "source")
            if "folds" in t:
                raise BadInputError(f"{where('text', 'folds')} needs per-split sources",
                                    file=path, fix="use \"sources\": {\"train\": ..., ...}")
        else:
            unknown(t["sources"], set(SPLIT_ROLES), "text", "sources")
            if TRAIN not in t["sources"]:
                raise BadInputError(f"{where('text', 'sources')} has no train file", file=path)
            if "splits" in t:
                raise BadInputError(f"{where('text', 'splits')} cannot be combined with "
                                    "per-split sources", file=path)
            t["sources"] = {k: absolute(v, "text", "sources", k) for k, v in t["sources"].items()}
            folds = t.get("folds")
            has_placeholder = any("{fold}" in v for v in t["sources"].values())
            if folds is not None and (not isinstance(folds, list) or not folds):
                raise BadInputError(f"{where('text', 'folds')} must be a non-empty list",
                                    file=path)
            if bool(folds) != has_placeholder:
                raise BadInputError(f"{where('text')}: folds and a {{fold}} placeholder in "
                                    "the source paths go together", file=path)
        faces_from = t.get("faces_from")
        if faces_from is not None and out["features"].get(faces_from, {}).get("type") != \
                "feature":
            raise BadInputError(f"{where('text', 'faces_from')} is {faces_from!r}, not a "
                                "feature database of this config", file=path,
                                fix=f"use one of {sorted(out['features'])}")
        out["text"] = t
    if not out["features"] and out["text"] is None:
        raise BadInputError("the config builds nothing (no features, no text)", file=path)
    return out
