"""The dataset config of ``memo db build``: its keys as strict dataclasses (defaults and
descriptions in the fields: docs/CONFIG.md), and :func:`load_config`, which reads and
validates a config file (paths relative to the file)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from ..config import STRICT, validate
from ..errors import BadInputError, named_options
from ..feature.frames import selection_options
from ..feature.imgdb import feature_options, naming_options
from ..feature.rawimg import rawimg_options
from ..feature.speech import OPENSMILE_RATE, check_rate
from ..text.splits import TRAIN
from ..text.txtdb import text_options
from .protocols import LABEL_MAPS, PROTOCOLS, label_map

TEXT_DIR = "txt"
SPLIT_ROLES = {"train": "train", "val": "heldout", "test": "heldout"}
PREP_RECORD = "prep.json"  # the record of a memo prep output folder


def prep_output_part(path: str, part: str) -> str:
    """A ``memo prep`` output folder (it holds prep.json) given as a source stands for its
    ``part`` (``faces`` for raw crops, ``captions.json`` for text); other paths are kept."""
    p = Path(path)
    return str(p / part) if p.is_dir() and (p / PREP_RECORD).is_file() else path


@dataclass(config=STRICT)
class FeatureSpec:
    """``features.<name>``: a feature database (memo db create-imgdb)."""
    source: str = Field(description="Denseface h5 root or npz folder (relative to the config)")
    type: Literal["feature"] = Field("feature", description="feature (default) or rawimg")
    modality: str = Field("face", description="face or speech")
    feature: str = Field("feat", description="h5 dataset: feat, trans1 or trans2")
    conf_th: float | None = Field(None, description="0 to 1: frames with confidence > "
                                                    "conf_th are kept (null: faces 0.5, "
                                                    "speech 1.0)")
    max_bb: int | None = Field(None, description=">= 1: frames kept per segment, in time "
                                                 "order (null: faces 36, speech 64)")
    min_bb: int = Field(0, description="0 to max_bb: segments with fewer kept frames are "
                                       "left out")
    compress: bool = Field(False, description="the original tools' _compressed variant "
                                              "(np.savez_compressed values)")
    name_min: int | None = Field(None, description=">= 0: the name's min{N} part alone, "
                                                   "nothing dropped (the original meaning; "
                                                   "10 for the original configs)")


@dataclass(config=STRICT)
class RawimgSpec:
    """``features.<name>`` with ``"type": "rawimg"``: raw face crops (memo db rawimg-db)."""
    source: str = Field(description="OpenFace output folder, or a memo prep output folder "
                                    "(its faces/)")
    type: Literal["rawimg"] = "rawimg"
    size: int = Field(64, description=">= 8: crops are resized to size x size")
    mean: float | None = Field(None, description="null: computed over the corpus")
    std: float | None = Field(None, description="> 0; null: computed over the corpus (mean "
                                                "and std go together)")
    conf_th: float = Field(0.5, description="0 to 1, as in a feature database")
    max_bb: int = Field(36, description=">= 1")
    min_bb: int = Field(0, description="0 to max_bb")


@dataclass(config=STRICT)
class SpeechSpec:
    """``features.<name>`` with ``"type": "speech"``: openSMILE features of a folder of wavs
    (memo extract-speech; wav2vec2 goes through the command)."""
    source: str = Field(description="folder of <segment>.wav files or a memo prep output")
    type: Literal["speech"] = "speech"
    extractor: Literal["compare", "egemaps"] = Field(
        description="compare (ComParE_2016, 65 per frame) or egemaps (eGeMAPSv02, 25)")
    rate: float | None = Field(None, description="frames per second stored, each the mean of "
                                                 "its window (null: 100, one per 10 ms)")
    max_bb: int | None = Field(None, description=">= 1: the first frames kept (null: 64)")
    min_bb: int = Field(0, description="0 to max_bb: segments with fewer frames are left out")


@dataclass(config=STRICT)
class TextSpec:
    """``text``: the text databases (memo db create-txtdb)."""
    source: str | None = Field(None, description="one transcript file (captions, refs or "
                                                 "JSON lines), split by splits or protocol; or a memo "
                                                 "prep output folder (its captions.json)")
    protocol: str | None = Field(None, description="with source: iemocap-10fold, "
                                                   "iemocap-5fold, msp-improv-12fold, meld or "
                                                   "a file of id fold split lines; makes "
                                                   "txt/fold<f>/")
    label_map: str | dict[str, str] | None = Field(None, description="with protocol: a named "
                                                                     "map or {corpus label: "
                                                                     "class} (null: the "
                                                                     "protocol's)")
    sources: dict[str, str] | None = Field(None, description="one file per split: train, val, "
                                                             "test ({fold} placeholder)")
    folds: list[int | str] | None = Field(None, description="with sources: one text db group "
                                                            "per fold, txt/fold<f>/")
    faces_from: str | None = Field(None, description="a feature name: texts only for its "
                                                     "segments")
    min_faces: int = Field(1, description=">= 0: segments with fewer kept faces get no text")
    max_len: int = Field(100, description=">= 1: word pieces per text at most")
    long: str = Field("truncate", description="longer texts: truncate or drop")
    labels: list[str] | None = Field(None, description="the class names; other labels are "
                                                       "errors")
    splits: list[str] = Field(default_factory=list, description="with source: NAME=COUNT, "
                                                                "NAME=FILE, ...@train")
    seed: int = Field(0, description="split seed (hash of seed and id)")
    dataset: str | None = Field(None, description="the dataset field of each example "
                                                  "(default: name)")
    layout: str = Field("flat", description="flat (input_ids + word_ids) or wwm (input_ids "
                                            "nested per word, the original whole-word layout)")


@dataclass(config=STRICT)
class DatasetConfig:
    """One dataset folder: feature databases and the text databases over them."""
    name: str | None = Field(None, description="default: the config file's name")
    vocab: str | None = Field(None, description="BERT vocabulary folder (default: the "
                                                "bundled bert-base-uncased)")
    lexicon: str | None = Field(None, description="emotion lexicon (word TAB category, or NRC)")
    features: dict[str, FeatureSpec | RawimgSpec | SpeechSpec] = Field(
        default_factory=dict, description="name -> a feature, rawimg or speech database")
    text: TextSpec | None = None


# the builders' options (keyword names) that a dataset config sets, and where: builder errors
# name these keys (and the config file) instead of command-line flags
FEATURE_OPTIONS = ("conf_th", "max_bb", "min_bb", "modality", "feature", "size", "mean", "std",
                   "compress", "name_min", "rate")
SPECS = {"feature": FeatureSpec, "rawimg": RawimgSpec, "speech": SpeechSpec}
TEXT_KEYS = {"max_len": "text.max_len", "long": "text.long", "min_faces": "text.min_faces",
             "labels": "text.labels", "img_db": "text.faces_from", "vocab": "vocab",
             "lexicon": "lexicon", "layout": "text.layout", "protocol": "text.protocol",
             "label_map": "text.label_map"}


def feature_keys(name: str) -> dict:
    """Builder option -> config key of the feature database ``name``."""
    return {**{o: f"features.{name}.{o}" for o in FEATURE_OPTIONS},
            "features": f"features.{name}.extractor"}


def config_file(config) -> Path | None:
    """The file of a config given as a path (None for a dict): the file errors name."""
    return None if isinstance(config, dict) else Path(config)


def _keys(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def text_spec(text: dict) -> TextSpec:
    """A validated config's ``text`` with its defaults."""
    return validate(TextSpec, text)


def _protocol_keys(t: dict, where, path, absolute) -> None:
    """A text section with a protocol: no keys that split otherwise, the label map known, a
    protocol file's path made absolute."""
    for key in ("splits", "seed", "labels"):
        if key in t:
            raise BadInputError(f"{where('text', key)} cannot be combined with a protocol "
                                "(it makes the folds, splits and classes)", file=path,
                                fix=f"drop {key}")
    if t.get("label_map") is not None:
        with named_options(TEXT_KEYS, path):
            label_map(t["label_map"], None)
    if t["protocol"] not in PROTOCOLS:
        t["protocol"] = absolute(t["protocol"], "text", "protocol")
        if not Path(t["protocol"]).is_file():
            raise BadInputError(f"{where('text', 'protocol')} is {t['protocol']!r}: neither "
                                "a named protocol nor a file", file=path,
                                fix=f"use one of {sorted(PROTOCOLS)} or a file of lines "
                                    "'id fold split'")
        if t.get("label_map") is None:
            raise BadInputError(f"{where('text', 'label_map')}: a protocol file needs a "
                                "label map", file=path, fix=f"give one of {sorted(LABEL_MAPS)}"
                                " or an object {corpus label: class}")


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

    def typed(cls, obj, *keys):
        def error(message):
            return BadInputError(f"config key {message}", file=path)
        return validate(cls, obj, error=error, where=".".join(map(str, keys)))

    unknown(cfg, _keys(DatasetConfig))
    typed(DatasetConfig, {k: v for k, v in cfg.items() if k not in ("features", "text")})
    out = {"name": cfg.get("name") or path.stem, "vocab": None, "lexicon": None,
           "features": {}, "text": None}
    for key in ("vocab", "lexicon"):
        if cfg.get(key) is not None:
            out[key] = absolute(cfg[key], key)
    features = cfg.get("features") or {}
    unknown(features, set(features), "features")
    for name, spec in features.items():
        kind = spec.get("type", "feature") if isinstance(spec, dict) else None
        if kind not in SPECS:
            raise BadInputError(f"{where('features', name, 'type')} is {kind!r}", file=path,
                                fix="use \"feature\" (default), \"rawimg\" or \"speech\"")
        spec_cls = SPECS[kind]
        unknown(spec, _keys(spec_cls), "features", name)
        if name == TEXT_DIR or not name.replace("_", "").replace("-", "").isalnum():
            raise BadInputError(f"{where('features', name)}: the name must be letters, digits, "
                                f"'_' or '-', and not {TEXT_DIR!r}", file=path)
        if "source" not in spec:
            raise BadInputError(f"{where('features', name)} has no source", file=path)
        v = typed(spec_cls, spec, "features", name)
        with named_options(feature_keys(name), path):  # the builders' own checks
            if kind == "feature":
                _, _, min_bb = feature_options(v.modality, v.conf_th, v.max_bb, v.min_bb)
                naming_options(min_bb, v.name_min, v.compress)
            elif kind == "speech":
                feature_options("speech", None, v.max_bb, v.min_bb)
                check_rate(v.rate, OPENSMILE_RATE)
            else:
                selection_options(v.conf_th, v.max_bb, v.min_bb)
                rawimg_options(v.size, v.mean, v.std)
        source = absolute(spec["source"], "features", name)
        if kind == "rawimg":
            source = prep_output_part(source, "faces")
        out["features"][name] = {**spec, "type": kind, "source": source}
    text = cfg.get("text")
    if text is not None:
        unknown(text, _keys(TextSpec), "text")
        v = typed(TextSpec, text, "text")
        with named_options(TEXT_KEYS, path):  # the builder's own checks
            text_options(v.max_len, v.long, v.min_faces, v.layout)
        t = dict(text)
        if ("source" in t) == ("sources" in t):
            raise BadInputError(f"{where('text')} needs either source (one file, optional "
                                "splits) or sources (one file per split)", file=path)
        if "source" in t:
            t["source"] = prep_output_part(absolute(t["source"], "text", "source"),
                                           "captions.json")
            if t.get("protocol") is not None:
                _protocol_keys(t, where, path, absolute)
            elif "label_map" in t:
                raise BadInputError(f"{where('text', 'label_map')} needs a protocol",
                                    file=path, fix="add \"protocol\" or drop label_map")
            if "folds" in t:
                raise BadInputError(f"{where('text', 'folds')} needs per-split sources",
                                    file=path, fix="use \"sources\": {\"train\": ..., ...}")
        else:
            if "protocol" in t or "label_map" in t:
                raise BadInputError(f"{where('text', 'protocol')} needs one source file of "
                                    "utterances, not per-split sources", file=path,
                                    fix="give \"source\": a JSON-lines file of id, text, label")
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
