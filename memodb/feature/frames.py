"""Where ``conf_th`` / ``max_bb`` are decided and applied: the allowed values of the
selection options (:func:`selection_options`), the frames of a segment that a feature
database keeps (docs/FORMAT.md section 3, "Frame selection"), and the per-segment checks
(equal lengths, finite values and confidences)."""
from __future__ import annotations

import math

import numpy as np

from ..config import is_integer, is_number
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


def selection_options(conf_th, max_bb, min_bb) -> tuple[float, int, int]:
    """``conf_th``, ``max_bb``, ``min_bb`` checked (the one place their allowed values are
    decided; create-imgdb, rawimg-db and the dataset config use it): ``conf_th`` a finite number
    from 0 to 1 (a confidence is a probability; with 1.0, the speech default, only a source
    without confidences keeps frames, its first ``max_bb``: speech features have none),
    ``max_bb`` an integer >= 1, ``min_bb`` an integer from 0 to ``max_bb``. Errors name the
    options (BadInputError ``options``)."""
    if not is_number(conf_th) or not 0.0 <= float(conf_th) <= 1.0:  # NaN fails both tests
        raise BadInputError(f"{{conf_th}} must be a number from 0 to 1 (got {conf_th!r})",
                            options=("conf_th",),
                            fix="frames with confidence > {conf_th} are kept: use e.g. 0.5 "
                                "for faces, 1.0 for speech, 0 to keep every frame with a face")
    for name, value, least in (("max_bb", max_bb, 1), ("min_bb", min_bb, 0)):
        if not is_integer(value) or value < least:
            raise BadInputError(f"{{{name}}} must be an integer >= {least} (got {value!r})",
                                options=(name,), fix=f"give {{{name}}} a whole number of "
                                "frames")
    if min_bb > max_bb:
        raise BadInputError(f"{{min_bb}} {min_bb} is above {{max_bb}} {max_bb}: no segment "
                            "could keep enough frames", options=("min_bb", "max_bb"),
                            fix="lower {min_bb} or raise {max_bb}")
    return float(conf_th), int(max_bb), int(min_bb)


def check_confidence(conf, *, file=None, segment=None) -> None:
    """A confidence array holds finite numbers only (NaN would silently drop its frames)."""
    conf = np.asarray(conf)
    if conf.dtype.kind == "f" and not math.isfinite(conf.sum(dtype=np.float64)):  # one pass
        bad = np.flatnonzero(~np.isfinite(conf.reshape(len(conf), -1)).all(axis=1))
        raise BadInputError(f"'confidence' is NaN or infinite in frame(s) {bad[:10].tolist()}"
                            + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""),
                            file=file, segment=segment,
                            fix="re-extract the faces of this segment (a confidence is a "
                                "probability from 0 to 1) or remove it from the source")


def stored_confidence(conf) -> np.ndarray:
    """The confidence as compared: rounded to float16 (the precision it is stored with), as
    float64."""
    return np.asarray(conf).astype(np.float16).astype(np.float64)


def above_threshold(conf64: np.ndarray, conf_th: float) -> np.ndarray:
    """Which frames pass ``conf_th``: ``confidence > conf_th`` (strict), on
    :func:`stored_confidence` values."""
    return conf64 > float(conf_th)


def keep_index(conf, n: int, conf_th: float, max_bb: int, *, file=None, segment=None):
    """Which of ``n`` frames to keep: a slice when they are a prefix, else an index array. A
    confidence that is not finite is a BadInputError naming ``file`` and ``segment``."""
    if conf is None:
        return slice(0, min(n, max_bb))
    conf64 = stored_confidence(conf)
    check_confidence(conf64, file=file, segment=segment)
    idx = np.flatnonzero(above_threshold(conf64, conf_th))[:max_bb]
    return slice(0, len(idx)) if len(idx) == 0 or idx[-1] == len(idx) - 1 else idx


def select_frames(arrays: dict, conf_th: float, max_bb: int, *, file=None, segment=None) -> dict:
    """Keep frames with ``confidence > conf_th`` (strict), in time order, then the first
    ``max_bb``; without a confidence array, the first ``max_bb``. Truncation is along axis 0
    whatever the rank. Returns canonical arrays (float16, int32 frame indices). Kept frames out
    of time order (``frame_idxs`` not increasing) are refused: ``memo db check`` rejects them.

    The confidence is compared after rounding to float16, the precision it is stored with, so
    h5 input and npz input select exactly the same frames.
    """
    n = check_lengths(arrays, file=file, segment=segment)
    keep = keep_index(arrays.get("confidence"), n, conf_th, max_bb, file=file, segment=segment)
    out = canonical_arrays({k: np.asarray(v)[keep] for k, v in arrays.items()})
    for name in FLOAT_CHECKED:
        a = out.get(name)
        if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a).reshape(len(a), -1).all(axis=1))
            raise BadInputError(
                f"'{name}' has NaN or Inf (or values beyond float16's range) in kept frame(s) "
                f"{bad[:10].tolist()}", file=file, segment=segment,
                fix="re-extract the features of this segment or remove it from the source")
    order = order_fault(out.get("frame_idxs"))
    if order:
        raise BadInputError(f"kept frames' {order}", file=file, segment=segment,
                            fix="write the segment's frames in time order (increasing "
                                "frame index)")
    return out


def selection_faults(arrays: dict, conf_th: float, max_bb: int, min_bb: int = 0) -> list:
    """How a stored segment breaks the selection of :func:`select_frames` with these options
    (``memo db check``): a list of (code, message), empty when the frames are what a build
    keeps: at most ``max_bb``, at least ``min_bb``, every confidence above ``conf_th`` (the
    frames :func:`keep_index` keeps), ``frame_idxs`` increasing (time order)."""
    faults = []
    n = len(arrays["features"]) if "features" in arrays and arrays["features"].ndim else 0
    if n > max_bb:
        faults.append(("frames_over_max_bb", f"{n} frames stored, more than max_bb {max_bb}"))
    if n < min_bb:
        faults.append(("frames_under_min_bb", f"{n} frames stored, fewer than min_bb {min_bb} "
                       "(the build leaves such segments out)"))
    conf = arrays.get("confidence")
    # every frame passes when the lowest does (rounding to float16 keeps the order): one
    # reduction for the usual segment, the rule itself to name the frames otherwise
    if conf is not None and conf.ndim == 1 and len(conf) == n and n \
            and not float(np.float16(conf.min())) > conf_th:
        low = np.flatnonzero(~above_threshold(stored_confidence(conf), conf_th))
        if len(low):
            faults.append(("frame_below_conf_th", f"kept frame(s) {low[:10].tolist()} have "
                           f"confidence {float(conf[low[0]])!r}{' ...' if len(low) > 1 else ''}"
                           f", not above conf_th {conf_th}"))
    order = order_fault(arrays.get("frame_idxs"))
    if order:
        faults.append(("frames_out_of_order", order))
    return faults


def order_fault(idxs) -> str | None:
    """Why ``frame_idxs`` are not in time order (strictly increasing), or None."""
    if idxs is None or np.ndim(idxs) != 1 or len(idxs) < 2:
        return None
    idxs = np.asarray(idxs)
    if (idxs[1:] > idxs[:-1]).all():
        return None
    back = np.flatnonzero(np.diff(idxs.astype(np.int64)) <= 0)
    if not len(back):
        return None
    i = int(back[0]) + 1
    return (f"frame_idxs not in time order: position {i} holds frame {int(idxs[i])} after "
            f"frame {int(idxs[i - 1])}" + (f" ({len(back)} places)" if len(back) > 1 else ""))
