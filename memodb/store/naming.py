"""Names of feature databases and their nbb files (docs/FORMAT.md section 3)."""
from __future__ import annotations

from pathlib import Path


def fmt_th(conf_th: float) -> str:
    """Threshold as Python writes a float: 0 and 0.0 both give ``0.0``."""
    return repr(float(conf_th))


COMPRESSED = "_compressed"  # suffix of the variant whose values are np.savez_compressed bytes


def db_name(conf_th: float, max_bb: int, min_bb: int, compressed: bool = False) -> str:
    return (f"feat_th{fmt_th(conf_th)}_max{int(max_bb)}_min{int(min_bb)}"
            + (COMPRESSED if compressed else ""))


def is_compressed(db_dir) -> bool:
    """A database of the ``_compressed`` variant (the original readers tell it by its name)."""
    return Path(db_dir).name.endswith(COMPRESSED)


def nbb_name(conf_th: float, max_bb: int, min_bb: int) -> str:
    return f"nbb_th{fmt_th(conf_th)}_max{int(max_bb)}_min{int(min_bb)}.json"


def nbb_path_for(db_dir) -> Path | None:
    """The nbb json beside a database directory (``feat_X`` -> ``nbb_X.json``; the
    ``_compressed`` variant shares the plain name's), if any."""
    db_dir = Path(db_dir)
    name = db_dir.name
    if name.endswith(COMPRESSED):
        name = name[:-len(COMPRESSED)]
    candidates = []
    if name.startswith("feat_"):
        candidates.append(db_dir.parent / ("nbb_" + name[len("feat_"):] + ".json"))
    candidates.append(db_dir.parent / f"nbb_{name}.json")
    for c in candidates:
        if c.exists():
            return c
    return None
