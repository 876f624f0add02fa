"""``memo db stats``: what a feature database holds, and per-segment rows for Parquet."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .ids import key_to_id
from .reader import FeatureDB


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
                "total": int(nbb.sum())},
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
