"""The pre-training tasks: input corruption, heads, losses.

:class:`Pretrainer` wraps a :class:`memotrain.model.MemoBert` with the heads its tasks need and
turns one collated batch into one task's loss::

    pre = Pretrainer(model, ["mlm_wwm", "mspanrfr", "mspanrckl"], ds.mask_id, ds.v_range)
    out = pre("mlm_wwm", batch, generator)   # TaskOutput(loss, n_targets, values)

What each task masks and scores: docs/TRAINER.md "Pre-training tasks".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from memodb.errors import MemoError
from memotrain import masking
from memotrain.data import HOST_KEYS, to_device

TASKS = ("mlm", "mlm_wwm", "melm", "itm", "mrfr", "mrckl", "mspanrfr", "mspanrckl", "msrfr",
         "vnce")

MLM_TASKS = ("mlm", "mlm_wwm", "melm")
FACE_TASKS = ("mrfr", "mrckl", "mspanrfr", "mspanrckl")
SPEECH_TASKS = ("msrfr",)

HEADS = ("itm_head", "mrfr_head", "mrckl_head", "msrfr_head", "vnce_head")
# head weights that are the model's own input projections (tied), never stored with the heads
TIED = ("mrfr_head.weight", "msrfr_head.weight")

MLM_PROB = 0.15
MELM_PROB = 0.5
FRAME_PROB = 0.15
SPAN_RATIO = 0.2
SPAN_LEN = 3
ITM_PROB = 0.5
VNCE_TEMPERATURE = 0.07
# what the masks are drawn from, on the host (the lengths, the text and the soft labels)
HOST_NEEDS = (*HOST_KEYS, "input_ids", "word_ids", "emo_type_ids", "soft_labels")


class TaskError(MemoError, ValueError):
    """A pre-training task is unknown, does not fit the model, or has no target in a batch."""


@dataclass
class TaskOutput:
    loss: torch.Tensor  # scalar, averaged over the targets
    n_targets: int  # masked tokens / masked frames / examples (itm)
    # str -> detached scalar tensor (or float): acc, mse, kl, fallback; left on the device so
    # that the forward pass never waits for it
    values: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        """str -> float: the ``values`` read back (a synchronisation: ask only when logging)."""
        return {k: float(v) for k, v in self.values.items()}


# ----------------------------------------------------------------------------- heads

def _transform(hidden: int, eps: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps))


class FeatureRegression(nn.Module):
    """Linear, GELU, LayerNorm, then an output layer whose weight IS the (transposed) weight of
    the modality's input projection (``Linear(dim -> hidden)``), with a bias of its own."""

    def __init__(self, hidden: int, projection: nn.Linear, eps: float):
        super().__init__()
        self.transform = _transform(hidden, eps)
        self.weight = projection.weight  # (hidden, dim): shared, one tensor
        self.bias = nn.Parameter(torch.zeros(projection.in_features))

    def forward(self, x):
        return F.linear(self.transform(x), self.weight.t(), self.bias)


class ContrastiveHeads(nn.Module):
    """The two projections of ``vnce``: ``query`` (Linear, GELU, LayerNorm, Linear) on the
    transformer's output at a masked frame, ``key`` (Linear(face_dim -> hidden)) on a face
    encoding; both outputs L2-normalised."""

    def __init__(self, hidden: int, face_dim: int, eps: float):
        super().__init__()
        self.query_transform = _transform(hidden, eps)
        self.query_out = nn.Linear(hidden, hidden)
        self.key = nn.Linear(face_dim, hidden)

    def queries(self, h):
        return F.normalize(self.query_out(self.query_transform(h)).float(), dim=-1)

    def keys(self, feats):
        return F.normalize(self.key(feats.to(self.key.weight.dtype)).float(), dim=-1)


class SoftLabelClassifier(nn.Module):
    """Linear, GELU, LayerNorm, Linear(hidden -> n_soft_labels): logits of the MRC-KL task."""

    def __init__(self, hidden: int, n_labels: int, eps: float):
        super().__init__()
        self.transform = _transform(hidden, eps)
        self.out = nn.Linear(hidden, n_labels)

    def forward(self, x):
        return self.out(self.transform(x))


# ----------------------------------------------------------------------------- pretrainer

class Pretrainer(nn.Module):
    """The model plus the heads of ``tasks``: ``itm_head``, ``mrfr_head`` (mrfr, mspanrfr),
    ``mrckl_head`` (mrckl, mspanrckl), ``msrfr_head``, ``vnce_head``; only those the tasks
    need exist (None otherwise). The MLM tasks use ``model.mlm``. ``vnce_temperature``: the
    InfoNCE temperature of ``vnce``."""

    def __init__(self, model, tasks, mask_id: int, v_range: tuple[int, int],
                 vnce_temperature: float = VNCE_TEMPERATURE):
        super().__init__()
        cfg = model.config
        tasks = list(tasks)
        if not tasks:
            raise TaskError(f"no pre-training task given (choose among {', '.join(TASKS)})")
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise TaskError(f"unknown pre-training task(s) {', '.join(map(repr, unknown))} "
                            f"(known: {', '.join(TASKS)})")
        for t in tasks:
            if t in (*FACE_TASKS, "vnce") and not cfg.face_dim:
                raise TaskError(f"task {t!r} masks faces, but the model has no faces "
                                "(face_dim is 0 in its config)")
            if t in FACE_TASKS and getattr(model, "face_cnn", None) is not None:
                raise TaskError(f"task {t!r} predicts stored face features / soft labels, "
                                "which a face CNN trained with the model no longer produces "
                                "(fix: use vnce, the visual NCE task, for the faces)")
            if t in SPEECH_TASKS and not cfg.speech_dim:
                raise TaskError(f"task {t!r} masks speech, but the model has no speech "
                                "(speech_dim is 0 in its config)")
            if t == "itm" and not (cfg.face_dim or cfg.speech_dim):
                raise TaskError("task 'itm' swaps faces / speech, but the model has neither "
                                "(face_dim and speech_dim are 0 in its config)")
        lo, hi = (int(v) for v in v_range)
        if not 0 <= lo < hi <= cfg.vocab_size:
            raise TaskError(f"v_range {tuple(v_range)} is not a range of token ids within the "
                            f"vocabulary [0, {cfg.vocab_size})")
        if not 0 <= int(mask_id) < cfg.vocab_size:
            raise TaskError(f"mask_id {mask_id} is outside the vocabulary [0, {cfg.vocab_size})")
        if not vnce_temperature > 0:
            raise TaskError(f"vnce_temperature must be > 0, not {vnce_temperature}")
        self.vnce_temperature = float(vnce_temperature)
        self.model = model
        self.tasks = tuple(dict.fromkeys(tasks))
        self.mask_id = int(mask_id)
        self.v_range = (lo, hi)
        H, eps = cfg.hidden, cfg.layer_norm_eps
        want = set(self.tasks)
        self.itm_head = nn.Linear(H, 2) if "itm" in want else None
        self.mrfr_head = (FeatureRegression(H, model.face_embeddings.projection, eps)
                          if want & {"mrfr", "mspanrfr"} else None)
        self.mrckl_head = (SoftLabelClassifier(H, cfg.n_soft_labels, eps)
                           if want & {"mrckl", "mspanrckl"} else None)
        self.msrfr_head = (FeatureRegression(H, model.speech_embeddings.projection, eps)
                           if "msrfr" in want else None)
        self.vnce_head = ContrastiveHeads(H, cfg.face_dim, eps) if "vnce" in want else None
        for name in HEADS:
            if getattr(self, name) is not None:
                self._init_head(getattr(self, name), cfg.initializer_range)

    def head_state(self) -> dict:
        """The heads' weights (``itm_head.weight`` ...), without the tied ones: what a model
        checkpoint stores under ``"heads"`` for :meth:`load_heads`."""
        return {k: v for k, v in self.state_dict().items()
                if k.split(".")[0] in HEADS and k not in TIED}

    def load_heads(self, state: dict, where: str = "checkpoint") -> list:
        """Fill each head of this Pretrainer that ``state`` (a :meth:`head_state`) holds whole;
        returns the names of the heads filled. TaskError on a partial head or a shape that
        does not fit."""
        ours = self.head_state()
        loaded = []
        for name in HEADS:
            keys = [k for k in ours if k.startswith(name + ".")]
            have = [k for k in keys if k in state]
            if not keys or not have:
                continue
            if len(have) != len(keys):
                raise TaskError(f"{where}: the {name} weights are incomplete: "
                                f"{', '.join(k for k in keys if k not in state)} missing")
            bad = [k for k in keys if tuple(state[k].shape) != tuple(ours[k].shape)]
            if bad:
                raise TaskError(f"{where}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                                f"the {name} of this model {tuple(ours[bad[0]].shape)}")
            getattr(self, name).load_state_dict(
                {k[len(name) + 1:]: state[k] for k in keys}, strict=False)
            loaded.append(name)
        return loaded

    @staticmethod
    def _init_head(head: nn.Module, std: float):
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(head, FeatureRegression):
            nn.init.zeros_(head.bias)  # head.weight belongs to the projection: left as it is

    def forward(self, task: str, batch: dict, generator: torch.Generator) -> TaskOutput:
        """One task's loss on ``batch``: the collated batch on the host (it is moved to the
        model's device here, after the masks are drawn on the host: nothing is read back from
        the device); a batch already on the device works too, read back where needed."""
        if task not in self.tasks:
            if task not in TASKS:
                raise TaskError(f"unknown pre-training task {task!r} (known: {', '.join(TASKS)})")
            raise TaskError(f"task {task!r} was not given to this Pretrainer (it has "
                            f"{', '.join(self.tasks)}): its head does not exist")
        if generator.device.type != "cpu":
            raise TaskError(f"the task generator must be a CPU torch.Generator, not one on "
                            f"{generator.device}")
        host = {k: v.cpu() if isinstance(v, torch.Tensor) else v
                for k, v in batch.items() if k in HOST_NEEDS}
        self.model.check_ids(host["input_ids"])
        batch = to_device(batch, self.model.embeddings.word_embeddings.weight.device)
        batch.update((k, host[k]) for k in HOST_KEYS if k in host)  # the layout reads them
        if task in MLM_TASKS:
            return self._mlm(task, batch, host, generator)
        if task == "itm":
            return self._itm(batch, host, generator)
        if task in FACE_TASKS:
            return self._faces(task, batch, host, generator)
        if task == "vnce":
            return self._vnce(batch, host, generator)
        return self._speech(task, batch, host, generator)

    # ------------------------------------------------------------------------- helpers

    def _run(self, batch, input_ids=None, face_mask=None, speech_mask=None, emo_type_ids=None,
             **swap):
        """The model on the batch's modalities (some replaced by ``swap``)."""
        b = {**batch, **swap}
        return self.model(
            batch["input_ids"] if input_ids is None else input_ids, b["text_lens"],
            b.get("faces"), b.get("face_lens"), face_mask,
            b.get("speech"), b.get("speech_lens"), speech_mask, emo_type_ids=emo_type_ids)

    @staticmethod
    def _indices(mask: torch.Tensor, device):
        """(rows, cols) of a host-side bool mask, on ``device`` (no read-back of a device
        mask's size)."""
        return tuple(i.to(device, non_blocking=True) for i in mask.nonzero(as_tuple=True))

    @staticmethod
    def _no_target(task, why):
        return TaskError(f"task {task!r}: the batch has no target ({why}); filter such "
                         "examples out of this task's data")

    # ------------------------------------------------------------------------- text

    def _mlm(self, task, batch, host, gen) -> TaskOutput:
        device = batch["input_ids"].device
        ids_cpu = host["input_ids"]
        text_lens = torch.as_tensor(host["text_lens"])
        B, T = ids_cpu.shape
        pos = torch.arange(T)[None, :]
        cands = (pos >= 1) & (pos < text_lens[:, None] - 1)  # not [CLS], [SEP], padding
        if not cands.any():
            raise self._no_target(task, "every text is empty: only [CLS] and [SEP]")
        metrics, emo_types = {}, None
        if task == "mlm":
            chosen = masking.choose_tokens(cands, MLM_PROB, gen)
        elif task == "mlm_wwm":
            word_ids = host.get("word_ids")
            if word_ids is None:
                raise TaskError("task 'mlm_wwm' needs the batch's word_ids (whole words)")
            chosen = masking.choose_tokens(cands, MLM_PROB, gen, groups=word_ids)
        else:  # melm
            emo = host.get("emo_type_ids")
            emo_cands = (cands & (emo > 0)) if emo is not None else torch.zeros_like(cands)
            has_emo = emo_cands.any(1)
            chosen = masking.choose_tokens(emo_cands, MELM_PROB, gen)
            fallback = cands.any(1) & ~has_emo
            if fallback.any():  # examples without an emotion word: plain mlm
                plain = masking.choose_tokens(cands & fallback[:, None], MLM_PROB, gen)
                chosen = chosen | plain
            metrics["fallback"] = float(fallback.sum()) / B
            emo_types = self._emo_types(emo)
        if not chosen.any():
            raise self._no_target(task, "no token could be chosen (no word_ids >= 0 on the "
                                  "text tokens?)" if task == "mlm_wwm" else "nothing chosen")
        corrupted, _ = masking.corrupt_tokens(ids_cpu, chosen, self.mask_id, self.v_range, gen)
        rows, cols = chosen.nonzero(as_tuple=True)
        labels = ids_cpu[rows, cols].to(device, non_blocking=True)
        if emo_types is not None:
            emo_types = emo_types.to(device, non_blocking=True)
        out = self._run(batch, input_ids=corrupted.to(device, non_blocking=True),
                        emo_type_ids=emo_types)
        rows, cols = rows.to(device, non_blocking=True), cols.to(device, non_blocking=True)
        # text sits first in the compact order: text position t is compact position t
        logits = self.model.mlm(out.hidden[rows, cols])  # (N, vocab): masked positions only
        loss = F.cross_entropy(logits.float(), labels)
        metrics["acc"] = (logits.argmax(-1) == labels).float().mean().detach()
        return TaskOutput(loss, int(labels.numel()), metrics)

    def _emo_types(self, emo):
        """The batch's emotion types for a model with emotion-type embeddings (else None)."""
        n = self.model.config.emo_type_size
        if not n:
            return None
        if emo is None:
            raise TaskError(f"task 'melm': the model adds emotion-type embeddings "
                            f"(emo_type_size {n}), but the batch has no emo_type_ids (fix: "
                            "build the text db with an emotion lexicon)")
        hi = int(emo.max())
        if hi >= n or int(emo.min()) < 0:
            raise TaskError(f"task 'melm': emo_type_ids hold {hi}, outside the model's "
                            f"emotion types [0, {n}) (the lexicon has more categories than "
                            "emo_type_size)")
        return emo

    # ------------------------------------------------------------------------- itm

    def _itm(self, batch, host, gen) -> TaskOutput:
        if batch.get("faces") is None and batch.get("speech") is None:
            raise self._no_target("itm", "neither faces nor speech to swap")
        device = batch["input_ids"].device
        B = batch["input_ids"].shape[0]
        labels, source = masking.itm_pairs(B, gen, ITM_PROB)
        # an example without any frame that receives none either has nothing to (mis)match
        frames = torch.zeros(B, dtype=torch.long)
        for name, lens in (("faces", "face_lens"), ("speech", "speech_lens")):
            if batch.get(name) is not None:
                n = host.get(lens)
                frames = frames + (torch.as_tensor(n) if n is not None
                                   else torch.full((B,), batch[name].shape[1]))
        void = (frames == 0) & (frames[source] == 0)
        if void.all():
            raise self._no_target("itm", "no example has a face or a speech frame")
        labels = labels.masked_fill(void, masking.IGNORE)
        n_targets = int((~void).sum())
        pos = float(labels[~void].float().mean())
        kept = (~void).to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        swap = {}
        for name, lens in (("faces", "face_lens"), ("speech", "speech_lens")):
            if batch.get(name) is not None:
                swap[name] = batch[name][source.to(device, non_blocking=True)]
                if host.get(lens) is not None:  # lengths stay on the host
                    swap[lens] = torch.as_tensor(host[lens])[source]
        out = self._run(batch, **swap)
        logits = self.itm_head(out.pooled)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=masking.IGNORE)
        acc = (((logits.argmax(-1) == labels) & kept).float().sum() / n_targets).detach()
        return TaskOutput(loss, n_targets, {"acc": acc, "pos": pos})

    # ------------------------------------------------------------------------- frames

    def _frame_targets(self, out, modality, rows, cols):
        """Hidden states (N, H) at frames ``(rows, cols)`` of ``modality`` (on the device)."""
        return out.hidden[rows, out.layout.offsets(modality)[rows] + cols]

    def _faces(self, task, batch, host, gen) -> TaskOutput:
        faces = batch.get("faces")
        if faces is None:
            raise self._no_target(task, "the batch has no faces")
        device = faces.device
        face_lens = torch.as_tensor(host["face_lens"])
        if not (face_lens > 0).any():
            raise self._no_target(task, "every example has 0 faces")
        kl = task in ("mrckl", "mspanrckl")
        soft = host.get("soft_labels")
        if kl:
            if soft is None:
                raise self._no_target(task, "the batch has no soft_labels (the face database "
                                      "stores none)")
            if soft.shape[-1] != self.model.config.n_soft_labels:
                raise TaskError(f"task {task!r}: soft_labels have {soft.shape[-1]} classes, "
                                f"the model config n_soft_labels {self.model.config.n_soft_labels}")
        W = faces.shape[1]
        if task.startswith("mspan"):
            mask = masking.choose_spans(face_lens, W, SPAN_RATIO, SPAN_LEN, gen)
        else:
            mask = masking.choose_frames(face_lens, W, FRAME_PROB, gen)
        target_mask = mask
        if kl:
            target_mask = mask & (soft.sum(-1) > 0)
            if not target_mask.any():
                raise self._no_target(task, "no masked face has a soft label")
        rows, cols = self._indices(target_mask, device)
        out = self._run(batch, face_mask=mask.to(device, non_blocking=True))
        h = self._frame_targets(out, "faces", rows, cols)
        if kl:
            target = batch["soft_labels"][rows, cols].float()
            pred = self.mrckl_head(h).float()
            loss = F.kl_div(F.log_softmax(pred, -1), target, reduction="batchmean")
            return TaskOutput(loss, int(target.shape[0]), {"kl": loss.detach()})
        target = faces[rows, cols].float()
        pred = self.mrfr_head(h).float()
        loss = F.mse_loss(pred, target)
        return TaskOutput(loss, int(target.shape[0]), {"mse": loss.detach()})

    def _vnce(self, batch, host, gen) -> TaskOutput:
        faces = batch.get("faces")
        if faces is None:
            raise self._no_target("vnce", "the batch has no faces")
        device = faces.device
        face_lens = torch.as_tensor(host["face_lens"])
        if int(face_lens.sum()) < 2:
            raise self._no_target("vnce", f"{int(face_lens.sum())} face(s) in the whole batch: "
                                  "nothing to contrast a masked face with")
        W = faces.shape[1]
        mask = masking.choose_frames(face_lens, W, FRAME_PROB, gen)
        real = torch.arange(W)[None, :] < face_lens[:, None]
        # index of each masked frame among the batch's real frames (row-major, as real.nonzero)
        order = (real.flatten().cumsum(0) - 1).view(real.shape)
        labels = order[mask].to(device, non_blocking=True)
        rows, cols = self._indices(mask, device)
        real_rows, real_cols = self._indices(real, device)
        out = self._run(batch, face_mask=mask.to(device, non_blocking=True))
        q = self.vnce_head.queries(self._frame_targets(out, "faces", rows, cols))  # (M, hidden)
        # (N, hidden): every real frame, stop-gradient at the encodings (docs/TRAINER.md)
        k = self.vnce_head.keys(out.face_feats[real_rows, real_cols].detach())
        with torch.autocast(device.type, enabled=False):  # similarities in fp32
            logits = q @ k.t() / self.vnce_temperature
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean().detach()
        return TaskOutput(loss, int(labels.numel()), {"acc": acc})

    def _speech(self, task, batch, host, gen) -> TaskOutput:
        speech = batch.get("speech")
        if speech is None:
            raise self._no_target(task, "the batch has no speech")
        device = speech.device
        lens = host.get("speech_lens")
        lens = (torch.full((speech.shape[0],), speech.shape[1]) if lens is None
                else torch.as_tensor(lens))
        if not (lens > 0).any():
            raise self._no_target(task, "every example has 0 speech frames")
        mask = masking.choose_frames(lens, speech.shape[1], FRAME_PROB, gen)
        rows, cols = self._indices(mask, device)
        out = self._run(batch, speech_mask=mask.to(device, non_blocking=True))
        h = self._frame_targets(out, "speech", rows, cols)
        target = speech[rows, cols].float()
        loss = F.mse_loss(self.msrfr_head(h).float(), target)
        return TaskOutput(loss, int(target.shape[0]), {"mse": loss.detach()})
