"""The fine-tuning configuration (``memo train finetune``): strict dataclasses whose fields
carry their defaults and descriptions, ``--key value`` overrides, and the checks that relate
several keys. Validation, test and training text dbs must be three different databases in
every fold: a config that selects on the test split is refused. Never imports torch.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pydantic import Field
from pydantic.dataclasses import dataclass

from memodb.config import STRICT, read_config
from memotrain.config import ModelConfig
from memotrain.trainconfig import (DEVICES, PRECISIONS, OptimConfig, TrainConfigError,
                                   base_model_config, check_optim)

HEADS = ("emocls", "vqa", "prompt")
MODALITIES = ("text", "faces", "speech")
METRICS = ("UA", "WA", "WF1", "F1")
SPLITS = ("train", "val", "test")


PATHS = "a path ({fold} placeholder) or a list with one path per fold"


@dataclass(config=STRICT)
class FinetuneData:
    train: str | list[str] = Field(description="training text dbs: " + PATHS)
    val: str | list[str] = Field(description="validation text dbs (model selection): " + PATHS)
    test: str | list[str] | None = Field(None, description="test text dbs, read once after "
                                                           "selection; null: no test")
    img_db: str | list[str] | None = Field(None, description="face feature db(s)")
    speech_db: str | list[str] | None = Field(None, description="speech feature db(s)")
    max_text_len: int | None = Field(None, description="null: what the model's position "
                                                       "table allows")
    max_faces: int | None = Field(None, description="null: the db's max_bb, capped by the "
                                                    "model")
    max_speech: int | None = None
    batch_size: int | None = Field(64, description="examples per batch")
    max_tokens: int | None = Field(None, description="token budget per batch (null: none)")
    num_workers: int = Field(0, description="DataLoader worker processes")


@dataclass(config=STRICT)
class PromptConfig:
    template: str = Field("{text} i am [MASK] .", description="[MASK] exactly once")
    label_words: list[str] | None = Field(None, description="one word per class (default: "
                                                            "the class names)")
    vocab: str | None = Field(None, description="the text dbs' vocabulary (default: as "
                                                "their manifest says)")


@dataclass(config=STRICT)
class SelectConfig:
    metric: str = Field("UA", description="UA | WA | WF1 | F1 on val (WF1 for MELD)")
    patience: int = Field(3, description="evaluations without improvement before stopping "
                                         "(0: never stop early)")
    every: int | None = Field(None, description="updates between evaluations (null: each "
                                                "epoch)")


@dataclass(config=STRICT)
class FinetuneConfig:
    """A fine-tuning run over folds x seeds. Give ``init_checkpoint`` or ``model``."""
    data: FinetuneData
    init_checkpoint: str | None = Field(None, description="a memo checkpoint to start from")
    model: str | dict | None = Field(None, description="or a preset / model config: start "
                                                       "from random weights")
    head: str = Field("emocls", description="emocls: Dropout, Linear on the pooled [CLS]; "
                                            "vqa: Linear(h, 2h), GELU, LayerNorm, Linear(2h, "
                                            "C); prompt: the MLM head over label words")
    labels: list[str] | None = Field(None, description="class names (null: the text db "
                                                       "manifest's)")
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    modalities: list[str] | None = Field(None, description="trained and selected with: a "
                                                           "subset of text, faces, speech "
                                                           "(null: all the data gives)")
    eval_modalities: list[list[str]] = Field(default_factory=list,
                                             description="more evaluations of the selected "
                                                         "model, e.g. [[\"text\"]]")
    class_weights: str | list[float] | None = Field(None, description="null | \"balanced\" "
                                                                      "| one per class")
    folds: list[int | str] | None = Field(None, description="e.g. [1, 2, 3, 4, 5] (needed "
                                                            "by {fold} and lists)")
    seeds: list[int] = Field(default_factory=lambda: [0])
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: int = 10
    select: SelectConfig = Field(default_factory=SelectConfig)
    precision: str = Field("auto", description="auto | fp32 | bf16 | fp16")
    device: str = Field("auto", description="auto | cpu | cuda")
    log_every: int = 10
    output_dir: str = "runs/finetune"
    max_nonfinite: int = 20

    # -- derived -----------------------------------------------------------------------------

    def model_config(self) -> ModelConfig:
        return base_model_config(self.model, self.init_checkpoint)

    def fold_names(self) -> list:
        """The folds to run (``[None]``: one run without folds)."""
        return list(self.folds) if self.folds else [None]

    def paths(self, fold) -> dict:
        """``train`` / ``val`` / ``test`` / ``img_db`` / ``speech_db`` of ``fold`` (None when
        not given): ``{fold}`` filled in, or the fold's entry of a list."""
        out = {}
        position = None if fold is None else self.fold_names().index(fold)
        for key in (*SPLITS, "img_db", "speech_db"):
            value = getattr(self.data, key)
            if isinstance(value, list):
                value = value[position]
            elif value is not None and fold is not None:
                value = value.replace("{fold}", str(fold))
            out[key] = value
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_finetune_config(source, overrides=()) -> FinetuneConfig:
    """A checked :class:`FinetuneConfig` from a JSON file, a dict or a config, plus
    ``--key value`` overrides (``--folds [1,2] --seeds [0,1,2] --optim.lr 3e-5``)."""
    cfg = read_config(FinetuneConfig, source, overrides, error=TrainConfigError)
    check(cfg)
    return cfg


def check(cfg: FinetuneConfig) -> None:
    """Everything that needs neither the model nor the data."""
    def need(ok, what):
        if not ok:
            raise TrainConfigError(what)

    d, o, s = cfg.data, cfg.optim, cfg.select
    need((cfg.model is None) != (cfg.init_checkpoint is None),
         "give init_checkpoint (a memo checkpoint: pre-trained, or a BERT converted with "
         "`memo train convert-ckpt`) or model (random weights), exactly one")
    need(cfg.head in HEADS, f"head {cfg.head!r} is not one of {', '.join(HEADS)}")
    for i, mods in enumerate([cfg.modalities or list(MODALITIES), *cfg.eval_modalities]):
        where = "modalities" if i == 0 else f"eval_modalities.{i - 1}"
        need(mods, f"{where}: give at least one of {', '.join(MODALITIES)}")
        bad = [m for m in mods if m not in MODALITIES]
        need(not bad, f"{where}: unknown modality {bad[:1]} (one of {', '.join(MODALITIES)})")
        need(len(set(mods)) == len(mods), f"{where}: {mods} names a modality twice")
    if cfg.modalities:
        need("faces" not in cfg.modalities or d.img_db,
             "modalities has faces but data.img_db is null")
        need("speech" not in cfg.modalities or d.speech_db,
             "modalities has speech but data.speech_db is null")
    for i, mods in enumerate(cfg.eval_modalities):
        extra = sorted(set(mods) - set(cfg.modalities or MODALITIES))
        need(not extra, f"eval_modalities.{i}: {extra} is not among the modalities the model "
                        f"is trained with ({cfg.modalities})")
    cw = cfg.class_weights
    need(cw is None or cw == "balanced" or (isinstance(cw, list) and all(w >= 0 for w in cw)),
         f"class_weights must be null, \"balanced\" or a list of weights >= 0, not {cw!r}")
    if cfg.head == "prompt":
        need(cfg.prompt.template.count("[MASK]") == 1,
             f"prompt.template {cfg.prompt.template!r} must hold [MASK] exactly once")
        need(cfg.prompt.template.count("{text}") <= 1,
             f"prompt.template {cfg.prompt.template!r} holds {{text}} more than once")
    need(cfg.seeds, "seeds: give at least one seed")
    need(len(set(cfg.seeds)) == len(cfg.seeds), f"seeds {cfg.seeds} repeat a seed")
    if cfg.folds is not None:
        need(cfg.folds, "folds: give at least one fold, or null")
        need(len({str(f) for f in cfg.folds}) == len(cfg.folds),
             f"folds {cfg.folds} repeat a fold")
    n_folds = len(cfg.fold_names())
    for key in (*SPLITS, "img_db", "speech_db"):
        value = getattr(d, key)
        if isinstance(value, list):
            need(cfg.folds, f"data.{key} is a list (one path per fold) but folds is null")
            need(len(value) == n_folds, f"data.{key} has {len(value)} paths for "
                                        f"{n_folds} folds")
        elif isinstance(value, str):
            need("{fold}" not in value or cfg.folds,
                 f"data.{key} {value!r} has a {{fold}} placeholder but folds is null; give "
                 "--folds [1,2,...]")
    for fold in cfg.fold_names():
        p = cfg.paths(fold)
        named = {k: os.path.realpath(p[k]) for k in SPLITS if p[k]}
        for a, b in (("val", "test"), ("train", "test"), ("train", "val")):
            if a in named and b in named:
                need(named[a] != named[b],
                     f"data.{a} and data.{b} are the same database ({p[a]})"
                     + (f" in fold {fold}" if fold is not None else "")
                     + ("; model selection must never read the test split: give a separate "
                        "validation db" if "test" in (a, b) else ""))
    for name in ("max_text_len", "max_faces", "max_speech"):
        v = getattr(d, name)
        need(v is None or v >= (1 if name == "max_text_len" else 0),
             f"data.{name} must be >= {1 if name == 'max_text_len' else 0} or null, not {v}")
    need(d.batch_size is not None or d.max_tokens is not None,
         "data: give batch_size (examples per batch), max_tokens (token budget) or both")
    need(d.batch_size is None or d.batch_size >= 1, "data.batch_size must be >= 1")
    need(d.max_tokens is None or d.max_tokens >= 1, "data.max_tokens must be >= 1")
    need(d.num_workers >= 0, f"data.num_workers must be >= 0, not {d.num_workers}")
    check_optim(o)
    need(cfg.epochs >= 1, f"epochs must be >= 1, not {cfg.epochs}")
    need(s.metric in METRICS, f"select.metric {s.metric!r} is not one of {', '.join(METRICS)}")
    need(s.patience >= 0, "select.patience must be >= 0 (0: no early stopping)")
    need(s.every is None or s.every >= 1, "select.every must be >= 1 or null (each epoch)")
    need(cfg.precision in PRECISIONS, f"precision {cfg.precision!r} is not one of "
                                      f"{', '.join(PRECISIONS)}")
    need(cfg.device in DEVICES, f"device {cfg.device!r} is not one of {', '.join(DEVICES)}")
    need(cfg.log_every >= 0, "log_every must be >= 0 (0: never)")
    need(cfg.max_nonfinite >= 1, "max_nonfinite must be >= 1")


def run_name(fold, seed: int) -> str:
    """A run's folder inside ``output_dir``: ``fold<f>/seed<s>`` (``seed<s>`` without folds)."""
    return f"seed{seed}" if fold is None else f"fold{fold}/seed{seed}"


def same_database(a, b) -> bool:
    """Two text dbs are the same data: one path, or equal manifest checksums."""
    import json
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    sums = []
    for p in (a, b):
        try:
            sums.append(json.loads((Path(p) / "manifest.json").read_text())["checksum"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return sums[0] == sums[1]
