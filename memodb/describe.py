"""``memo db stats``: what a feature or text database (or a folder of split text databases)
holds, and optional per-row Parquet files. :func:`stats` picks the kind."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import DatabaseError
from .store.ids import KEYS_KEY, id_to_key, key_to_id
from .store.manifest import read_manifest
from .store.reader import FeatureDB, open_env
from .store.textcodec import decode_example, flat_input_ids
from .store.textdb import is_text_db
from .text.splits import SPLITS_FILE

# Text length (WordPiece pieces) histogram: inclusive bounds, None = no upper bound.
LENGTH_BINS = ((1, 5), (6, 10), (11, 20), (21, 30), (31, 50), (51, 100), (101, None))


def stats(path, parquet=None) -> dict:
    """Statistics of a feature database, a text database or a folder of split text dbs."""
    path = Path(path)
    if is_text_db(path) or (path / SPLITS_FILE).is_file():
        return text_stats(path, parquet=parquet)
    return feature_stats(path, parquet=parquet)


def feature_stats(path, parquet=None) -> dict:
    """Segment count, kept-frame (nbb) distribution and array dims of one feature database.

    With ``parquet``, also write one row per segment (key, segment id, faces) to that file.
    """
    db = FeatureDB(path)
    nbb_map = db.nbb() or {k: _length(db, k) for k in db.keys()}
    nbb = np.fromiter(nbb_map.values(), dtype=np.int64, count=len(nbb_map))
    keys = db.keys()
    sample = db[keys[0]] if keys else {}
    out = {
        "path": str(Path(path)),
        "kind": (db.manifest or {}).get("kind", "feature (no memo manifest)"),
        "segments": len(keys),
        "empty": int((nbb == 0).sum()),
        "nbb": {"mean": float(nbb.mean()) if len(nbb) else 0.0,
                "median": float(np.median(nbb)) if len(nbb) else 0.0,
                "p80": float(np.percentile(nbb, 80)) if len(nbb) else 0.0,
                "max": int(nbb.max()) if len(nbb) else 0,
                "total": int(nbb.sum()),
                # segments per frame count, ascending: [{"faces": n, "segments": count}]
                "histogram": [{"faces": int(n), "segments": int(c)}
                              for n, c in zip(*np.unique(nbb, return_counts=True))]},
        "arrays": {k: {"dtype": v.dtype.str, "dims": list(v.shape[1:])} for k, v in sample.items()},
    }
    if db.manifest:
        out["options"] = db.manifest.get("options")
    if parquet is not None:
        write_parquet(nbb_map, parquet)
    return out


def _length(db: FeatureDB, key: str) -> int:
    return len(db[key].get("features", ()))


def write_parquet(nbb_map: dict, file) -> None:
    """One row per segment: key, segment id, faces (kept frame count)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = sorted(nbb_map)
    table = pa.table({"key": keys, "segment_id": [key_to_id(k) for k in keys],
                      "faces": pa.array([nbb_map[k] for k in keys], pa.int32())})
    pq.write_table(table, file)


# --------------------------------------------------------------------------- text databases

def text_stats(path, parquet=None) -> dict:
    """Texts, length histogram, labels, lexicon coverage, split and faces of a text database.

    ``path`` is one text database or a folder of split databases (``splits.json``): then the
    result holds each split's statistics under ``splits`` and their roles under ``roles``.
    With ``parquet``, also write one row per text (id, split, text_len, faces, label); for a
    split folder the rows of every split go into the one file.
    """
    path = Path(path)
    if not is_text_db(path) and (path / SPLITS_FILE).is_file():
        out, rows = _split_folder_stats(path)
    else:
        out, rows = _text_db_stats(path)
    if parquet is not None:
        _write_text_parquet(rows, parquet)
    return out


def _split_folder_stats(folder: Path) -> tuple[dict, list]:
    try:
        body = json.loads((folder / SPLITS_FILE).read_text(encoding="utf-8"))
        entries = body["splits"]
        assert isinstance(entries, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DatabaseError(f"{folder / SPLITS_FILE}: not a readable splits file ({exc}); "
                            "rebuild the text databases") from None
    per, roles, rows = {}, {}, []
    for name, entry in entries.items():
        db_dir = folder / entry.get("db", name)
        if not (db_dir / "data.mdb").is_file():
            raise DatabaseError(f"{folder / SPLITS_FILE} lists split {name!r} but {db_dir} "
                                "is not a database; rebuild the text databases")
        s, r = _text_db_stats(db_dir, split=name)
        per[name] = s
        roles[name] = entry.get("role")
        rows.extend(r)
    return {"path": str(folder), "kind": "splits", "seed": body.get("seed"),
            "roles": roles, "splits": per}, rows


def _text_db_stats(path: Path, split: str | None = None) -> tuple[dict, list]:
    """One pass over the values (one read transaction, a cursor) -> (stats, parquet rows)."""
    manifest = read_manifest(path) or {}
    split_info = manifest.get("split")
    if split is None and split_info:
        split = split_info.get("name")
    ids, lengths, labels, emo_texts = [], [], [], 0
    emo_pieces = 0
    has_emo = False
    type_pieces: dict[int, int] = {}
    type_words: dict[int, int] = {}
    env = open_env(path)
    with env.begin(buffers=True) as txn:
        for key, buf in txn.cursor():
            key = bytes(key)
            if key == KEYS_KEY:
                continue
            text_id = key.decode("utf-8", "backslashreplace")
            try:
                ex = decode_example(buf)
                input_ids, nested_words = flat_input_ids(ex.get("input_ids") or [])
            except DatabaseError as exc:
                raise DatabaseError(f"{path}: text {text_id!r}: {exc}; rebuild the text "
                                    "database") from None
            ids.append(text_id)
            lengths.append(len(input_ids))
            target = ex.get("target")
            labels.append(target if isinstance(target, int) else None)
            types = ex.get("emo_type_ids")
            if types is not None:
                has_emo = True
                n_emo = len(types) - types.count(0)
                if n_emo:
                    emo_texts += 1
                    emo_pieces += n_emo
                    words = nested_words or ex.get("word_ids") or range(len(types))
                    seen = set()
                    for t, w in zip(types, words):
                        if t:
                            type_pieces[t] = type_pieces.get(t, 0) + 1
                            if (t, w) not in seen:
                                seen.add((t, w))
                                type_words[t] = type_words.get(t, 0) + 1
            elif "emo_input_ids" in ex:  # other tools: the emotion piece ids only
                has_emo = True
                n_emo = len(ex["emo_input_ids"])
                emo_texts += n_emo > 0
                emo_pieces += n_emo
    lens = np.asarray(lengths, dtype=np.int64)
    faces, faces_info = _faces(path, manifest, ids)
    out = {
        "path": str(path),
        "kind": "text" if manifest else "text (no memo manifest)",
        "split": ({"name": split_info.get("name"), "role": split_info.get("role")}
                  if split_info else ({"name": split, "role": None} if split else None)),
        "texts": len(ids),
        "length": _length_stats(lens),
        "labels": _label_stats(labels, manifest),
        "lexicon": (_lexicon_stats(len(ids), int(lens.sum()), emo_texts, emo_pieces,
                                   type_pieces, type_words, manifest) if has_emo else None),
        "faces": faces_info,
    }
    rows = [{"id": i, "split": split, "text_len": n, "faces": f, "label": lab}
            for i, n, f, lab in zip(ids, lengths, faces, labels)]
    return out, rows


def _length_stats(lens: np.ndarray) -> dict:
    n = len(lens)
    hist = []
    for lo, hi in LENGTH_BINS:
        inside = (lens >= lo) if hi is None else ((lens >= lo) & (lens <= hi))
        hist.append({"bin": f"{lo}-{hi}" if hi is not None else f">{lo - 1}", "lo": lo,
                     "hi": hi, "count": int(inside.sum())})
    return {"mean": float(lens.mean()) if n else 0.0,
            "median": float(np.median(lens)) if n else 0.0,
            "p95": float(np.percentile(lens, 95)) if n else 0.0,
            "min": int(lens.min()) if n else 0,
            "max": int(lens.max()) if n else 0,
            "total": int(lens.sum()),
            "empty": int((lens == 0).sum()),
            "histogram": hist}


def _label_stats(labels: list, manifest: dict) -> dict | None:
    info = manifest.get("labels") or {}
    names = info.get("names")
    counts: dict[int, int] = {}
    unlabelled = 0
    for lab in labels:
        if lab is None:
            unlabelled += 1
        else:
            counts[lab] = counts.get(lab, 0) + 1
    if not counts and not info:
        return None
    known = list(range(len(names))) if names else list(info.get("set") or [])
    order = sorted(set(known) | set(counts))
    return {"names": list(names) if names else None,
            "counts": [{"label": k, "name": names[k] if names and 0 <= k < len(names) else None,
                        "count": counts.get(k, 0)} for k in order],
            "unlabelled": unlabelled}


def _lexicon_stats(texts, pieces, emo_texts, emo_pieces, type_pieces, type_words,
                   manifest) -> dict:
    cats = list((manifest.get("lexicon") or {}).get("categories") or [])
    ids = sorted(set(range(1, len(cats) + 1)) | set(type_pieces))
    return {
        "texts_with_emotion": emo_texts,
        "texts_fraction": emo_texts / texts if texts else 0.0,
        "emotion_pieces": emo_pieces,
        "pieces_fraction": emo_pieces / pieces if pieces else 0.0,
        "categories": [{"type_id": t, "name": cats[t - 1] if 0 < t <= len(cats) else None,
                        "pieces": type_pieces.get(t, 0), "words": type_words.get(t, 0)}
                       for t in ids],
    }


def _faces(path: Path, manifest: dict, ids: list) -> tuple[list, dict | None]:
    """Faces per text from the linked feature database (manifest ``img_db.path``, relative
    to the text database). Returns (per-text faces or None, summary or None)."""
    link = manifest.get("img_db")
    if not link or not link.get("path"):
        return [None] * len(ids), None
    img_path = Path(os.path.normpath(path / link["path"]))
    info = {"db": str(img_path), "available": False}
    if not (img_path / "data.mdb").is_file():
        return [None] * len(ids), info
    img = FeatureDB(img_path)
    want = link.get("checksum")
    have = (img.manifest or {}).get("checksum")
    nbb = img.nbb()
    keys = None if nbb else set(img.keys())
    faces = []
    for i in ids:
        key = id_to_key(i)
        if key in nbb:
            faces.append(int(nbb[key]))
        elif keys is not None and key in keys:
            faces.append(len(img[key].get("features", ())))
        else:
            faces.append(None)
    got = np.asarray([f for f in faces if f is not None], dtype=np.int64)
    n = len(got)
    info.update(available=True,
                checksum_ok=(want == have) if want is not None and have is not None else None,
                missing=len(faces) - n,
                mean=float(got.mean()) if n else 0.0,
                median=float(np.median(got)) if n else 0.0,
                min=int(got.min()) if n else 0,
                max=int(got.max()) if n else 0,
                total=int(got.sum()))
    return faces, info


def _write_text_parquet(rows: list, file) -> None:
    """One row per text: id, split, text_len (int32), faces and label (int32 or null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("split", pa.string()),
                        ("text_len", pa.int32()), ("faces", pa.int32()),
                        ("label", pa.int32())])
    table = pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)
    pq.write_table(table, file)
