"""The cross-modal BERT of MEmoBERT (:class:`MemoBert`): text, faces and (optionally) speech
through one encoder, in a compact per-example order ``[CLS] text [SEP] faces [speech]``; with a
``face_backbone`` it holds the face CNN and takes raw crops. Inputs, layout, positions and the
Hugging Face parameter names: docs/TRAINER.md "The model".
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memotrain.config import ConfigError, ModelConfig
from memotrain.facecnn import DenseNetBC, InputError

MODALITIES = ("text", "faces", "speech")


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return functools.partial(F.gelu, approximate="tanh")
    if name == "relu":
        return F.relu
    raise InputError(f"unknown activation {name!r}")


# ----------------------------------------------------------------------------- embeddings

class TextEmbeddings(nn.Module):
    """BERT embeddings: word + position + token type 0 (+ emotion type, when the config has
    them and ``emo_type_ids`` are given), LayerNorm, dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_text_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.emo_type_embeddings = (nn.Embedding(cfg.emo_type_size, cfg.hidden)
                                    if cfg.emo_type_size else None)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, emo_type_ids=None):
        n = input_ids.shape[1]
        # padded positions beyond the table are clamped: they are dropped by the gather anyway
        pos = torch.arange(n, device=input_ids.device).clamp_max(
            self.position_embeddings.num_embeddings - 1)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings(pos)
        if emo_type_ids is not None:
            x = x + self.emo_type_embeddings(emo_type_ids)
        return self.dropout(self.LayerNorm(x))


class FrameEmbeddings(nn.Module):
    """A time series of feature vectors (faces or speech frames).

    Masked frames are replaced by a learned mask vector (zeroed, then the vector added);
    Linear(dim -> hidden), LayerNorm; + position (0..n-1, own table) + token type; LayerNorm,
    dropout. ``own_type``: a type vector of its own (speech next to faces) instead of a row of
    the shared token type table.
    """

    def __init__(self, cfg: ModelConfig, dim: int, max_positions: int, own_type: bool = False):
        super().__init__()
        self.dim = dim
        self.mask_embedding = nn.Parameter(torch.zeros(dim))
        self.projection = nn.Linear(dim, cfg.hidden)
        self.projection_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.position_embeddings = nn.Embedding(max_positions, cfg.hidden)
        self.type_embedding = nn.Parameter(torch.zeros(cfg.hidden)) if own_type else None
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, feats, mask=None, type_vector=None):
        feats = feats.to(self.projection.weight.dtype)
        if mask is not None:
            feats = torch.where(mask[..., None], self.mask_embedding.to(feats.dtype), feats)
        x = self.projection_norm(self.projection(feats))
        pos = torch.arange(feats.shape[1], device=feats.device).clamp_max(
            self.position_embeddings.num_embeddings - 1)
        type_vector = self.type_embedding if self.type_embedding is not None else type_vector
        x = x + self.position_embeddings(pos) + type_vector
        return self.dropout(self.LayerNorm(x))


# ----------------------------------------------------------------------------- encoder

class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.p = cfg.heads, cfg.attention_dropout
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x, attn_mask):
        B, T, H = x.shape
        q, k, v = (lin(x).view(B, T, self.heads, H // self.heads).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, H)


class DenseResidualNorm(nn.Module):
    """``LayerNorm(dropout(dense(h)) + residual)``: BERT's SelfOutput and Output."""

    def __init__(self, cfg: ModelConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h, residual):
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseResidualNorm(cfg, cfg.hidden)

    def forward(self, x, attn_mask):
        return self.output(self.self(x, attn_mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)
        self.act = activation(cfg.hidden_act)

    def forward(self, x):
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseResidualNorm(cfg, cfg.intermediate)

    def forward(self, x, attn_mask):
        a = self.attention(x, attn_mask)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))

    def forward(self, x, attn_mask, output_hidden_states=False):
        states = [x] if output_hidden_states else None
        for layer in self.layer:
            x = layer(x, attn_mask)
            if states is not None:
                states.append(x)
        return x, (tuple(states) if states is not None else None)


class Pooler(nn.Module):
    """tanh(Linear) on the [CLS] state (compact position 0)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class PredictionTransform(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = activation(cfg.hidden_act)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class MLMHead(nn.Module):
    """Transform (Linear, GELU, LayerNorm), then a decoder tied to the word embeddings + bias
    (Hugging Face ``cls.predictions``)."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = PredictionTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: one tensor
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden):
        return self.decoder(self.transform(hidden)) + self.bias


# ----------------------------------------------------------------------------- layout

@dataclass
class Layout:
    """Where each example's modalities lie in the compact sequence (text | faces | speech | pad).

    ``lens[m]`` (B,) real lengths on the model's device, ``host_lens[m]`` the same as a list,
    ``widths[m]`` the padded input widths, ``index`` (B, T) the gather index into the
    concatenated padded embeddings, ``attention_mask`` (B, T) bool, ``full``: no example is
    padded (known on the host).
    """

    lens: dict
    widths: dict
    index: torch.Tensor
    attention_mask: torch.Tensor
    host_lens: dict
    full: bool

    @classmethod
    def build(cls, lens: dict, widths: dict, device) -> Layout:
        """``lens``: host-side lengths (lists), so that the sequence width T and whether
        anything is padded are known without reading the device back."""
        host = {m: list(lens[m]) for m in MODALITIES}
        totals = [sum(n) for n in zip(*(host[m] for m in MODALITIES))]
        T = max(totals)
        # one host-to-device copy; the index is computed on the device from it
        stacked = torch.tensor([host[m] for m in MODALITIES], dtype=torch.long)
        stacked = stacked.to(device, non_blocking=True)
        dev = dict(zip(MODALITIES, stacked.unbind(0)))
        tl, fl, sl = (dev[m][:, None] for m in MODALITIES)
        total = tl + fl + sl
        p = torch.arange(T, device=device)[None]
        wt, wf = widths["text"], widths["faces"]
        index = torch.where(p < tl, p, torch.where(
            p < tl + fl, wt + p - tl, torch.where(p < total, wt + wf + p - tl - fl, 0)))
        return cls(dev, widths, index, p < total, host, min(totals) == T)

    def offsets(self, modality: str) -> torch.Tensor:
        """(B,) compact position of each example's first element of ``modality``."""
        i = MODALITIES.index(modality)
        return sum((self.lens[m] for m in MODALITIES[:i]), torch.zeros_like(self.lens["text"]))

    def select(self, hidden, modality: str):
        """(B, width, H): ``hidden`` (compact) at ``modality``'s positions, aligned with that
        modality's padded input; padding is zero."""
        B, T, H = hidden.shape
        w = self.widths[modality]
        j = torch.arange(w, device=hidden.device)[None]
        idx = (self.offsets(modality)[:, None] + j).clamp_max(T - 1)
        out = hidden.gather(1, idx[..., None].expand(B, w, H))
        return out * (j < self.lens[modality][:, None])[..., None].to(out.dtype)

    def text(self, hidden):
        return self.select(hidden, "text")

    def faces(self, hidden):
        return self.select(hidden, "faces")

    def speech(self, hidden):
        return self.select(hidden, "speech")

    def split(self, hidden) -> list[dict]:
        """Per example ``{"text": (tl, H), "faces": (fl, H), "speech": (sl, H)}`` (real lengths)."""
        lens = self.host_lens
        out = []
        for b in range(hidden.shape[0]):
            d, start = {}, 0
            for m in MODALITIES:
                d[m] = hidden[b, start:start + lens[m][b]]
                start += lens[m][b]
            out.append(d)
        return out


@dataclass
class MemoOutput:
    hidden: torch.Tensor  # (B, T, H) compact order, last layer
    pooled: torch.Tensor  # (B, H) pooler output on [CLS]
    layout: Layout
    hidden_states: tuple | None = None  # embeddings + every layer (compact), when asked
    face_feats: torch.Tensor | None = None  # (B, F, face_dim) input face vectors (see above)

    @property
    def attention_mask(self):
        return self.layout.attention_mask


# ----------------------------------------------------------------------------- model

class MemoBert(nn.Module):
    """Text + faces (+ speech) BERT with a pooler and the tied MLM head; task heads live with
    the tasks. ``forward`` returns a MemoOutput (compact hidden states, pooled [CLS], layout)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.face_embeddings = (FrameEmbeddings(cfg, cfg.face_dim, cfg.max_face_positions)
                                if cfg.face_dim else None)
        self.speech_embeddings = (FrameEmbeddings(cfg, cfg.speech_dim, cfg.max_speech_positions,
                                                  own_type=bool(cfg.face_dim))
                                  if cfg.speech_dim else None)
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg)
        self.mlm = MLMHead(cfg, self.embeddings.word_embeddings)
        self.apply(self._init_module)
        for fe in (self.face_embeddings, self.speech_embeddings):
            if fe is not None:
                nn.init.normal_(fe.mask_embedding, std=cfg.initializer_range)
                if fe.type_embedding is not None:
                    nn.init.normal_(fe.type_embedding, std=cfg.initializer_range)
        self.face_cnn = None
        if cfg.face_backbone is not None:
            # built last: the transformer's initial weights do not depend on the backbone
            arch = dict(cfg.face_backbone)
            if "blocks" in arch:
                arch["blocks"] = tuple(arch["blocks"])
            self.face_cnn = DenseNetBC(**arch, n_classes=0)
            if self.face_cnn.feature_dim != cfg.face_dim:
                raise ConfigError(
                    f"model config: face_dim {cfg.face_dim} is not the width of the face "
                    f"backbone's features ({self.face_cnn.feature_dim}: "
                    f"{self.face_cnn.describe()}); set face_dim {self.face_cnn.feature_dim}")

    def _init_module(self, m):
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            if m is self.mlm.decoder:
                return  # tied to the word embeddings
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def encode_faces(self, crops, face_lens) -> torch.Tensor:
        """(B, F, face_dim): the face CNN on the real crops of ``crops`` (B, F, S, S) only,
        in one call, scattered back into a zero-padded tensor (docs/TRAINER.md "The model").
        ``face_lens``: host-side lengths (a device tensor is read back)."""
        B, W = crops.shape[:2]
        lens = torch.as_tensor(face_lens).cpu()
        real = torch.arange(W)[None] < lens[:, None]  # on the host: no read-back of a mask
        out = crops.new_zeros((B, W, self.config.face_dim),
                              dtype=self.face_cnn.features.conv0.weight.dtype)
        if real.any():
            rows, cols = (i.to(crops.device, non_blocking=True)
                          for i in real.nonzero(as_tuple=True))
            x = crops[rows, cols].to(out.dtype)  # (N, S, S): padding never reaches the CNN
            enc = self.face_cnn.encode(x)
            out = out.index_put((rows, cols), enc.to(out.dtype))
        return out

    def forward(self, input_ids, text_lens=None, faces=None, face_lens=None, face_mask=None,
                speech=None, speech_lens=None, speech_mask=None,
                output_hidden_states=False, emo_type_ids=None) -> MemoOutput:
        if emo_type_ids is not None and (self.embeddings.emo_type_embeddings is None or
                                         emo_type_ids.shape != input_ids.shape):
            raise InputError(f"emo_type_ids {tuple(emo_type_ids.shape)} given, but the model "
                             f"has {self.config.emo_type_size} emotion types (emo_type_size) "
                             f"and input_ids are {tuple(input_ids.shape)}")
        if self.config.empty_face_frame and faces is not None:
            faces, face_lens, face_mask = empty_face_frame(faces, face_lens, face_mask)
        layout = self.layout(input_ids, text_lens, faces, face_lens, face_mask,
                             speech, speech_lens, speech_mask)
        parts = [self.embeddings(input_ids, emo_type_ids)]
        if faces is not None:
            if self.face_cnn is not None:
                faces = self.encode_faces(faces, layout.host_lens["faces"])
            parts.append(self.face_embeddings(
                faces, face_mask, self.embeddings.token_type_embeddings.weight[1]))
        if speech is not None:
            parts.append(self.speech_embeddings(
                speech, speech_mask, self.embeddings.token_type_embeddings.weight[1]))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        H = x.shape[-1]
        x = x.gather(1, layout.index[..., None].expand(*layout.index.shape, H))
        # key padding mask; None when nothing is padded (SDPA's faster unmasked path)
        attn_mask = None if layout.full else layout.attention_mask[:, None, None, :]
        hidden, states = self.encoder(x, attn_mask, output_hidden_states)
        return MemoOutput(hidden, self.pooler(hidden), layout, states, faces)

    def layout(self, input_ids, text_lens=None, faces=None, face_lens=None, face_mask=None,
               speech=None, speech_lens=None, speech_mask=None) -> Layout:
        """Check the batch (clear errors, no device asserts) and compute its compact layout.

        Nothing is read back from the device: the lengths are host-side (lists or CPU
        tensors; a device tensor is read back, a synchronisation) and the token ids are
        checked here only when they are on the CPU (callers on an accelerator check their
        host batch with :meth:`check_ids` before moving it, as the recipes do)."""
        cfg = self.config
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            raise InputError(f"input_ids must be (batch, length) integers, not "
                             f"{tuple(input_ids.shape)} {input_ids.dtype}")
        B, Lt = input_ids.shape
        if B == 0 or Lt == 0:
            raise InputError(f"empty batch: input_ids is {tuple(input_ids.shape)} (each "
                             "example needs at least [CLS])")
        if input_ids.device.type == "cpu":
            self.check_ids(input_ids)
        lens = {"text": _lengths(text_lens, B, Lt, "text", 1)}
        widths = {"text": Lt}
        for m, feats, ln, mask, dim, emb in (
                ("faces", faces, face_lens, face_mask, cfg.face_dim, self.face_embeddings),
                ("speech", speech, speech_lens, speech_mask, cfg.speech_dim,
                 self.speech_embeddings)):
            if feats is None:
                if ln is not None or mask is not None:
                    raise InputError(f"{m} lengths or mask given without {m}")
                lens[m], widths[m] = [0] * B, 0
                continue
            if emb is None:
                raise InputError(f"{m} given, but the model has no {m} modality "
                                 f"({'face_dim' if m == 'faces' else 'speech_dim'} is 0)")
            if m == "faces" and self.face_cnn is not None:
                s = self.face_cnn.image_size
                if feats.dim() != 4 or feats.shape[0] != B or tuple(feats.shape[2:]) != (s, s):
                    raise InputError(
                        f"faces must be raw crops (batch {B}, frames, {s}, {s}) for this "
                        f"model's face CNN, not {tuple(feats.shape)} (fix: read the faces from "
                        f"a raw-crop database built with --size {s}: rawimg_db, not a feature "
                        "db)")
            elif feats.dim() != 3 or feats.shape[0] != B or feats.shape[2] != dim:
                raise InputError(f"{m} must be (batch {B}, frames, {dim}), not "
                                 f"{tuple(feats.shape)}")
            if mask is not None and (mask.shape != feats.shape[:2] or mask.dtype != torch.bool):
                raise InputError(f"{m} mask must be bool {tuple(feats.shape[:2])}, not "
                                 f"{mask.dtype} {tuple(mask.shape)}")
            lens[m], widths[m] = _lengths(ln, B, feats.shape[1], m, 0), feats.shape[1]
        for m, field in (("text", "max_text_positions"), ("faces", "max_face_positions"),
                         ("speech", "max_speech_positions")):
            limit = getattr(cfg, field)
            over = [b for b, n in enumerate(lens[m]) if n > limit]
            if over:
                b = over[0]
                parts = ", ".join(f"{k} {lens[k][b]}" for k in MODALITIES)
                raise InputError(
                    f"example {b} of the batch is too long: {m} {lens[m][b]} > {field} "
                    f"{limit} ({len(over)} example(s) too long; lengths {parts}, text "
                    f"counting [CLS] and [SEP]); drop or truncate such examples "
                    f"(max_txt_len / max_bb) or use a config with a larger {field}")
        return Layout.build(lens, widths, input_ids.device)

    def check_ids(self, input_ids: torch.Tensor) -> None:
        """InputError when a token id lies outside the vocabulary (reads ``input_ids``: call
        it on the host copy of a batch)."""
        if not input_ids.numel():
            return
        lo, hi = (int(v) for v in torch.aminmax(input_ids))
        if lo < 0 or hi >= self.config.vocab_size:
            raise InputError(f"input_ids hold {lo if lo < 0 else hi}, outside the vocabulary "
                             f"[0, {self.config.vocab_size})")


def empty_face_frame(faces, face_lens, face_mask):
    """The original MEmoBERT's faces (``ModelConfig.empty_face_frame``): an example without a
    face gets one zero frame, attended to like any face. Returns faces, lengths and mask."""
    B, W = faces.shape[:2]
    if W == 0:
        faces = faces.new_zeros((B, 1, *faces.shape[2:]))
        face_mask = None if face_mask is None else face_mask.new_zeros((B, 1))
        return faces, [1] * B, face_mask
    if face_lens is None:
        return faces, face_lens, face_mask
    if isinstance(face_lens, torch.Tensor):
        empty, face_lens = face_lens == 0, face_lens.clamp_min(1)
    else:
        empty = torch.tensor([n == 0 for n in face_lens])
        face_lens = [max(n, 1) for n in face_lens]
    empty = empty.to(faces.device).view(B, *[1] * (faces.dim() - 1))
    first = torch.where(empty, torch.zeros_like(faces[:, :1]), faces[:, :1])
    return torch.cat([first, faces[:, 1:]], dim=1), face_lens, face_mask


def _lengths(lens, B, width, what, minimum) -> list[int]:
    if lens is None:
        return [width] * B
    try:
        values = [operator.index(v) for v in
                  (lens.tolist() if isinstance(lens, torch.Tensor) else lens)]
    except TypeError:
        values = None
    if values is None or len(values) != B:
        raise InputError(f"{what} lengths must be {B} integers, not {lens!r}")
    bad = [v for v in values if not minimum <= v <= width]
    if bad:
        raise InputError(f"{what} length {bad[0]} is outside [{minimum}, {width}] (the padded "
                         f"{what} width)")
    return values
