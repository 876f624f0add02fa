"""Names of feature databases and their nbb files (docs/FORMAT.md section 3)."""
from __future__ import annotations

from pathlib import Path


def fmt_th(conf_th: float) -> str:
    """Threshold as Python writes a float: 0 and 0.0 both give ``0.0``."""
    return repr(float(conf_th))


def db_name(conf_th: float, max_bb: int, min_bb: int) -> str:
    return f"feat_th{fmt_th(conf_th)}_max{int(max_bb)}_min{int(min_bb)}"


def nbb_name(conf_th: float, max_bb: int, min_bb: int) -> str:
    return f"nbb_th{fmt_th(conf_th)}_max{int(max_bb)}_min{int(min_bb)}.json"


def nbb_path_for(db_dir) -> Path | None:
    """The nbb json beside a database directory (``feat_X`` -> ``nbb_X.json``), if any."""
    db_dir = Path(db_dir)
    name = db_dir.name
    candidates = []
    if name.startswith("feat_"):
        candidates.append(db_dir.parent / ("nbb_" + name[len("feat_"):] + ".json"))
    candidates.append(db_dir.parent / f"nbb_{name}.json")
    for c in candidates:
        if c.exists():
            return c
    return None
