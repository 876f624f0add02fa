"""Original MEmoBERT / UNITER checkpoints <-> memo checkpoints (``memo train convert-ckpt``,
``memo train export-ckpt``).

An original checkpoint is a bare state dict (``ckpt/model_step_N.pt``): the model under
``uniter.``, its heads beside it (``cls.predictions``, ``itm_output``, ``feat_regress``,
``region_classifier``, ``speech_feat_regress``) or, fine-tuned, a classifier ``output.*``. One key
table (:data:`RENAMES`, :data:`RESHAPED`, :data:`TIED`) serves both directions; the computation
is the same (docs/TRAINER.md "Original checkpoints"). Imported models get
``empty_face_frame`` (the original's input for a segment without a face).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memodb.errors import OutputExistsError
from memodb.store.files import atomic_write, file_sha256
from memotrain.checkpoint import CheckpointError, atomic_save, load_checkpoint, save_checkpoint
from memotrain.classifier import Classifier
from memotrain.config import ConfigError, ModelConfig, load_config
from memotrain.convert import Conversion, convert_bert, read_state_dict
from memotrain.model import MemoBert
from memotrain.tasks import Pretrainer

PREFIX = "uniter."
FORMATS = ("uniter", "uniter3m")  # without / with speech
LAYER_NORM_EPS = 1e-12  # the original's LayerNorms (fixed in its code)
HEAD = "head:"  # memo side of a fine-tuned classifier key: Classifier.head's own names
HEADS = "heads:"  # memo side of a pre-training head key: Pretrainer.head_state() names

# original prefix -> memo prefix (model keys; HEADS / HEAD: the heads), both directions
RENAMES = (
    ("uniter.embeddings.", "embeddings."),
    ("uniter.img_embeddings.img_linear.", "face_embeddings.projection."),
    ("uniter.img_embeddings.img_layer_norm.", "face_embeddings.projection_norm."),
    ("uniter.img_embeddings.position_embeddings.", "face_embeddings.position_embeddings."),
    ("uniter.img_embeddings.LayerNorm.", "face_embeddings.LayerNorm."),
    ("uniter.speech_embeddings.speech_linear.", "speech_embeddings.projection."),
    ("uniter.speech_embeddings.speech_layer_norm.", "speech_embeddings.projection_norm."),
    ("uniter.speech_embeddings.position_embeddings.", "speech_embeddings.position_embeddings."),
    ("uniter.speech_embeddings.LayerNorm.", "speech_embeddings.LayerNorm."),
    ("uniter.encoder.", "encoder."),
    ("uniter.pooler.", "pooler."),
    ("cls.predictions.transform.", "mlm.transform."),
    ("cls.predictions.bias", "mlm.bias"),
    ("itm_output.", HEADS + "itm_head."),
    ("feat_regress.net.0.", HEADS + "mrfr_head.transform.0."),
    ("feat_regress.net.2.", HEADS + "mrfr_head.transform.2."),
    ("feat_regress.bias", HEADS + "mrfr_head.bias"),
    ("region_classifier.net.0.", HEADS + "mrckl_head.transform.0."),
    ("region_classifier.net.2.", HEADS + "mrckl_head.transform.2."),
    ("region_classifier.net.3.", HEADS + "mrckl_head.out."),
    ("speech_feat_regress.net.0.", HEADS + "msrfr_head.transform.0."),
    ("speech_feat_regress.net.2.", HEADS + "msrfr_head.transform.2."),
    ("speech_feat_regress.bias", HEADS + "msrfr_head.bias"),
    ("output.", HEAD),
)
# original key -> memo key of another shape: mask embeddings (2, dim) -> row 1 (row 0 is
# zeroed on every forward of the original), the speech type vector (1, H) -> (H,)
RESHAPED = {
    "uniter.img_embeddings.mask_embedding.weight": ("face_embeddings.mask_embedding", 2),
    "uniter.speech_embeddings.mask_embedding.weight": ("speech_embeddings.mask_embedding", 2),
    "uniter.speech_embeddings.token_type_embeddings.weight": (
        "speech_embeddings.type_embedding", 1),
}
# original key -> the memo tensor it is tied to (one tensor in both models)
TIED = {
    "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
    "feat_regress.weight": "face_embeddings.projection.weight",
    "speech_feat_regress.weight": "speech_embeddings.projection.weight",
}
HEAD_TASKS = {"itm_head": "itm", "mrfr_head": "mrfr", "mrckl_head": "mrckl",
              "msrfr_head": "msrfr"}
CONFIG_FILES = ("{stem}.json", "config.json", "../log/model.json")  # beside the weights
# UniterConfig names -> memo's (sizes are read from the shapes and checked against these)
SETTINGS = {"num_attention_heads": "heads", "hidden_act": "hidden_act",
            "hidden_dropout_prob": "dropout", "attention_probs_dropout_prob": "attention_dropout",
            "initializer_range": "initializer_range"}
SIZES = {"vocab_size": "vocab_size", "hidden_size": "hidden", "num_hidden_layers": "layers",
         "intermediate_size": "intermediate", "max_position_embeddings": "max_text_positions",
         "type_vocab_size": "type_vocab_size", "img_dim": "face_dim", "speech_dim": "speech_dim",
         "melm_type_emo_size": "emo_type_size"}


def is_original(sd: dict) -> bool:
    """Whether a state dict is an original MEmoBERT / UNITER checkpoint (``uniter.`` keys)."""
    return any(k.startswith(PREFIX) for k in sd)


def to_memo_key(key: str) -> str | None:
    """Original key -> memo key (``heads:``/``head:`` for heads); None: no counterpart."""
    for theirs, ours in RENAMES:
        if key.startswith(theirs) and key != "uniter.embeddings.position_ids":
            return ours + key[len(theirs):]
    return None


def to_original_key(key: str) -> str | None:
    for theirs, ours in RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return None


# ----------------------------------------------------------------------------- import

def original_config(sd: dict, settings: dict | None = None, where: str = "checkpoint"
                    ) -> ModelConfig:
    """The memo config of an original state dict: sizes from the shapes, the rest (heads,
    activation, dropouts) from ``settings`` (a UniterConfig dict) or BERT's defaults (heads:
    hidden / 64). Sizes in ``settings`` must agree with the shapes."""
    def shape(key, i):
        return int(sd[key].shape[i]) if key in sd else 0

    emb = PREFIX + "embeddings."
    if emb + "word_embeddings.weight" not in sd:
        raise CheckpointError(f"{where}: no {emb}word_embeddings.weight: not a whole original "
                              "checkpoint")
    hidden = shape(emb + "word_embeddings.weight", 1)
    layer = re.compile(r"uniter\.encoder\.layer\.(\d+)\.")
    layers = [int(m.group(1)) for m in map(layer.match, sd) if m]
    d = {"vocab_size": shape(emb + "word_embeddings.weight", 0), "hidden": hidden,
         "layers": max(layers) + 1 if layers else 0,
         "intermediate": shape(PREFIX + "encoder.layer.0.intermediate.dense.weight", 0),
         "max_text_positions": shape(emb + "position_embeddings.weight", 0),
         "type_vocab_size": shape(emb + "token_type_embeddings.weight", 0),
         "face_dim": shape(PREFIX + "img_embeddings.img_linear.weight", 1),
         "speech_dim": shape(PREFIX + "speech_embeddings.speech_linear.weight", 1),
         "emo_type_size": shape(emb + "emo_type_embeddings.weight", 0),
         "layer_norm_eps": LAYER_NORM_EPS, "heads": max(1, hidden // 64)}
    for m, key in (("face", "img_embeddings"), ("speech", "speech_embeddings")):
        if d[f"{m}_dim"]:
            d[f"max_{m}_positions"] = shape(f"{PREFIX}{key}.position_embeddings.weight", 0)
    if "region_classifier.net.3.weight" in sd:
        d["n_soft_labels"] = shape("region_classifier.net.3.weight", 0)
    d["empty_face_frame"] = bool(d["face_dim"])
    settings = settings or {}
    for theirs, ours in SIZES.items():
        if settings.get(theirs) is not None and ours in d and settings[theirs] != d[ours]:
            raise ConfigError(f"{where}: the config says {theirs} {settings[theirs]}, the "
                              f"weights have {d[ours]} (fix: pass the --config of this "
                              "checkpoint)")
    d.update({ours: settings[theirs] for theirs, ours in SETTINGS.items() if theirs in settings})
    try:
        return ModelConfig.from_dict(d)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _settings(src: Path, config) -> tuple[dict | None, str]:
    """The UniterConfig settings: ``config`` (a file, a preset or a ModelConfig) or a config
    JSON beside ``src`` (:data:`CONFIG_FILES`), and where they came from."""
    if config is not None:
        if isinstance(config, (str, Path)) and Path(config).is_file():
            try:
                d = json.loads(Path(config).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{config}: cannot read a JSON config ({exc})") from None
            if isinstance(d, dict) and "hidden_size" in d:
                return d, str(config)
        return uniter_config(load_config(config)), str(config)
    for name in CONFIG_FILES:
        path = src.parent / name.format(stem=src.stem)
        if path.is_file():
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                d = exc
            if not isinstance(d, dict):
                raise ConfigError(f"{path}: not a model config JSON object ({d}) (fix: repair "
                                  "it or pass --config)")
            return d, str(path.resolve())
    return None, "shapes"


def convert_original(src, out=None, config=None, seed: int = 0, overwrite: bool = False,
                     labels=None) -> Conversion:
    """Convert the original checkpoint file ``src`` into a memo checkpoint at ``out``: the
    model (``empty_face_frame`` on), the pre-training heads under ``"heads"`` (restored by
    ``init_checkpoint``), or a fine-tuned ``output`` head as a ``"finetune"`` record
    (``labels``: its class names, default ``0 .. C-1``). Keys without a counterpart are
    listed in ``source["unexpected"]``."""
    src = Path(src)
    if out is not None and Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists (fix: remove it or pass --force)")
    sd, _ = read_state_dict(src)
    if not is_original(sd):
        raise CheckpointError(f"{src}: no '{PREFIX}' key: not an original MEmoBERT / UNITER "
                              "checkpoint")
    settings, config_from = _settings(src, config)
    cfg = original_config(sd, settings, str(src))
    model, conv, heads, head = _fill(sd, cfg, seed, str(src))
    conv.source = {"path": str(src.resolve()), "sha256": file_sha256(src),
                   "format": FORMATS[bool(cfg.speech_dim)], "config": config_from,
                   **conv.source}
    extra = {"heads": heads} if heads else {}
    if head:
        kind, n, state = head
        names = list(labels) if labels else [str(i) for i in range(n)]
        if len(names) != n:
            raise ConfigError(f"{src}: the fine-tuned head has {n} classes, {len(names)} "
                              f"label names were given")
        extra["finetune"] = {"head": kind, "labels": names, "head_state": state,
                             "label_ids": None, "prompt": None, "step": None, "metric": None,
                             "val": None}
        conv.source["head"] = kind
    elif labels:
        raise ConfigError(f"{src}: --labels names the classes of a fine-tuned head, and this "
                          "checkpoint has none")
    if out is not None:
        conv.out = save_checkpoint(out, model, source=conv.source, **extra)
    return conv


def _fill(sd: dict, cfg: ModelConfig, seed: int, where: str):
    """Map ``sd`` into a new MemoBert of ``cfg``; returns the model, the Conversion, the
    pre-training heads (``Pretrainer.head_state`` names) and the fine-tuned head (kind, state)
    or None."""
    with torch.device("meta"):
        ours = MemoBert(cfg).state_dict()
    mapped, heads, head, unexpected, tied, row0 = {}, {}, {}, [], {}, {}
    for key, t in sd.items():
        if key in RESHAPED:
            new, rows = RESHAPED[key]
            if tuple(t.shape[:1]) != (rows,):
                raise CheckpointError(f"{where}: {key} has shape {tuple(t.shape)}, not "
                                      f"({rows}, ...)")
            mapped[new] = t[rows - 1].clone()
            if rows == 2:
                row0[key] = t[0].clone()
            continue
        if key in TIED:
            tied[key] = t
            continue
        new = to_memo_key(key)
        if new is None:
            if key != "uniter.embeddings.position_ids":
                unexpected.append(key)
        elif new.startswith(HEADS):
            heads[new[len(HEADS):]] = t
        elif new.startswith(HEAD):
            head[new[len(HEAD):]] = t
        elif new in ours:
            mapped[new] = t
        else:
            unexpected.append(key)
    for new, t in mapped.items():
        if tuple(t.shape) != tuple(ours[new].shape):
            raise CheckpointError(f"{where}: {new} gets shape {tuple(t.shape)} from the "
                                  f"checkpoint, the model needs {tuple(ours[new].shape)} "
                                  "(fix: pass the --config of this checkpoint)")
    missing = [k for k in ours if k not in mapped and not k.startswith("mlm.")]
    if missing:
        named = [to_original_key(k) or next(t for t, (o, _) in RESHAPED.items() if o == k)
                 for k in missing]
        raise CheckpointError(f"{where}: {len(missing)} key(s) the model needs are missing: "
                              f"{', '.join(named[:6])}{' ...' if len(named) > 6 else ''} (an "
                              "original checkpoint of another variant, e.g. UNITER's box "
                              "positions, has no memo counterpart)")
    mlm = [k for k in ours if k.startswith("mlm.") and k != "mlm.decoder.weight"]
    have = [k for k in mlm if k in mapped]
    if have and len(have) != len(mlm):
        raise CheckpointError(f"{where}: the cls.predictions weights are incomplete: "
                              f"{', '.join(k for k in mlm if k not in mapped)} missing")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MemoBert(cfg)
    model.load_state_dict(mapped, strict=False)
    now = model.state_dict()
    for key, t in tied.items():
        if TIED[key] not in now or not torch.equal(t.to(now[TIED[key]].dtype), now[TIED[key]]):
            unexpected.append(f"{key} (differs from {TIED[key]}; memo ties them)")
    heads = _check_heads(model, heads, where)
    finetuned = _check_head(model, head, where) if head else None
    fresh = [k for k in ours if k not in mapped and k != "mlm.decoder.weight"]
    found = {k.split(".")[0] for k in heads}
    source = {"seed": seed, "fresh": list(dict.fromkeys(k.split(".")[0] for k in fresh)),
              "unexpected": unexpected, "heads": [h for h in HEAD_TASKS if h in found],
              "mask_row0": row0}
    return model, Conversion(cfg, source, loaded=sorted(mapped), fresh=fresh,
                             unexpected=unexpected), heads, finetuned


def _check_heads(model: MemoBert, heads: dict, where: str) -> dict:
    """``heads`` checked whole and of the right shapes against the Pretrainer's own."""
    if not heads:
        return {}
    tasks = [HEAD_TASKS[n] for n in dict.fromkeys(k.split(".")[0] for k in heads)]
    with torch.device("meta"):
        ours = Pretrainer(MemoBert(model.config), tasks, 0,
                          (0, model.config.vocab_size)).head_state()
    missing = [k for k in ours if k not in heads]
    if missing:
        raise CheckpointError(f"{where}: a pre-training head is incomplete: "
                              f"{', '.join(to_original_key(HEADS + k) for k in missing)} missing")
    for k, t in heads.items():
        if tuple(t.shape) != tuple(ours[k].shape):
            raise CheckpointError(f"{where}: {to_original_key(HEADS + k)} has shape "
                                  f"{tuple(t.shape)}, the model needs {tuple(ours[k].shape)}")
    return {k: t.clone() for k, t in heads.items()}


def _check_head(model: MemoBert, head: dict, where: str) -> tuple[str, int, dict]:
    """The kind (``emocls``: output.1; ``vqa``: output.0, 2, 3), the number of classes and the
    weights of a fine-tuned ``output`` head, checked."""
    if "3.weight" in head:
        kind, n = "vqa", int(head["3.weight"].shape[0])
    elif "1.weight" in head:
        kind, n = "emocls", int(head["1.weight"].shape[0])
    else:
        raise CheckpointError(f"{where}: the fine-tuned output head ({', '.join(sorted(head))})"
                              " is neither emocls (output.1) nor vqa (output.0, 2, 3)")
    with torch.device("meta"):
        want = Classifier(MemoBert(model.config), kind, n).head.state_dict()
    bad = sorted(set(want) ^ set(head)) or [k for k in want if want[k].shape != head[k].shape]
    if bad:
        raise CheckpointError(f"{where}: the fine-tuned output head does not fit a {kind} head "
                              f"of {n} classes (output.{bad[0]})")
    return kind, n, {k: t.clone() for k, t in head.items()}


def convert_checkpoint(src, out=None, config=None, seed: int = 0, overwrite: bool = False,
                       labels=None) -> Conversion:
    """``memo train convert-ckpt``: an original MEmoBERT / UNITER checkpoint (recognised by its
    ``uniter.`` keys) through :func:`convert_original`, anything else as a Hugging Face BERT
    (:func:`memotrain.convert.convert_bert`)."""
    path = Path(src)
    if path.is_file() and path.suffix != ".safetensors" and \
            is_original(read_state_dict(path)[0]):
        return convert_original(path, out, config=config, seed=seed, overwrite=overwrite,
                                labels=labels)
    if labels:
        raise ConfigError(f"{src}: --labels applies to fine-tuned original checkpoints only")
    return convert_bert(src, out, config=config, seed=seed, overwrite=overwrite)


# ----------------------------------------------------------------------------- export

@dataclass
class Export:
    out: Path
    config_file: Path
    format: str
    keys: int
    heads: list = field(default_factory=list)  # original head names written
    notes: list = field(default_factory=list)  # what the original model will do differently


def uniter_config(cfg: ModelConfig) -> dict:
    """The original's model config JSON (UniterConfig names, plus the image / speech widths and
    the emotion-type table the original takes as options)."""
    d = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden,
         "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
         "intermediate_size": cfg.intermediate, "hidden_act": cfg.hidden_act,
         "hidden_dropout_prob": cfg.dropout,
         "attention_probs_dropout_prob": cfg.attention_dropout,
         "max_position_embeddings": cfg.max_text_positions,
         "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.initializer_range,
         "img_dim": cfg.face_dim}
    if cfg.speech_dim:
        d["speech_dim"] = cfg.speech_dim
    if cfg.emo_type_size:
        d.update(use_emo_type_emb=True, melm_type_emo_size=cfg.emo_type_size)
    return d


def export_original(src, out, to: str = "uniter", overwrite: bool = False) -> Export:
    """Write the memo checkpoint ``src`` as an original state dict at ``out`` and its config
    JSON beside it (``out`` with ``.json``). Refuses (CheckpointError) what the original model
    cannot hold: a joint face CNN, an activation other than erf GELU, another LayerNorm
    epsilon, the prompt head, speech with ``--to uniter`` (or none with ``uniter3m``)."""
    if to not in FORMATS:
        raise ConfigError(f"--to {to!r}: one of {', '.join(FORMATS)}")
    out = Path(out)
    config_file = out.with_suffix(".json")
    for p in (out, config_file):
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} already exists (fix: remove it or pass --force)")
    ckpt = load_checkpoint(src)
    cfg = ModelConfig.from_dict(ckpt["config"])
    ft = ckpt.get("finetune") if isinstance(ckpt.get("finetune"), dict) else None
    why = []
    if cfg.face_backbone is not None:
        why.append("it holds a joint face CNN (face_backbone), which the original model does "
                   "not have (fix: extract its face features with `memo extract-faces` and "
                   "train on those)")
    if cfg.hidden_act != "gelu":
        why.append(f"hidden_act {cfg.hidden_act!r}: the original computes erf GELU only")
    if cfg.layer_norm_eps != LAYER_NORM_EPS:
        why.append(f"layer_norm_eps {cfg.layer_norm_eps}: the original's LayerNorms use "
                   f"{LAYER_NORM_EPS}")
    if ft and ft.get("head") == "prompt":
        why.append("its prompt head (the MLM head over label words) has no original "
                   "counterpart (fix: fine-tune with head emocls or vqa)")
    if not cfg.face_dim:
        why.append("it has no faces (face_dim 0); the original model always has them")
    if to == "uniter" and cfg.speech_dim:
        why.append("it has speech (fix: --to uniter3m)")
    if to == "uniter3m" and not cfg.speech_dim:
        why.append("it has no speech (fix: --to uniter)")
    longest = max(cfg.max_face_positions, cfg.max_speech_positions if cfg.speech_dim else 0)
    if longest > cfg.max_text_positions:
        why.append(f"a face / speech position table of {longest} rows, longer than the "
                   f"original's max_position_embeddings {cfg.max_text_positions}")
    if why:
        raise CheckpointError(f"{src}: cannot export to {to}: " + "; ".join(why))
    model, notes, heads = ckpt["model"], [], ckpt.get("heads") or {}
    reshaped = {ours: (theirs, rows) for theirs, (ours, rows) in RESHAPED.items()}
    row0 = (ckpt.get("source") or {}).get("mask_row0") or {}
    sd = {}
    for key, t in model.items():
        if key == "mlm.decoder.weight" or (ft and key.startswith("mlm.")):
            continue  # tied: written below; a fine-tuned original model has no MLM head
        if key in reshaped:
            theirs, rows = reshaped[key]
            sd[theirs] = t[None] if rows == 1 else torch.stack(
                [row0.get(theirs, torch.zeros_like(t)).to(t.dtype), t])
            continue
        if key.startswith(("face_embeddings.position", "speech_embeddings.position")) and \
                t.shape[0] < cfg.max_text_positions:
            pad = t.new_zeros((cfg.max_text_positions - t.shape[0], t.shape[1]))
            notes.append(f"{key}: {t.shape[0]} rows padded with zero rows to "
                         f"{cfg.max_text_positions} (positions memo never trained)")
            t = torch.cat([t, pad])
        sd[to_original_key(key)] = t
    for theirs, ours in TIED.items():  # the MLM decoder always; a regression head's if stored
        owner = {"feat_regress.weight": "mrfr_head.bias",
                 "speech_feat_regress.weight": "msrfr_head.bias"}.get(theirs)
        if (owner is None and not ft) or owner in heads:
            sd[theirs] = model[ours].clone()
    written = []
    for k, t in heads.items():
        theirs = to_original_key(HEADS + k)
        if theirs is None:
            notes.append(f"head {k.split('.')[0]} has no original counterpart: not written")
            continue
        sd[theirs] = t
        written.append(theirs.split(".")[0])
    if ft:
        for k, t in ft["head_state"].items():
            sd["output." + k] = t
        written.append("output")
    if cfg.face_dim and not cfg.empty_face_frame:
        notes.append("the original feeds one zero face frame to a segment without a face; "
                     "this model was trained without (empty_face_frame false)")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(sd, out)
    conf = uniter_config(cfg)
    if ft:
        conf.update(cls_type=ft["head"], cls_num=len(ft["labels"]))
    with atomic_write(config_file, "w") as f:
        f.write(json.dumps(conf, indent=2) + "\n")
    return Export(out, config_file, to, len(sd), sorted(set(written)), list(dict.fromkeys(notes)))

