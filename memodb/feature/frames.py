"""Where ``conf_th`` / ``max_bb`` are applied: the frames of a segment that a feature
database keeps (docs/FORMAT.md section 3, "Frame selection"), and the per-segment checks
(equal lengths, finite values)."""
from __future__ import annotations

import numpy as np

from ..errors import BadInputError
from ..store.codec import canonical_arrays

FLOAT_CHECKED = ("features", "soft_labels")


def check_lengths(arrays: dict, *, file, segment) -> int:
    """All arrays of a segment describe the same frames: equal length along axis 0."""
    if "features" not in arrays:
        raise BadInputError(f"no 'features' array (found: {sorted(arrays) or 'nothing'})",
                            file=file, segment=segment,
                            fix="rebuild this file with memo db trans2npz")
    lengths = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        desc = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise BadInputError(f"arrays have different lengths ({desc})", file=file, segment=segment,
                            fix="regenerate the segment's features so every array has one row "
                                "per frame")
    return lengths["features"]


def keep_index(conf, n: int, conf_th: float, max_bb: int):
    """Which of ``n`` frames to keep: a slice when they are a prefix, else an index array."""
    if conf is None:
        return slice(0, min(n, max_bb))
    conf64 = np.asarray(conf).astype(np.float16).astype(np.float64)
    idx = np.flatnonzero(conf64 > float(conf_th))[:max_bb]
    return slice(0, len(idx)) if len(idx) == 0 or idx[-1] == len(idx) - 1 else idx


def select_frames(arrays: dict, conf_th: float, max_bb: int, *, file=None, segment=None) -> dict:
    """Keep frames with ``confidence > conf_th`` (strict), in time order, then the first
    ``max_bb``; without a confidence array, the first ``max_bb``. Truncation is along axis 0
    whatever the rank. Returns canonical arrays (float16, int32 frame indices).

    The confidence is compared after rounding to float16, the precision it is stored with, so
    h5 input and npz input select exactly the same frames.
    """
    n = check_lengths(arrays, file=file, segment=segment)
    keep = keep_index(arrays.get("confidence"), n, conf_th, max_bb)
    out = canonical_arrays({k: np.asarray(v)[keep] for k, v in arrays.items()})
    for name in FLOAT_CHECKED:
        a = out.get(name)
        if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a).reshape(len(a), -1).all(axis=1))
            raise BadInputError(
                f"'{name}' has NaN or Inf (or values beyond float16's range) in kept frame(s) "
                f"{bad[:10].tolist()}", file=file, segment=segment,
                fix="re-extract the features of this segment or remove it from the source")
    return out
