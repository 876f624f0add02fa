"""Feature extraction (``memo extract``): a checkpoint run over a corpus, states saved per segment.

    r = extract("run/ckpt/model_step_N.pt", "txt_db", "feats", img_db="img_db", layer=-1)

What is saved, batch invariance and the atomic output: docs/TRAINER.md "memo extract"; the
output format: docs/FORMAT.md section 9.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memodb.errors import MemoError, OutputExistsError
from memodb.progress import progress_bar
from memodb.store.build import Build, Written
from memodb.store.codec import encode_value
from memodb.store.files import file_sha256, fsync_dir
from memodb.store.ids import id_to_key, key_to_id
from memodb.store.manifest import write_json_atomic
from memodb.store.textdb import TextDB
from memotrain.checkpoint import load_model, memo_version
from memotrain.data import MemoDataset, collate, default_frame_limit
from memotrain.engine import resolve_device
from memotrain.sampler import BucketBatchSampler

CHUNK = 2048  # examples per pool: batched by length inside, written in key order
FORMATS = ("lmdb", "parquet")
DTYPES = ("float16", "float32")
EXTRACT_FILE = "extract.json"
LABELS_FILE = "labels.json"
POOLED = "pooler (tanh dense) on the final layer's [CLS] state"


class ExtractError(MemoError):
    """Features cannot be extracted with this checkpoint, these databases or settings."""


@dataclass
class ExtractResult:
    out: Path
    format: str
    layer: int  # resolved: 0 = embeddings, 1..layers
    layers: int  # the model's layer count
    modalities: list  # what was saved, in order: pooled, text[, faces][, speech]
    counts: dict  # the dataset's counts (texts, kept, dropped / truncated by kind), extracted
    report: str  # one line: texts kept, dropped and truncated and why, with example ids
    labelled: int  # extracted texts with a label
    info: dict  # the content of extract.json

    @property
    def extracted(self) -> int:
        return self.counts["extracted"]

    @property
    def dropped(self) -> int:
        return self.counts["texts"] - self.counts["kept"]


# ----------------------------------------------------------------------------- settings

def resolve_layer(layer, layers: int) -> int:
    """``layer`` (None = last, negatives from the end) as an index 0..layers into the hidden
    states (0 = the embeddings)."""
    if layer is None:
        return layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ExtractError(f"layer must be an integer, not {layer!r}")
    if not -(layers + 1) <= layer <= layers:
        raise ExtractError(f"layer {layer} is out of range: the model has {layers} layers, so "
                           f"layer must be in {-(layers + 1)}..{layers} (0 = the embeddings, "
                           f"1..{layers} the layer outputs, -1 = the last)")
    return int(layer) if layer >= 0 else layers + 1 + int(layer)


def _check_modalities(cfg, checkpoint, img_db, speech_db) -> None:
    for db, dim, what, flag in ((img_db, cfg.face_dim, "faces", "--img-db"),
                                (speech_db, cfg.speech_dim, "speech", "--speech-db")):
        if db is not None and not dim:
            field = "face_dim" if what == "faces" else "speech_dim"
            raise ExtractError(f"{db}: the model of {checkpoint} has no {what} modality ({field} "
                               f"is 0); extract without {flag}")


def _limit(given, allowed: int, default: int, what: str, why: str) -> int:
    if given is None:
        return default
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0:
        raise ExtractError(f"{what} must be a count >= 0, not {given!r}")
    if given > allowed:
        raise ExtractError(f"{what} {given} is more than the model takes ({why}); give at most "
                           f"{allowed} or leave it out")
    return int(given)


def _limits(cfg, img_db, speech_db, max_text_len, max_faces, max_speech) -> dict:
    """The dataset limits: given ones checked against the model's position tables; defaults
    are the most the model takes (frames: also at most the database's max_bb)."""
    text_cap = cfg.max_text_positions - 2
    out = {"max_text_len": _limit(max_text_len, text_cap, text_cap, "max_text_len",
                                  f"max_text_positions {cfg.max_text_positions}, [CLS] and "
                                  "[SEP] included")}
    for db, given, cap, key, field in (
            (img_db, max_faces, cfg.max_face_positions, "max_faces", "max_face_positions"),
            (speech_db, max_speech, cfg.max_speech_positions, "max_speech",
             "max_speech_positions")):
        if db is None:
            if given is not None:
                raise ExtractError(f"{key} {given} given without its feature database")
            continue
        out[key] = _limit(given, cap, default_frame_limit(db, cap), key, f"{field} {cap}")
    return out


def _key_order(ds: MemoDataset) -> np.ndarray:
    """Dataset indices in the byte order of their segment keys (through ``txt2img``: the
    order a database is written in); two texts of one segment are an error."""
    keys = [ds.segment_key(i).encode("utf-8") for i in range(len(ds))]
    order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    for a, b in zip(order, order[1:]):
        if keys[a] == keys[b]:
            raise ExtractError(f"{ds.txt_path}: texts {ds.ids[int(a)]!r} and {ds.ids[int(b)]!r} "
                               f"both belong to segment {keys[a].decode()!r} (txt2img.json; "
                               "'/' becomes '-'); outputs are named by segment, one text each: "
                               "build the text database with memo db create-txtdb (one text "
                               "per segment, its sentences joined)")
    return order


# ----------------------------------------------------------------------------- the model

@torch.inference_mode()
def _forward(model, items: list, layer: int, device) -> list:
    """One forward pass over dataset ``items``: per item ``(id, label, {pooled, text[, faces]
    [, speech]: float32 numpy (rows, H)})``."""
    b = collate(items)
    faces, speech = b.get("faces"), b.get("speech")
    model.check_ids(b["input_ids"])  # on the host; the lengths stay there too (no read-back)
    out = model(b["input_ids"].to(device), b["text_lens"],
                faces=None if faces is None else faces.to(device),
                face_lens=None if faces is None else b["face_lens"],
                speech=None if speech is None else speech.to(device),
                speech_lens=None if speech is None else b["speech_lens"],
                output_hidden_states=layer != model.config.layers)
    hidden = out.hidden if out.hidden_states is None else out.hidden_states[layer]
    parts = out.layout.split(hidden.float().cpu())
    pooled = out.pooled.float().cpu().numpy()
    present = ["text"] + (["faces"] if faces is not None else []) + \
        (["speech"] if speech is not None else [])
    return [(it["id"], it.get("target"),
             {"pooled": pooled[k:k + 1], **{m: p[m].numpy() for m in present}})
            for k, (it, p) in enumerate(zip(items, parts))]


def _pools(model, ds, order, sampler, layer, device, bar):
    """Rows ``(segment id, label, states)`` of each pool of :data:`CHUNK` key-ordered
    examples, in key order."""
    pool, pending = 0, {}
    for batch in sampler:
        p = batch[0] // CHUNK  # the sampler never mixes pools in one batch
        if p != pool and pending:
            yield [pending[j] for j in sorted(pending)]
            pending = {}
        pool = p
        rows = _forward(model, [ds[int(order[j])] for j in batch], layer, device)
        rows = [(key_to_id(ds.segment_key(int(order[j]))), *row[1:])  # named by segment
                for j, row in zip(batch, rows)]
        pending.update(zip(batch, rows))
        bar(len(batch))
    if pending:
        yield [pending[j] for j in sorted(pending)]


# ----------------------------------------------------------------------------- writing

def _stored(seg_id: str, states: dict, dtype: np.dtype, checkpoint: str) -> dict:
    """``states`` in the stored dtype; non-finite values (a broken checkpoint, or float16
    overflow) are an error, never written."""
    out = {}
    for m, a in states.items():
        if not np.isfinite(a).all():
            raise ExtractError(f"segment {seg_id!r}: the model of {checkpoint} gives NaN or Inf "
                               f"{m} states; its weights are broken (check the run that wrote "
                               "it)")
        with np.errstate(over="ignore"):  # checked right below
            out[m] = b = np.ascontiguousarray(a, dtype=dtype)
        if not np.isfinite(b).all():
            raise ExtractError(f"segment {seg_id!r}: {m} states exceed the {dtype.name} range "
                               f"(largest magnitude {np.abs(a).max():.3g}); extract with "
                               "dtype float32")
    return out


class _Staged:
    """``out`` built as ``.<name>.partial`` beside it under the lock ``.<name>.lock``;
    :meth:`publish` renames it to ``out``. On an exception the partial is removed."""

    def __init__(self, out: Path, directory: bool):
        self.final, self.directory = out, directory
        self.partial = out.parent / f".{out.name}.partial"
        self._lock_path = out.parent / f".{out.name}.lock"

    def __enter__(self):
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self._lock_path, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OutputExistsError(f"another extraction into {self.final} is running (lock "
                                    f"{self._lock_path}); wait for it or choose another "
                                    "output path") from None
        self._remove_partial()  # left by a killed run
        if self.directory:
            self.partial.mkdir()
        return self

    def _remove_partial(self):
        if self.partial.is_dir() and not self.partial.is_symlink():
            shutil.rmtree(self.partial)
        elif self.partial.exists() or self.partial.is_symlink():
            self.partial.unlink()

    def publish(self) -> None:
        if self.final.exists() or self.final.is_symlink():
            raise OutputExistsError(f"{self.final} appeared while extracting (another "
                                    "process wrote it); it was left alone and this result "
                                    "discarded: delete it or choose another output path")
        os.rename(self.partial, self.final)
        fsync_dir(self.final.parent)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                self._remove_partial()
        finally:
            self._lock.close()
            self._lock_path.unlink(missing_ok=True)
        return False


class _LmdbSink:
    """One feature database per modality in ``folder``; labels.json and extract.json last."""

    def __init__(self, folder: Path, modalities, dtype, hidden: int, limits: dict, info: dict):
        self.folder, self.dtype, self.info = folder, np.dtype(dtype), info
        self.max_rows = {"pooled": 1, "text": limits["max_text_len"] + 2,
                         "faces": limits.get("max_faces"), "speech": limits.get("max_speech")}
        self.hidden = hidden
        final = info["model"]["layers"]  # the pooled vector always comes from the last layer
        self.layers = {m: final if m == "pooled" else info["layer"] for m in modalities}
        source = {"checkpoint": info["checkpoint"], **info["dbs"]}
        self.builds = {m: Build(folder / m, "feature", {
            "modality": m, "layer": self.layers[m], "dtype": self.dtype.name,
            "max_bb": self.max_rows[m]}, source, nbb_file=f"nbb_{m}.json") for m in modalities}
        self.stack = ExitStack()
        self.dbs = {m: self.stack.enter_context(b.stage()) for m, b in self.builds.items()}
        self.nbb = {m: {} for m in modalities}
        self.labels = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)

    @property
    def labelled(self) -> int:
        return len(self.labels)

    def add(self, rows) -> None:
        for seg_id, label, states in rows:
            key = id_to_key(seg_id)
            raw = key.encode("utf-8")
            states = _stored(seg_id, states, self.dtype, self.info["checkpoint"]["path"])
            for m, db in self.dbs.items():
                a = states[m]
                db.put(raw, encode_value({"features": a}))
                self.nbb[m][key] = len(a)
            if label is not None:
                self.labels[seg_id] = int(label)

    def finish(self) -> None:
        for m, db in self.dbs.items():
            rows = list(self.nbb[m].values())
            nbb_file = f"nbb_{m}.json"
            self.builds[m].publish(db, Written({
                "arrays": {"features": {"dtype": self.dtype.str, "shape": [None, self.hidden]}},
                "counts": {"segments": len(rows), "empty": sum(n == 0 for n in rows),
                           "frames_kept": sum(rows)},
                "nbb_file": nbb_file, "extract": EXTRACT_FILE}, {nbb_file: self.nbb[m]}))
        if self.labels:
            write_json_atomic(self.folder / LABELS_FILE, self.labels)
        write_json_atomic(self.folder / EXTRACT_FILE, self.info, indent=1)  # the last file


class _ParquetSink:
    """One Parquet file, one row group per pool; extract.json as the schema's metadata."""

    def __init__(self, path: Path, modalities, dtype, hidden: int, limits: dict, info: dict):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.dtype, self.hidden = pa, np.dtype(dtype), hidden
        self.checkpoint = info["checkpoint"]["path"]
        value = pa.float16() if self.dtype == np.float16 else pa.float32()
        self.frames = [m for m in modalities if m != "pooled"]
        fields = [("id", pa.string()), ("label", pa.int64()), ("pooled", pa.list_(value))]
        fields += [(m, pa.list_(pa.list_(value))) for m in self.frames]
        fields += [(f"n_{m}", pa.int32()) for m in self.frames]
        self.schema = pa.schema(fields, metadata={"memo.extract": json.dumps(info)})
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.labelled = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()
        return False

    def _lists(self, arrays: list, nested: bool):
        """(rows, H) arrays -> list<float> (one vector each, ``nested`` False: pooled, 1 row)
        or list<list<float>> (one list of row vectors each)."""
        pa, H = self.pa, self.hidden
        flat = np.concatenate([a.reshape(-1) for a in arrays])
        rows = [len(a) for a in arrays]
        inner = pa.ListArray.from_arrays(
            pa.array(np.arange(0, sum(rows) * H + 1, H, dtype=np.int32)), pa.array(flat))
        if not nested:
            return inner
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(rows, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), inner)

    def add(self, rows) -> None:
        pa = self.pa
        rows = [(i, label, _stored(i, states, self.dtype, self.checkpoint))
                for i, label, states in rows]
        labels = [None if label is None else int(label) for _, label, _ in rows]
        self.labelled += sum(v is not None for v in labels)
        cols = [pa.array([r[0] for r in rows], pa.string()), pa.array(labels, pa.int64()),
                self._lists([r[2]["pooled"] for r in rows], nested=False)]
        cols += [self._lists([r[2][m] for r in rows], nested=True) for m in self.frames]
        cols += [pa.array([len(r[2][m]) for r in rows], pa.int32()) for m in self.frames]
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def finish(self) -> None:
        self.writer.close()


# ----------------------------------------------------------------------------- extract

def extract(checkpoint, txt_db, out, *, img_db=None, speech_db=None, layer=None,
            fmt: str = "lmdb", dtype: str = "float16", batch_size: int | None = 64,
            max_tokens: int | None = None, device="auto", max_text_len: int | None = None,
            max_faces: int | None = None, max_speech: int | None = None,
            progress: bool = False) -> ExtractResult:
    """Run the model of ``checkpoint`` over ``txt_db`` (+ ``img_db`` faces, + ``speech_db``)
    and save pooled and per-modality states per segment to ``out`` (docs/TRAINER.md "memo extract");
    outputs are named by segment, through the text database's ``txt2img``.

    - ``layer``: hidden state of the per-modality states (0 = embeddings, 1..L, negatives
      from the end; default: the last); the pooled vector always comes from the final layer.
    - ``fmt``: ``lmdb`` (OUT a folder of feature databases) or ``parquet`` (OUT one file);
      ``dtype``: ``float16`` or ``float32`` of the stored values (computed in fp32).
    - ``batch_size`` / ``max_tokens``: batch limits (examples, token budget); the result does
      not depend on them.
    - ``max_text_len`` (pieces, without [CLS]/[SEP]) / ``max_faces`` / ``max_speech``: longer
      texts are dropped, frames beyond the limit truncated (counted in the report); default:
      the most the model's position tables take (frames: and the database's max_bb).
    """
    if fmt not in FORMATS:
        raise ExtractError(f"unknown format {fmt!r} (one of: {', '.join(FORMATS)})")
    if dtype not in DTYPES:
        raise ExtractError(f"unknown dtype {dtype!r} (one of: {', '.join(DTYPES)})")
    out, checkpoint = Path(out), Path(checkpoint)
    if out.exists() or out.is_symlink():
        raise OutputExistsError(f"{out} already exists; delete it or choose another output "
                                "path (memo extract never writes over a previous result)")
    dev = resolve_device(device, error=ExtractError)
    model = load_model(checkpoint, device=dev).eval()
    cfg = model.config
    at = resolve_layer(layer, cfg.layers)
    _check_modalities(cfg, checkpoint, img_db, speech_db)
    limits = _limits(cfg, img_db, speech_db, max_text_len, max_faces, max_speech)
    ds = MemoDataset(txt_db, img_db, speech_db, **limits)
    for dim, want, db, field in ((ds.face_dim, cfg.face_dim, img_db, "face_dim"),
                                 (ds.speech_dim, cfg.speech_dim, speech_db, "speech_dim")):
        if dim is not None and dim != want:
            raise ExtractError(f"{db}: its features are {dim}-d, the model of {checkpoint} takes "
                               f"{want}-d ({field}); use the feature database the model was "
                               "trained with")
    order = _key_order(ds)
    sampler = BucketBatchSampler(ds.lengths[order], batch_size=batch_size,
                                 max_tokens=max_tokens, shuffle=False, pool_size=CHUNK,
                                 ids=lambda j: ds.ids[int(order[j])])
    modalities = ["pooled", "text"] + (["faces"] if img_db is not None else []) + \
        (["speech"] if speech_db is not None else [])
    label_info = (TextDB(txt_db).manifest or {}).get("labels") or {}
    counts = {**ds.counts, "extracted": len(ds)}
    info = {
        "kind": "extract", "memo_version": memo_version(), "format": fmt,
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint)},
        "model": cfg.to_dict(), "layer": at,
        "layer_requested": None if layer is None else int(layer), "pooled": POOLED,
        "modalities": modalities, "dtype": dtype,
        "dbs": {k: None if v is None else str(Path(v).resolve())
                for k, v in (("txt_db", txt_db), ("img_db", img_db), ("speech_db", speech_db))},
        "limits": limits, "counts": counts, "dropped": ds.dropped,
        "label_names": label_info.get("names"),
    }
    sink_type = _LmdbSink if fmt == "lmdb" else _ParquetSink
    with _Staged(out, directory=fmt == "lmdb") as staged:
        with sink_type(staged.partial, modalities, dtype, cfg.hidden, limits, info) as sink, \
                progress_bar(progress, len(ds), f"extract {out.name}") as bar:
            for rows in _pools(model, ds, order, sampler, at, dev, bar):
                sink.add(rows)
            sink.finish()
        staged.publish()
    return ExtractResult(out, fmt, at, cfg.layers, modalities, counts, ds.report(),
                         sink.labelled, info)
