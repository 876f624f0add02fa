"""The pre-training configuration (``memo train pretrain``): strict dataclasses whose fields
carry their defaults and descriptions, ``--key value`` overrides (memodb.config), and the
checks that relate several keys. ``memo train pretrain --print-config`` shows the resolved
config; docs/TRAINER.md describes the recipe. Never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pydantic import Field
from pydantic.dataclasses import dataclass

from memodb.config import STRICT, parse_overrides, read_config, to_json
from memodb.errors import MemoError
from memodb.store.manifest import write_json_atomic
from memotrain.config import FACE_BACKBONE_KEYS, ConfigError, ModelConfig, load_config, preset

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
__all__ = ["TrainConfig", "TrainConfigError", "load_train_config", "parse_overrides"]


class TrainConfigError(MemoError):
    """A training configuration is invalid: an unknown key, a wrong type, limits that do not
    fit the model or the data."""


@dataclass(config=STRICT)
class CorpusConfig:
    txt_db: str = Field(description="text database (memo db create-txtdb)")
    img_db: str | None = Field(None, description="face feature database")
    speech_db: str | None = Field(None, description="speech feature database")
    val_txt_db: str | None = Field(None, description="validation texts (same feature dbs)")
    tasks: dict[str, float] = Field(default_factory=lambda: {"mlm": 1.0},
                                    description="task -> ratio, e.g. {\"mlm\": 2, "
                                                "\"mspanrfr\": 1}")
    name: str | None = Field(None, description="name in logs (default: corpus index)")
    rawimg_db: str | None = Field(
        None, description="raw face crops (memo db rawimg-db) instead of img_db, for "
                          "face_backbone; faces come from img_db or rawimg_db, not both")

    @property
    def face_db(self) -> str | None:
        return self.img_db if self.img_db is not None else self.rawimg_db


@dataclass(config=STRICT)
class DataConfig:
    corpora: list[CorpusConfig] = Field(default_factory=list, description="at least one")
    max_text_len: int = Field(30, description="word pieces without [CLS]/[SEP]; longer texts "
                                              "are dropped")
    max_faces: int | None = Field(36, description="faces kept per example (null: the feature "
                                                  "db's max_bb)")
    max_speech: int | None = Field(None, description="speech frames kept per example (null: "
                                                     "the db's max_bb)")
    min_faces: int = Field(0, description="examples with fewer kept faces are dropped")
    batch_size: int | None = Field(32, description="examples per batch (null: no limit)")
    max_tokens: int | None = Field(None, description="token budget per batch: rows x longest "
                                                     "example (null: none)")
    num_workers: int = Field(0, description="DataLoader worker processes per task")


@dataclass(config=STRICT)
class OptimConfig:
    lr: float = Field(5e-5, description="peak learning rate (AdamW)")
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = Field(0.01, description="not applied to biases and norms")
    warmup_steps: int | None = Field(None, description="null: warmup_ratio x steps")
    warmup_ratio: float = Field(0.1, description="linear warmup, then linear decay to 0")
    grad_clip: float = Field(5.0, description="global gradient norm; <= 0: no clipping")
    grad_accum: int = Field(1, description="batches per optimizer update")


@dataclass(config=STRICT)
class FaceBackboneConfig:
    """The face CNN trained with the model (faces from rawimg_db; face_dim = its width)."""
    checkpoint: str | None = Field(
        None, description="face CNN checkpoint (memo train face-cnn) whose features.* start "
                          "the CNN on a first start; null: random weights")
    arch: dict = Field(default_factory=dict,
                       description="DenseNetBC settings without checkpoint (growth 12, blocks "
                                   "[16, 16, 16], init_features 24, compression 0.5, bn_size "
                                   "4, drop_rate 0, image_size 64)")
    frozen_dense_blocks: int = Field(0, description="the stem and the first k blocks get no "
                                                    "gradient and keep their statistics")
    checkpoint_activations: bool = Field(False, description="recompute the dense layers in "
                                                            "the backward pass")
    lr: float = Field(1e-3, description="the CNN's own AdamW")
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    warmup_steps: int | None = Field(None, description="null: warmup_ratio x steps")
    warmup_ratio: float = 0.1
    grad_clip: float = Field(5.0, description="<= 0: no clipping")


@dataclass(config=STRICT)
class TrainConfig:
    """A pre-training run. Give ``model`` or ``init_checkpoint``, and the corpora."""
    model: str | dict | None = Field(
        None, description="preset (base, small, tiny), a model config, or {\"preset\": "
                          "\"tiny\", <changes>}; null with init_checkpoint")
    init_checkpoint: str | None = Field(None, description="a memo checkpoint (memo train "
                                                          "convert-ckpt); its config is the "
                                                          "model's")
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    steps: int = Field(1000, description="optimizer updates in all")
    seed: int = 0
    precision: str = Field("auto", description="auto (bf16 on CUDA with bf16, else fp16 + "
                                               "GradScaler on CUDA, fp32 on CPU) | fp32 | "
                                               "bf16 | fp16")
    device: str = Field("auto", description="auto (cuda if available) | cpu | cuda")
    log_every: int = Field(10, description="updates between log lines; 0: never")
    val_every: int = Field(1000, description="updates between validations; 0: never")
    save_every: int = Field(1000, description="updates between checkpoints; 0: only the end")
    output_dir: str = "runs/pretrain"
    max_nonfinite: int = Field(20, description="consecutive non-finite steps before the run "
                                               "stops with a report")
    vnce_temperature: float = Field(0.07, description="InfoNCE temperature of the vnce task")
    face_backbone: FaceBackboneConfig | None = Field(None, description="a face CNN trained "
                                                                       "with the model")

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
        write_json_atomic(path, json.dumps(to_json(self), indent=2) + "\n")
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


def load_train_config(source, overrides=()) -> TrainConfig:
    """``source``: a JSON file path, a dict or a TrainConfig; ``overrides``: ``--key value``
    strings or (dotted key, value) pairs. Returns a checked TrainConfig (see ``check``)."""
    cfg = read_config(TrainConfig, source, overrides, error=TrainConfigError)
    check(cfg)
    return cfg


def check_optim(o: OptimConfig) -> None:
    """The ``optim`` section (pre-training and fine-tuning share it)."""
    def need(ok, what):
        if not ok:
            raise TrainConfigError(what)

    need(o.lr > 0, f"optim.lr must be > 0, not {o.lr}")
    need(all(0 <= b < 1 for b in o.betas), f"optim.betas must be in [0, 1), not {o.betas}")
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, not {o.weight_decay}")
    need(o.warmup_steps is None or o.warmup_steps >= 0,
         f"optim.warmup_steps must be >= 0, not {o.warmup_steps}")
    need(0 <= o.warmup_ratio <= 1, f"optim.warmup_ratio must be in [0, 1], not {o.warmup_ratio}")
    need(o.grad_accum >= 1, f"optim.grad_accum must be >= 1, not {o.grad_accum}")


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
    check_optim(o)
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
