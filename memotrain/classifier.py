"""The emotion classifier that fine-tuning trains and evaluates (``memotrain.recipes.finetune``).

:class:`Classifier` puts a head (``emocls``, ``vqa`` or the MLM ``prompt``) on a
:class:`MemoBert`; :func:`load_classifier` rebuilds it from a fine-tuning checkpoint
(``best.pt``); :class:`Prompt` and :class:`Batcher` shape its batches (docs/TRAINER.md
"Fine-tuning").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from memodb.store.textdb import TextDB
from memotrain.checkpoint import load_checkpoint, load_model
from memotrain.data import MemoDataset, collate
from memotrain.engine import TrainError
from memotrain.model import MemoBert


class FinetuneError(TrainError):
    """Fine-tuning cannot run on these databases (labels missing, an evaluation example that
    does not fit, an output folder of another config)."""


class Classifier(nn.Module):
    """A :class:`MemoBert` with a classification head; ``forward(batch) -> (B, C)`` logits.

    ``emocls``: Dropout(0.1), Linear(h, C); ``vqa``: Linear(h, 2h), GELU, LayerNorm,
    Linear(2h, C), both on the pooled [CLS]. ``prompt``: the model's MLM head at each example's
    ``prompt_pos`` (the [MASK]), restricted to the ``label_ids`` (one token per class)."""

    def __init__(self, model: MemoBert, head: str, n_classes: int, label_ids=None,
                 dropout: float = 0.1):
        super().__init__()
        self.model, self.kind, self.n_classes = model, head, int(n_classes)
        H, eps = model.config.hidden, model.config.layer_norm_eps
        if head == "emocls":
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(H, n_classes))
        elif head == "vqa":
            self.head = nn.Sequential(nn.Linear(H, 2 * H), nn.GELU(),
                                      nn.LayerNorm(2 * H, eps=eps), nn.Linear(2 * H, n_classes))
        elif head == "prompt":
            if label_ids is None or len(label_ids) != n_classes:
                raise FinetuneError(f"the prompt head needs one label word per class "
                                    f"({n_classes}), got {label_ids}")
            self.head = None
        else:
            raise FinetuneError(f"unknown head {head!r}")
        self.register_buffer("label_ids", torch.tensor(label_ids or [], dtype=torch.long),
                             persistent=True)
        if self.head is not None:
            for m in self.head.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=model.config.initializer_range)
                    nn.init.zeros_(m.bias)

    def forward(self, batch: dict) -> torch.Tensor:
        out = self.model(batch["input_ids"], batch["text_lens"], batch.get("faces"),
                         batch.get("face_lens"), None, batch.get("speech"),
                         batch.get("speech_lens"))
        if self.head is not None:
            return self.head(out.pooled)
        rows = torch.arange(len(batch["prompt_pos"]), device=out.hidden.device)
        h = self.model.mlm.transform(out.hidden[rows, batch["prompt_pos"]])  # text comes first
        w = self.model.mlm.decoder.weight[self.label_ids]  # the label words' rows only
        return h @ w.t() + self.model.mlm.bias[self.label_ids]


def load_classifier(path, device="cpu") -> tuple[Classifier, dict]:
    """The classifier of a fine-tuning checkpoint (``best.pt``) and its ``finetune`` record
    (labels, head, label words, prompt ids, step, validation metrics)."""
    ckpt = load_checkpoint(path)
    info = ckpt.get("finetune")
    if not isinstance(info, dict):
        raise FinetuneError(f"{path}: not a fine-tuning checkpoint (no 'finetune' record); "
                            "use memotrain.checkpoint.load_model for an encoder")
    clf = Classifier(load_model(ckpt), info["head"], len(info["labels"]),
                     info.get("label_ids") or None)
    if clf.head is not None:
        clf.head.load_state_dict(info["head_state"])
    return clf.to(device), info


# ----------------------------------------------------------------------------- batches

class Prompt:
    """``"{text} i am [MASK] ."`` as token ids around the text, and the label words' ids."""

    def __init__(self, template: str, label_words, txt_db, vocab=None):
        from memodb.text.wordpiece import WordPieceTokenizer, bundled_vocab_dir, load_vocab

        db = TextDB(txt_db)
        meta, manifest = db.meta, db.manifest or {}
        candidates = [vocab] if vocab else [(manifest.get("vocab") or {}).get("file"),
                                            bundled_vocab_dir()]
        want = meta.get("vocab_sha256")
        voc = None
        for c in candidates:
            if c and Path(c).exists():
                v = load_vocab(c)
                if want is None or v.sha256 == want:
                    voc = v
                    break
        if voc is None:
            raise FinetuneError(f"{txt_db}: cannot find the vocabulary its texts were "
                                f"tokenised with (vocab_sha256 {want}); give prompt.vocab (the "
                                "folder of that vocab.txt)")
        tok = WordPieceTokenizer(voc)
        before, _, after = template.partition("{text}") if "{text}" in template else \
            ("", "", template)

        def encode(part):
            ids = []
            for word in part.split():
                ids.extend([voc.ids["MASK"]] if word == "[MASK]" else tok.encode(word).ids)
            return ids

        self.before, self.after = encode(before), encode(after)
        self.mask_id = voc.ids["MASK"]
        ids = self.before + self.after
        self.mask_offset = ids.index(self.mask_id)  # in before + after
        self.label_ids = []
        for w in label_words:
            pieces = tok.encode(w)
            if len(pieces.ids) != 1:
                raise FinetuneError(f"prompt label word {w!r} is {len(pieces.ids)} word pieces "
                                    f"({' '.join(pieces.pieces)}) in {voc.name}; each label "
                                    "word must be one token: choose another word "
                                    "(prompt.label_words)")
            self.label_ids.append(pieces.ids[0])
        if len(set(self.label_ids)) != len(self.label_ids):
            raise FinetuneError(f"prompt label words {list(label_words)} repeat a token")

    def __len__(self) -> int:
        return len(self.before) + len(self.after)


class Batcher:
    """``collate`` for fine-tuning: the modalities kept (text removed = ``[CLS] [SEP]``, faces
    or speech removed = absent), the prompt inserted around the text, ``prompt_pos``."""

    def __init__(self, modalities, prompt: Prompt | None = None):
        self.modalities = tuple(modalities)
        self.prompt = prompt

    def item(self, it: dict) -> dict:
        it = dict(it)
        if "faces" not in self.modalities:
            it.pop("faces", None)
            it.pop("soft_labels", None)
        if "speech" not in self.modalities:
            it.pop("speech", None)
        ids, words = it["input_ids"], it["word_ids"]
        emo = it.get("emo_type_ids")
        if "text" not in self.modalities:
            ids, words = ids[[0, -1]], words[[0, -1]]
            emo = None if emo is None else emo[[0, -1]]
        p = self.prompt
        if p is not None:
            n_words = int(words.max()) + 1 if len(words) > 2 else 0
            b, a = np.asarray(p.before, np.int64), np.asarray(p.after, np.int64)
            ids = np.concatenate([ids[:1], b, ids[1:-1], a, ids[-1:]])
            words = np.concatenate([words[:1], n_words + np.arange(len(b)), words[1:-1],
                                    n_words + len(b) + np.arange(len(a)), words[-1:]])
            if emo is not None:
                emo = np.concatenate([emo[:1], np.zeros(len(b), np.int64), emo[1:-1],
                                      np.zeros(len(a), np.int64), emo[-1:]])
            m = p.mask_offset
            it["prompt_pos"] = 1 + m if m < len(b) else len(ids) - 1 - len(a) + (m - len(b))
        it["input_ids"], it["word_ids"] = ids, words
        if emo is None:
            it.pop("emo_type_ids", None)
        else:
            it["emo_type_ids"] = emo
        return it

    def __call__(self, items: list[dict]) -> dict:
        items = [self.item(it) for it in items]
        batch = collate(items)
        if self.prompt is not None:
            batch["prompt_pos"] = torch.tensor([it["prompt_pos"] for it in items])
        return batch

    def lengths(self, ds: MemoDataset) -> np.ndarray:
        """Tokens per example of ``ds`` as this batcher shapes it (for the token budget)."""
        n = (ds.text_lens + 2 if "text" in self.modalities else np.full(len(ds), 2)) \
            + (len(self.prompt) if self.prompt is not None else 0)
        if "faces" in self.modalities and ds.face_lens is not None:
            n = n + ds.face_lens
        if "speech" in self.modalities and ds.speech_lens is not None:
            n = n + ds.speech_lens
        return np.asarray(n, dtype=np.int64)
