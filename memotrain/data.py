"""Datasets over memo databases and the batch they collate into.

:class:`MemoDataset` is one corpus (a text database plus face / raw-crop / speech databases),
:class:`ConcatDataset` several behind one index, :func:`collate` the batch contract the model
and the tasks consume. Items, the batch table and the filtering rules: docs/TRAINER.md "Data
and batches".
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from memodb.errors import DatabaseError, MemoError
from memodb.store.ids import id_to_key
from memodb.store.reader import FeatureDB
from memodb.store.textcodec import flat_input_ids
from memodb.store.textdb import TextDB

log = logging.getLogger(__name__)

# the batch's lengths: they stay on the host (to_device), where the model builds its layout
HOST_KEYS = ("text_lens", "face_lens", "speech_lens")
IGNORE_TARGET = -100  # torch.nn.functional.cross_entropy's default ignore_index
# frame features are handed on in their stored dtype when it is one of these (the model casts)
FRAME_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
MAX_LISTED = 5  # ids named per kind of dropped text


class DataError(MemoError):
    """A dataset cannot be built from these databases and settings."""


# --------------------------------------------------------------------------------------------
# compact index pieces


class StringArray:
    """An immutable list of str as one utf-8 blob plus int64 offsets (two numpy arrays: no
    per-item Python objects, so forked workers never copy it page by page)."""

    __slots__ = ("blob", "offsets")

    def __init__(self, strings):
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)),
                      out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else \
            np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, index) -> StringArray:
        return StringArray([self[int(i)] for i in index])

    def __getstate__(self):
        return (self.blob, self.offsets)

    def __setstate__(self, state):
        self.blob, self.offsets = state


class ConcatIndex:
    """Global index over datasets of the given sizes: ``locate(i) -> (dataset, local index)``
    by a binary search in one int64 offsets array."""

    def __init__(self, sizes):
        sizes = np.asarray(sizes, dtype=np.int64)
        if sizes.ndim != 1 or (sizes < 0).any():
            raise DataError(f"dataset sizes must be counts, not {sizes!r}")
        self.offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} outside 0..{n - 1}")
        i = int(i) % n
        d = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return d, i - int(self.offsets[d])

    def locate_many(self, index) -> tuple[np.ndarray, np.ndarray]:
        index = np.asarray(index, dtype=np.int64)
        d = np.searchsorted(self.offsets, index, side="right") - 1
        return d, index - self.offsets[d]

    def global_index(self, dataset: int, local: int) -> int:
        if not 0 <= local < self.offsets[dataset + 1] - self.offsets[dataset]:
            raise IndexError(f"index {local} outside dataset {dataset}")
        return int(self.offsets[dataset]) + int(local)


# --------------------------------------------------------------------------------------------
# the dataset


def _max_bb(db: FeatureDB) -> int | None:
    """The ``max_bb`` a feature database was built with (manifest, else its directory name)."""
    m = db.manifest
    if m and isinstance(m.get("options"), dict) and m["options"].get("max_bb"):
        return int(m["options"]["max_bb"])
    found = re.search(r"_max(\d+)(?:_|$)", db.path.name)
    return int(found.group(1)) if found else None


def default_frame_limit(db, positions: int) -> int:
    """Frames to keep per example when none is given: the feature database's ``max_bb``
    (every frame it holds), at most the model's ``positions``."""
    stored = _max_bb(FeatureDB(db))
    return positions if stored is None else min(stored, positions)


def _frame_counts(db: FeatureDB, keys: list[str]) -> np.ndarray:
    """Stored frame count per key from the nbb json (-1: segment not in the database).
    Segments the nbb json does not list are looked up (and read, to count their frames)."""
    nbb = db.nbb()
    out = np.empty(len(keys), dtype=np.int32)
    stored = None
    for i, k in enumerate(keys):
        n = nbb.get(k)
        if n is None:
            if stored is None:
                stored = set(db.keys())
            n = len(db[k].get("features", ())) if k in stored else -1
        out[i] = n
    return out


def _crop_size(db: FeatureDB, name: str) -> int:
    """The crop side of a merged raw-crop database; DataError with the fix otherwise."""
    m = db.manifest or {}
    if m.get("kind") != "rawimg":
        what = "has no memo manifest" if not m else f"is a {m.get('kind')} database"
        raise DataError(f"{db.path} ({name}) {what}, not a raw face-crop database (fix: build "
                        "one with memo db rawimg-db; stored face features go in img_db)")
    if m.get("shard") or (m.get("options") or {}).get("shard"):
        raise DataError(f"{db.path} ({name}) is one shard of a raw-crop build, its crops not "
                        "yet normalised (fix: join the shards with memo db merge)")
    size = (m.get("options") or {}).get("size")
    if not isinstance(size, int) or size < 1:
        raise DataError(f"{db.path} ({name}): its manifest records no crop size (fix: "
                        "rebuild it with memo db rawimg-db)")
    return size


def _feature_dim(db: FeatureDB, keys, counts) -> int | None:
    arrays = (db.manifest or {}).get("arrays") or {}
    shape = (arrays.get("features") or {}).get("shape")
    if shape and len(shape) == 2 and shape[1]:
        return int(shape[1])
    for k, n in zip(keys, counts):
        if n > 0:
            return int(db[k]["features"].shape[-1])
    return None


class MemoDataset(torch.utils.data.Dataset):
    """Text db (+ face feature db) (+ speech feature db) of one corpus; see docs/TRAINER.md
    "Data and batches".

    - ``max_text_len``: word pieces as stored (without [CLS]/[SEP]); longer texts are dropped.
      The model needs ``max_text_positions >= max_text_len + 2``.
    - ``max_faces`` / ``max_speech``: frames kept per example (default: each database's
      ``max_bb``); ``min_faces``: texts with fewer faces (after truncation) are dropped.
    - ``rawimg_db``: raw face crops instead of ``img_db`` features (``crop_size`` is their
      side, ``face_dim`` None).
    - ``name``: shown in reports (default: the text db's dataset name or folder name).
    """

    def __init__(self, txt_db, img_db=None, speech_db=None, *, max_text_len: int,
                 max_faces: int | None = None, max_speech: int | None = None,
                 min_faces: int = 0, name: str | None = None, rawimg_db=None):
        if int(max_text_len) < 1:
            raise DataError(f"max_text_len {max_text_len} must be at least 1")
        if img_db is not None and rawimg_db is not None:
            raise DataError(f"give img_db (face features: {img_db}) or rawimg_db (raw crops: "
                            f"{rawimg_db}), not both")
        if min_faces and img_db is None and rawimg_db is None:
            raise DataError(f"min_faces {min_faces} needs a face database (img_db or "
                            "rawimg_db)")
        self.txt_path = Path(txt_db)
        self.crops = rawimg_db is not None  # faces are raw crops (a face CNN encodes them)
        face_db = rawimg_db if self.crops else img_db
        self.img_path = None if face_db is None else Path(face_db)
        self.speech_path = None if speech_db is None else Path(speech_db)
        self.max_text_len = int(max_text_len)
        self.min_faces = int(min_faces)
        txt = TextDB(self.txt_path)  # a fresh reader: its side-file dicts die with this frame
        meta = txt.meta
        try:
            self.cls, self.sep = int(meta["CLS"]), int(meta["SEP"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.txt_path}/meta.json has no CLS / SEP ids; rebuild the "
                            "text database") from None
        mask, v_range = meta.get("MASK", 103), meta.get("v_range", (999, 30522))
        if not (isinstance(mask, int) and isinstance(v_range, (list, tuple))
                and len(v_range) == 2 and all(isinstance(v, int) for v in v_range)):
            raise DataError(f"{self.txt_path}/meta.json: MASK {mask!r} / v_range {v_range!r} "
                            "are not token ids; rebuild the text database")
        self.mask_id, self.v_range = mask, tuple(v_range)
        self.name = name or meta.get("dataset") or self.txt_path.name

        id2len = txt.id2len
        all_ids = list(id2len)
        lens = np.fromiter((id2len[i] for i in all_ids), np.int64, len(all_ids))
        del id2len
        keep = np.ones(len(all_ids), dtype=bool)
        self.counts = {"texts": len(all_ids)}
        self.dropped: dict[str, list[str]] = {}

        def drop(kind, mask):
            mask = mask & keep
            self.counts[kind] = int(mask.sum())
            if mask.any():
                self.dropped[kind] = [all_ids[i] for i in np.flatnonzero(mask)[:MAX_LISTED]]
            keep[mask] = False

        drop("too_long", lens > self.max_text_len)
        drop("empty", lens < 1)

        # each text's segment key, through txt2img (original text dbs key texts by a counter)
        t2i = txt.txt2img if (self.txt_path / "txt2img.json").exists() else {}
        img_keys = [t2i.get(i) or id_to_key(i) for i in all_ids]
        del t2i
        self.face_dim = self.speech_dim = self.crop_size = None
        self.max_faces = self.max_speech = None
        faces = speech = None
        if self.img_path is not None:
            db = FeatureDB(self.img_path)
            if self.crops:
                self.crop_size = _crop_size(db, "rawimg_db")
            elif (db.manifest or {}).get("kind") == "rawimg":
                raise DataError(f"{self.img_path} (img_db) is a raw face-crop database, not "
                                "face features (fix: give it as rawimg_db, with a model "
                                "whose face CNN encodes crops, or extract features from it "
                                "with memo extract-faces)")
            self.max_faces = self._frame_limit(max_faces, db, "max_faces")
            faces = _frame_counts(db, img_keys)
            drop("no_features", faces < 0)
            self.counts["faces_truncated"] = int((keep & (faces > self.max_faces)).sum())
            faces = np.minimum(faces, self.max_faces)
            drop("too_few_faces", faces < self.min_faces)
            if not self.crops:
                self.face_dim = _feature_dim(db, img_keys, faces)
        if self.speech_path is not None:
            db = FeatureDB(self.speech_path)
            self.max_speech = self._frame_limit(max_speech, db, "max_speech")
            speech = _frame_counts(db, img_keys)
            drop("no_speech", speech < 0)
            self.counts["speech_truncated"] = int((keep & (speech > self.max_speech)).sum())
            speech = np.minimum(speech, self.max_speech)
            self.speech_dim = _feature_dim(db, img_keys, speech)

        idx = np.flatnonzero(keep)
        self.counts["kept"] = len(idx)
        self.ids = StringArray([all_ids[i] for i in idx])
        if all(img_keys[i] == id_to_key(all_ids[i]) for i in idx):
            self.img_keys = None  # the usual case: the key is the id + ".npz"
        else:
            self.img_keys = StringArray([img_keys[i] for i in idx])
        del img_keys
        self.text_lens = lens[idx].astype(np.int32)
        self.face_lens = None if faces is None else faces[idx].astype(np.int32)
        self.speech_lens = None if speech is None else speech[idx].astype(np.int32)
        self._readers = None
        dropped = {k: v for k, v in self.counts.items()
                   if k not in ("texts", "kept") and v}
        if dropped:
            log.warning("%s", self.report())
        if not len(idx):
            raise DataError(f"{self.name}: no example is left ({self.report()})")

    def _frame_limit(self, given, db: FeatureDB, what: str) -> int:
        limit = _max_bb(db) if given is None else int(given)
        if limit is None:
            raise DataError(f"{db.path}: cannot tell its max_bb (no manifest, no _maxN in the "
                            f"name); give {what}")
        if limit < 0:
            raise DataError(f"{what} {limit} must be >= 0")
        return limit

    def report(self) -> str:
        """One line: how many texts were read, kept, dropped and why (with example ids)."""
        parts = [(f"{self.name} ({self.txt_path}): {self.counts['kept']} of "
                 f"{self.counts['texts']} texts kept")]
        why = {"too_long": f"longer than max_text_len {self.max_text_len} pieces (dropped)",
               "empty": "without any word piece (dropped)",
               "no_features": f"segment missing from {self.img_path} (dropped)",
               "too_few_faces": f"fewer than {self.min_faces} faces (dropped)",
               "no_speech": f"segment missing from {self.speech_path} (dropped)",
               "faces_truncated": f"more than max_faces {self.max_faces} faces (truncated)",
               "speech_truncated": f"more than max_speech {self.max_speech} speech frames "
                                   "(truncated)"}
        for kind, text in why.items():
            n = self.counts.get(kind, 0)
            if n:
                ex = self.dropped.get(kind)
                parts.append(f"{n} {text}" + (f", e.g. {', '.join(ex)}" if ex else ""))
        return "; ".join(parts)

    def segment_key(self, i: int) -> str:
        """The segment key (``<segmentId>.npz``) of example ``i``: its text's ``txt2img``
        entry when the text database has one, else the text id's key."""
        return self.img_keys[i] if self.img_keys is not None else id_to_key(self.ids[i])

    # -- sizes --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example in the model's sequence: text + 2 + faces (+ speech), int32."""
        total = self.text_lens + 2
        if self.face_lens is not None:
            total = total + self.face_lens
        if self.speech_lens is not None:
            total = total + self.speech_lens
        return total.astype(np.int32)

    # -- reading ------------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_readers"] = None
        return state

    def _open(self):
        """This process's readers (opened on first use after construction or a fork)."""
        r = self._readers
        if r is None or r[0] != os.getpid():
            r = self._readers = (
                os.getpid(), TextDB(self.txt_path),
                None if self.img_path is None else FeatureDB(self.img_path),
                None if self.speech_path is None else FeatureDB(self.speech_path))
        return r

    def _frames(self, db, key, n, array_names):
        """The first ``n`` frames of each ``(stored name, item name, dtype)`` of ``key``;
        dtype None: as stored when float16 or float32 (lossless), else float32."""
        arrays = db[key]
        out = {}
        for src, dst, dtype in array_names:
            a = arrays.get(src)
            if a is None:
                if src == "features":
                    raise DatabaseError(f"{db.path}: segment {key!r} has no features array")
                continue
            if len(a) < n:
                raise DatabaseError(f"{db.path}: segment {key!r} has {len(a)} {src} frames, its "
                                    f"index says {n}; the database changed since the dataset "
                                    "was built")
            if dtype is None:
                dtype = a.dtype if a.dtype in FRAME_DTYPES else np.float32
            out[dst] = np.asarray(a[:n], dtype=dtype)
        return out

    def __getitem__(self, i: int) -> dict:
        _, txt, img, speech = self._open()
        text_id = self.ids[i]
        ex = txt[text_id]
        try:  # the whole-word layout nests input_ids per word: flattened, words from it
            pieces, words = flat_input_ids(ex.get("input_ids"))
        except DatabaseError as exc:
            raise DatabaseError(f"{self.txt_path}: text {text_id!r}: {exc}; rebuild the text "
                                "database") from None
        if type(pieces) is not list:
            raise DatabaseError(f"{self.txt_path}: text {text_id!r} has no input_ids list; "
                                "rebuild the text database")
        n = int(self.text_lens[i])
        if len(pieces) != n:
            raise DatabaseError(f"{self.txt_path}: text {text_id!r} has {len(pieces)} pieces, "
                                f"id2len.json says {n}; rebuild the text database")
        input_ids = np.empty(n + 2, dtype=np.int64)
        input_ids[0], input_ids[1:-1], input_ids[-1] = self.cls, pieces, self.sep
        word_ids = np.full(n + 2, -1, dtype=np.int64)
        if words is not None:
            word_ids[1:-1] = words
        elif ex.get("word_ids") is not None:
            word_ids[1:-1] = ex["word_ids"]
        else:  # a database without word ids: every piece its own word
            word_ids[1:-1] = np.arange(n)
        item = {"id": text_id, "input_ids": input_ids, "word_ids": word_ids}
        emo = ex.get("emo_type_ids")
        if emo is not None:
            item["emo_type_ids"] = np.zeros(n + 2, dtype=np.int64)
            item["emo_type_ids"][1:-1] = emo
        if ex.get("target") is not None:
            item["target"] = int(ex["target"])
        if img is not None or speech is not None:
            key = self.img_keys[i] if self.img_keys is not None else id_to_key(text_id)
        if img is not None and self.crops:
            item.update(self._frames(img, key, int(self.face_lens[i]),
                                     (("features", "faces", np.float16),)))
            if item["faces"].shape[1:] != (self.crop_size, self.crop_size):
                raise DatabaseError(f"{self.img_path}: segment {key!r} holds crops of shape "
                                    f"{item['faces'].shape[1:]}, its manifest says "
                                    f"{self.crop_size}x{self.crop_size}; rebuild it with memo "
                                    "db rawimg-db")
        elif img is not None:  # features as stored (float16 from memo's builds)
            item.update(self._frames(img, key, int(self.face_lens[i]),
                                     (("features", "faces", None),
                                      ("soft_labels", "soft_labels", np.float32))))
        if speech is not None:
            item.update(self._frames(speech, key, int(self.speech_lens[i]),
                                     (("features", "speech", None),)))
        return item


class ConcatDataset(torch.utils.data.Dataset):
    """Several :class:`MemoDataset` behind one index (a task's corpora). ``lengths`` is the
    concatenation of theirs, for the sampler; ``index.locate(i)`` says where ``i`` lies."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise DataError("no dataset to concatenate")
        self.index = ConcatIndex([len(d) for d in self.datasets])

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([d.lengths for d in self.datasets])

    def __getitem__(self, i: int) -> dict:
        d, j = self.index.locate(i)
        return self.datasets[d][j]


# --------------------------------------------------------------------------------------------
# collate


def _pad(arrays, width, fill, dtype, tail=()):
    out = np.full((len(arrays), width, *tail), fill, dtype=dtype)
    for b, a in enumerate(arrays):
        out[b, :len(a)] = a
    return torch.from_numpy(out)


def _frames(items, name, lens_name, batch):
    """Pad one frame modality (``faces`` / ``speech``) when any item has it: feature vectors
    (n, D) or raw crops (n, S, S), in the items' dtype (float16 as memo's databases store
    them: half the bytes through the worker queue; the widest when items differ)."""
    have = [it.get(name) for it in items]
    if all(a is None for a in have):
        return
    tails = {a.shape[1:] for a in have if a is not None}
    if len(tails) != 1:
        dims = sorted((t[0] if len(t) == 1 else t for t in tails), key=str)
        raise DataError(f"{name} of different dimensions {dims} in one batch (ids "
                        f"{[it['id'] for it in items]}); mix only corpora with the same "
                        "feature extractor (or the same crop size)")
    tail = tails.pop()
    dtype = np.result_type(*(a.dtype for a in have if a is not None))
    have = [np.zeros((0, *tail), dtype) if a is None else a for a in have]
    lens = [len(a) for a in have]
    width = max(lens)
    batch[name] = _pad(have, width, 0.0, dtype, tail)
    batch[lens_name] = torch.tensor(lens, dtype=torch.long)
    if name == "faces" and any(it.get("soft_labels") is not None for it in items):
        soft = [it.get("soft_labels") if it.get("soft_labels") is not None
                else np.zeros((0, 8), np.float32) for it in items]
        batch["soft_labels"] = _pad(soft, width, 0.0, np.float32, (soft[0].shape[1],))


def collate(items: list[dict]) -> dict:
    """Items -> one padded batch (the contract: docs/TRAINER.md "Data and batches")."""
    if not items:
        raise DataError("collate got no item (an empty batch): the sampler must never emit one")
    text_lens = [len(it["input_ids"]) for it in items]
    T = max(text_lens)
    batch = {"input_ids": _pad([it["input_ids"] for it in items], T, 0, np.int64),
             "text_lens": torch.tensor(text_lens, dtype=torch.long),
             "word_ids": _pad([it["word_ids"] for it in items], T, -1, np.int64)}
    if any("emo_type_ids" in it for it in items):
        batch["emo_type_ids"] = _pad([it.get("emo_type_ids", ()) for it in items], T, 0,
                                     np.int64)
    _frames(items, "faces", "face_lens", batch)
    _frames(items, "speech", "speech_lens", batch)
    if any("target" in it for it in items):
        batch["targets"] = torch.tensor([it.get("target", IGNORE_TARGET) for it in items],
                                        dtype=torch.long)
    else:
        batch["targets"] = None
    batch["ids"] = [it["id"] for it in items]
    return batch


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on ``device``, except the lengths (``HOST_KEYS``): the model builds
    its layout from them on the host, without reading the device back."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor)
            and k not in HOST_KEYS else v for k, v in batch.items()}
