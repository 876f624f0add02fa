"""The pre-training configuration: a JSON file, ``--key value`` overrides, checks at start-up.

A config is a JSON object; every key is optional except the corpora and the model. Defaults
(the published MEmoBERT pre-training recipe where one exists)::

    {
      "model": null,              # preset name ("base", "small", "tiny"), a ModelConfig dict,
                                  #   or {"preset": "tiny", <changes>}; null with init_checkpoint
      "init_checkpoint": null,    # a memo checkpoint (memo train convert-ckpt OUT); its config
                                  #   is the model's
      "data": {
        "corpora": [              # at least one
          {"txt_db": "...", "img_db": null, "speech_db": null, "val_txt_db": null,
           "tasks": {"mlm": 2, "mspanrfr": 1}, "name": null,
           "rawimg_db": null}     # raw face crops (memo db rawimg-db) instead of img_db: for
                                  #   face_backbone (faces: img_db or rawimg_db, not both)
        ],
        "max_text_len": 30,       # word pieces (without [CLS]/[SEP]); longer texts are dropped
        "max_faces": 36,          # faces kept per example (null: the feature db's max_bb)
        "max_speech": null,       # speech frames kept per example (null: the db's max_bb)
        "min_faces": 0,
        "batch_size": 32,         # examples per batch (null: no example limit)
        "max_tokens": null,       # token budget per batch: rows x longest example (null: none)
        "num_workers": 0          # DataLoader worker processes per task
      },
      "optim": {"lr": 5e-5, "betas": [0.9, 0.98], "weight_decay": 0.01,
                "warmup_steps": null,   # null: warmup_ratio x steps
                "warmup_ratio": 0.1, "grad_clip": 5.0, "grad_accum": 1},
      "steps": 1000,              # optimizer updates in all
      "seed": 0,
      "precision": "auto",        # auto (bf16 on CUDA with bf16, else fp16 + GradScaler on
                                  #   CUDA, fp32 on CPU) | fp32 | bf16 | fp16
      "device": "auto",           # auto (cuda if available) | cpu | cuda
      "log_every": 10, "val_every": 1000, "save_every": 1000,   # 0: never
      "output_dir": "runs/pretrain",
      "max_nonfinite": 20,        # consecutive non-finite steps (loss or gradients) before
                                  #   the run stops with a report
      "vnce_temperature": 0.07,   # InfoNCE temperature of the vnce task
      "face_backbone": null       # or an object: the face CNN trained with the model
    }

``face_backbone`` (TRAINER.md "Joint face backbone"; ``memotrain.train`` has the details)::

    {
      "checkpoint": null,         # face CNN checkpoint (memo train face-cnn) whose features.*
                                  #   weights start the CNN on a first start (the classifier
                                  #   is dropped; a resumed run never reads it); null: random
      "arch": {},                 # DenseNetBC settings without checkpoint (growth 12, blocks
                                  #   [16, 16, 16], init_features 24, compression 0.5, bn_size
                                  #   4, drop_rate 0, image_size 64); with one, its own
      "frozen_dense_blocks": 0,   # the stem and the first k blocks get no gradient, are in no
                                  #   optimizer and keep weights and batch-norm statistics
      "checkpoint_activations": false,   # recompute the dense layers in the backward pass
      "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 5e-4,   # the CNN's own AdamW
      "warmup_steps": null, "warmup_ratio": 0.1, "grad_clip": 5.0   # its schedule, clipping
    }

With it, the faces of every corpus come from ``rawimg_db`` (crops), the model's ``face_dim``
is the CNN's feature width (342 for the Denseface architecture) and the face tasks with fixed
targets (mrfr, mrckl, mspanrfr, mspanrckl) are refused: use vnce. ``init_checkpoint`` may be a
model without a face CNN (a converted BERT, a model pre-trained on features whose
``face_dim`` equals the CNN's width: its face projection is kept) or a joint model (then
``checkpoint`` and ``arch`` stay empty: the CNN comes with it).

A task's ratio is summed over the corpora that list it; the task of each accumulation cycle
is drawn with probability proportional to that sum.

Overrides use dotted keys and JSON values (a value that is not JSON is a string):
``--optim.lr 1e-4 --data.batch_size 8 --data.max_tokens null --data.corpora.0.txt_db PATH``.
Unknown keys and values of the wrong type raise :class:`TrainConfigError` naming the key.
Never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from memodb.errors import MemoError
from memotrain.config import FACE_BACKBONE_KEYS, ConfigError, ModelConfig, load_config, preset

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


class TrainConfigError(MemoError):
    """A training configuration is invalid: an unknown key, a wrong type, limits that do not
    fit the model or the data."""


@dataclass
class CorpusConfig:
    txt_db: str
    img_db: str | None = None
    speech_db: str | None = None
    val_txt_db: str | None = None  # validation texts (same feature dbs)
    tasks: dict[str, float] = field(default_factory=lambda: {"mlm": 1.0})
    name: str | None = None
    rawimg_db: str | None = None  # raw face crops for face_backbone, instead of img_db

    @property
    def face_db(self) -> str | None:
        return self.img_db if self.img_db is not None else self.rawimg_db


@dataclass
class DataConfig:
    corpora: list[CorpusConfig] = field(default_factory=list)
    max_text_len: int = 30
    max_faces: int | None = 36
    max_speech: int | None = None
    min_faces: int = 0
    batch_size: int | None = 32
    max_tokens: int | None = None
    num_workers: int = 0


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    grad_clip: float = 5.0  # <= 0: no clipping
    grad_accum: int = 1


@dataclass
class FaceBackboneConfig:
    checkpoint: str | None = None
    arch: dict = field(default_factory=dict)
    frozen_dense_blocks: int = 0
    checkpoint_activations: bool = False
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    grad_clip: float = 5.0  # <= 0: no clipping


@dataclass
class TrainConfig:
    model: str | dict | None = None
    init_checkpoint: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    log_every: int = 10
    val_every: int = 1000
    save_every: int = 1000
    output_dir: str = "runs/pretrain"
    max_nonfinite: int = 20
    vnce_temperature: float = 0.07
    face_backbone: FaceBackboneConfig | None = None

    # -- derived -----------------------------------------------------------------------------

    @property
    def warmup(self) -> int:
        o = self.optim
        return o.warmup_steps if o.warmup_steps is not None else round(o.warmup_ratio *
                                                                       self.steps)

    @property
    def cnn_warmup(self) -> int:
        """Warmup updates of the face CNN's own schedule (0 without a face backbone)."""
        fb = self.face_backbone
        if fb is None:
            return 0
        return fb.warmup_steps if fb.warmup_steps is not None else round(fb.warmup_ratio *
                                                                         self.steps)

    def task_ratios(self) -> dict[str, float]:
        """Task -> summed ratio over the corpora listing it (config order)."""
        out: dict[str, float] = {}
        for c in self.data.corpora:
            for t, r in c.tasks.items():
                out[t] = out.get(t, 0.0) + float(r)
        return out

    def model_config(self) -> ModelConfig:
        """The model's config: from ``init_checkpoint`` or ``model``; with ``face_backbone``,
        with the CNN's architecture and ``face_dim`` its feature width."""
        mc = base_model_config(self.model, self.init_checkpoint)
        fb = self.face_backbone
        if fb is None:
            if mc.face_backbone is not None:
                raise TrainConfigError(
                    "the model has a face CNN (face_backbone in its config) but the training "
                    "config has no face_backbone section (fix: add \"face_backbone\": {} and "
                    "give the corpora's crops as rawimg_db)")
            return mc
        if mc.face_backbone is not None:  # a joint model: its CNN comes with it
            if fb.checkpoint is not None or fb.arch:
                raise TrainConfigError(
                    "face_backbone: the model already holds a face CNN (init_checkpoint or "
                    "model has face_backbone); leave face_backbone.checkpoint null and "
                    "face_backbone.arch empty")
            return mc
        arch, width = self.face_arch()
        return mc.replace(face_backbone=arch, face_dim=width)

    def face_arch(self) -> tuple[dict, int]:
        """(architecture, feature width) of the face CNN: the face checkpoint's, or
        ``face_backbone.arch`` over the Denseface defaults."""
        from memotrain.checkpoint import read_face_checkpoint
        from memotrain.facecnn import DenseNetBC

        fb = self.face_backbone
        if fb.checkpoint is not None:
            given, where = read_face_checkpoint(fb.checkpoint)["config"], fb.checkpoint
        else:
            given, where = fb.arch, "face_backbone.arch"
        given = {k: v for k, v in given.items() if k != "n_classes"}
        try:
            if "blocks" in given:
                given["blocks"] = tuple(given["blocks"])
            cnn = DenseNetBC(**given, n_classes=0)
        except (TypeError, ConfigError) as exc:
            raise TrainConfigError(f"{where}: not a face CNN architecture ({exc})") from None
        return {k: cnn.config[k] for k in FACE_BACKBONE_KEYS}, cnn.feature_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path) -> Path:
        """Write the resolved config as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def base_model_config(model, init_checkpoint) -> ModelConfig:
    """The config of ``init_checkpoint`` (a memo checkpoint) or of ``model`` (a preset name, a
    config dict / file, or ``{"preset": name, <changes>}``)."""
    if init_checkpoint is not None:
        from memotrain.checkpoint import load_checkpoint
        return ModelConfig.from_dict(load_checkpoint(init_checkpoint)["config"])
    try:
        if isinstance(model, dict) and "preset" in model:
            changes = dict(model)
            return preset(changes.pop("preset"), **changes)
        return load_config(model)
    except ConfigError as exc:
        raise TrainConfigError(f"model: {exc}") from None


# ------------------------------------------------------------------------------ building

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, key: str):
    """``value`` checked against the annotation ``tp`` (and converted: lists to tuples,
    dicts to dataclasses, ints to floats); TrainConfigError naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(value, opt, key)
            except TrainConfigError as exc:
                errors.append(exc)
        if len(errors) == 1 and any(dataclasses.is_dataclass(o) for o in options):
            raise errors[0]  # an optional section: its own error names the key inside it
        names = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
        raise TrainConfigError(f"{key}: expected {names}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            args = typing.get_args(tp)
            if not args:
                return dict(value)
            return {_convert(k, args[0], f"{key}.{k}"): _convert(v, args[1], f"{key}.{k}")
                    for k, v in value.items()}
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (arg,) = typing.get_args(tp)
            return [_convert(v, arg, f"{key}.{i}") for i, v in enumerate(value)]
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_convert(v, a, f"{key}.{i}") for i, (v, a) in
                         enumerate(zip(value, args)))
        raise TrainConfigError(f"{key}: expected a list of {len(args)} "
                               f"{', '.join(_type_name(a) for a in args)}, got {value!r}")
    else:  # pragma: no cover (an annotation this function does not know)
        raise TypeError(tp)
    raise TrainConfigError(f"{key}: expected {_type_name(tp) if origin is None else 'a ' + _type_name(origin)}, "
                           f"got {value!r} ({type(value).__name__})")


def _build(cls, d, where: str):
    if not isinstance(d, dict):
        raise TrainConfigError(f"{where or 'config'}: expected a JSON object, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in hints]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise TrainConfigError(f"unknown config key {key!r} (known{' in ' + where if where else ''}: "
                               f"{', '.join(names)})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise TrainConfigError(f"{where or 'config'}: missing {', '.join(missing) or exc}") \
            from None


def parse_overrides(args) -> list[tuple[str, object]]:
    """``["--optim.lr", "1e-4", "--seed=3"]`` -> ``[("optim.lr", 1e-4), ("seed", 3)]``."""
    args, out, i = list(args), [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) < 3:
            raise TrainConfigError(f"override {a!r}: expected --key value (dotted keys, e.g. "
                                   "--optim.lr 1e-4)")
        if "=" in a:
            key, raw = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise TrainConfigError(f"override {a!r} has no value")
            key, raw = a[2:], args[i + 1]
            i += 2
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.append((key.replace("-", "_"), value))
    return out


def apply_override(d: dict, key: str, value) -> None:
    """Set the dotted ``key`` in the raw config dict ``d`` (creating objects on the way;
    integer parts index lists). Unknown keys are caught when the dict is built."""
    parts = key.split(".")
    node = d
    for depth, p in enumerate(parts[:-1]):
        where = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise TrainConfigError(f"override {key}: {where} is not an index of a list of "
                                       f"{len(node)}")
            node = node[int(p)]
        else:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        if not isinstance(node, (dict, list)):
            raise TrainConfigError(f"override {key}: {where} is not an object")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise TrainConfigError(f"override {key}: not an index of a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def read_config(cls, source, overrides=()):
    """A config dataclass ``cls`` from ``source`` (a JSON file path, a dict or a ``cls``
    instance) and ``overrides`` (``--key value`` strings or (dotted key, value) pairs), with
    unknown keys and wrong types refused (:class:`TrainConfigError` naming the key)."""
    if isinstance(source, cls):
        d = dataclasses.asdict(source)
    elif isinstance(source, dict):
        d = json.loads(json.dumps(source))  # a deep copy of JSON values
    else:
        try:
            d = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainConfigError(f"{source}: cannot read a JSON config ({exc})") from None
    pairs = list(overrides)
    if pairs and isinstance(pairs[0], str):
        pairs = parse_overrides(pairs)
    for key, value in pairs:
        apply_override(d, key, value)
    return _build(cls, d, "")


def load_train_config(source, overrides=()) -> TrainConfig:
    """``source``: a JSON file path, a dict or a TrainConfig; ``overrides``: ``--key value``
    strings or (dotted key, value) pairs. Returns a checked TrainConfig (see ``check``)."""
    cfg = read_config(TrainConfig, source, overrides)
    check(cfg)
    return cfg


def check(cfg: TrainConfig) -> None:
    """Checks that need no model nor data (``check_model`` does the model's)."""
    def need(ok, what):
        if not ok:
            raise TrainConfigError(what)

    d, o = cfg.data, cfg.optim
    need(d.corpora, "data.corpora: give at least one corpus ({\"txt_db\": ..., \"img_db\": "
                    "..., \"tasks\": {\"mlm\": 1}})")
    from memotrain.tasks import FACE_TASKS, TASKS
    for i, c in enumerate(d.corpora):
        need(c.tasks, f"data.corpora.{i}.tasks: give at least one task (one of: "
                      f"{', '.join(TASKS)})")
        for t, r in c.tasks.items():
            need(t in TASKS, f"data.corpora.{i}.tasks: unknown task {t!r} (one of: "
                             f"{', '.join(TASKS)})")
            need(r > 0, f"data.corpora.{i}.tasks.{t}: the ratio must be > 0, not {r}")
        need(c.img_db is None or c.rawimg_db is None,
             f"data.corpora.{i}: give img_db (face features) or rawimg_db (raw crops for "
             "face_backbone), not both")
        if cfg.face_backbone is None:
            need(c.rawimg_db is None,
                 f"data.corpora.{i}.rawimg_db: raw crops need a face CNN to encode them (fix: "
                 "add a face_backbone section, or give extracted features as img_db)")
        else:
            need(c.img_db is None,
                 f"data.corpora.{i}.img_db: with face_backbone the faces are raw crops that "
                 "the CNN encodes (fix: give the corpus's memo db rawimg-db output as "
                 "rawimg_db)")
            fixed = [t for t in c.tasks if t in FACE_TASKS]
            need(not fixed,
                 f"data.corpora.{i}.tasks: {', '.join(fixed)} regress(es) stored face features "
                 "or soft labels, which a face CNN trained with the model no longer produces "
                 "(fix: use vnce, the visual NCE task)")
        for t in c.tasks:
            need(t not in (*FACE_TASKS, "vnce") or c.face_db is not None,
                 f"data.corpora.{i}.tasks.{t} masks faces, but the corpus has no img_db "
                 "(or rawimg_db)")
    fb = cfg.face_backbone
    if fb is not None:
        need(any(c.rawimg_db for c in d.corpora),
             "face_backbone: no corpus has a rawimg_db, so the face CNN would never see a "
             "face (fix: give the raw-crop databases as data.corpora.N.rawimg_db)")
        unknown = sorted(set(fb.arch) - set(FACE_BACKBONE_KEYS))
        need(not unknown, f"face_backbone.arch: unknown key(s) {', '.join(unknown)} (known: "
                          f"{', '.join(FACE_BACKBONE_KEYS)})")
        need(fb.checkpoint is None or not fb.arch,
             "face_backbone: give checkpoint (its architecture is used) or arch, not both")
        need(fb.frozen_dense_blocks >= 0, f"face_backbone.frozen_dense_blocks must be >= 0, "
                                          f"not {fb.frozen_dense_blocks}")
        need(fb.lr > 0, f"face_backbone.lr must be > 0, not {fb.lr}")
        need(all(0 <= b < 1 for b in fb.betas),
             f"face_backbone.betas must be in [0, 1), not {fb.betas}")
        need(fb.weight_decay >= 0,
             f"face_backbone.weight_decay must be >= 0, not {fb.weight_decay}")
        need(fb.warmup_steps is None or fb.warmup_steps >= 0,
             f"face_backbone.warmup_steps must be >= 0, not {fb.warmup_steps}")
        need(0 <= fb.warmup_ratio <= 1,
             f"face_backbone.warmup_ratio must be in [0, 1], not {fb.warmup_ratio}")
    need(cfg.vnce_temperature > 0, f"vnce_temperature must be > 0, not {cfg.vnce_temperature}")
    need(d.max_text_len >= 1, f"data.max_text_len must be >= 1, not {d.max_text_len}")
    for name in ("max_faces", "max_speech"):
        v = getattr(d, name)
        need(v is None or v >= 0, f"data.{name} must be >= 0 or null, not {v}")
    need(d.batch_size is not None or d.max_tokens is not None,
         "data: give batch_size (examples per batch), max_tokens (token budget per batch) "
         "or both")
    need(d.batch_size is None or d.batch_size >= 1,
         f"data.batch_size (examples per batch) must be >= 1, not {d.batch_size}")
    need(d.max_tokens is None or d.max_tokens >= 1,
         f"data.max_tokens (token budget per batch) must be >= 1, not {d.max_tokens}")
    need(d.num_workers >= 0, f"data.num_workers must be >= 0, not {d.num_workers}")
    need(o.lr > 0, f"optim.lr must be > 0, not {o.lr}")
    need(all(0 <= b < 1 for b in o.betas), f"optim.betas must be in [0, 1), not {o.betas}")
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, not {o.weight_decay}")
    need(o.warmup_steps is None or o.warmup_steps >= 0,
         f"optim.warmup_steps must be >= 0, not {o.warmup_steps}")
    need(0 <= o.warmup_ratio <= 1, f"optim.warmup_ratio must be in [0, 1], not {o.warmup_ratio}")
    need(o.grad_accum >= 1, f"optim.grad_accum must be >= 1, not {o.grad_accum}")
    need(cfg.steps >= 1, f"steps must be >= 1, not {cfg.steps}")
    need(cfg.warmup <= cfg.steps, f"warmup {cfg.warmup} is longer than steps {cfg.steps}")
    need(cfg.cnn_warmup <= cfg.steps,
         f"face_backbone warmup {cfg.cnn_warmup} is longer than steps {cfg.steps}")
    need(cfg.precision in PRECISIONS, f"precision {cfg.precision!r} is not one of "
                                      f"{', '.join(PRECISIONS)}")
    need(cfg.device in DEVICES, f"device {cfg.device!r} is not one of {', '.join(DEVICES)}")
    for name in ("log_every", "val_every", "save_every"):
        need(getattr(cfg, name) >= 0, f"{name} must be >= 0 (0: never)")
    need(cfg.max_nonfinite >= 1, f"max_nonfinite must be >= 1, not {cfg.max_nonfinite}")
    need((cfg.model is None) != (cfg.init_checkpoint is None),
         "give model (a preset name or a model config) or init_checkpoint (a memo "
         "checkpoint), exactly one" + (", not both" if cfg.model is not None else ""))


def check_model(cfg: TrainConfig, mc: ModelConfig) -> None:
    """The data limits fit the model's position tables and modalities."""
    d = cfg.data
    if d.max_text_len + 2 > mc.max_text_positions:
        raise TrainConfigError(
            f"data.max_text_len {d.max_text_len} + [CLS]/[SEP] = {d.max_text_len + 2} > the "
            f"model's max_text_positions {mc.max_text_positions}; lower data.max_text_len")
    fb = cfg.face_backbone
    if fb is not None:
        blocks = len(mc.face_backbone["blocks"])
        if fb.frozen_dense_blocks > blocks:
            raise TrainConfigError(
                f"face_backbone.frozen_dense_blocks {fb.frozen_dense_blocks} > the face CNN's "
                f"{blocks} dense blocks ({blocks}: the whole CNN frozen)")
    if any(c.face_db for c in d.corpora):
        if not mc.face_dim:
            raise TrainConfigError("a corpus has an img_db but the model has no faces "
                                   "(face_dim 0)")
        if d.max_faces is None:
            raise TrainConfigError(f"data.max_faces is null; set it (<= the model's "
                                   f"max_face_positions {mc.max_face_positions})")
        if d.max_faces > mc.max_face_positions:
            raise TrainConfigError(
                f"data.max_faces {d.max_faces} > the model's max_face_positions "
                f"{mc.max_face_positions}; lower data.max_faces")
    if any(c.speech_db for c in d.corpora):
        if not mc.speech_dim:
            raise TrainConfigError("a corpus has a speech_db but the model has no speech "
                                   "(speech_dim 0)")
        if d.max_speech is None or d.max_speech > mc.max_speech_positions:
            raise TrainConfigError(
                f"data.max_speech {d.max_speech} must be set and <= the model's "
                f"max_speech_positions {mc.max_speech_positions}")
