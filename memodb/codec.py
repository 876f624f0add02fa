"""Value encoding of feature databases (FORMATS.md section 3).

A value is a msgpack map (``use_bin_type=True``) from array name to an array in
msgpack-numpy's encoding: ``{b"nd": True, b"type": dtype.str, b"kind": b"", b"shape": [...],
b"data": raw bytes}``. :func:`encode_value` writes exactly the bytes msgpack-numpy writes, without
depending on it; :func:`decode_value` reads them (and the older ``_compressed`` npz blobs)
without copying the array data a second time.
"""
from __future__ import annotations

import io

import msgpack
import numpy as np

from .errors import DatabaseError

#: Order in which arrays are written; other names follow in sorted order.
ARRAY_ORDER = ("features", "soft_labels", "confidence", "frame_idxs")

_NPZ_MAGIC = b"PK\x03\x04"


def canonical_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the arrays in memo's stored dtypes and fixed order.

    Floating arrays become float16 (as the original tools stored them), frame indices int32
    (float16 corrupts frame numbers above 2048), everything C-contiguous.
    """
    out = {}
    names = [n for n in ARRAY_ORDER if n in arrays] + sorted(set(arrays) - set(ARRAY_ORDER))
    for name in names:
        arr = np.asarray(arrays[name])
        if name == "frame_idxs":
            arr = arr.astype(np.int32, copy=False)
        elif arr.dtype.kind == "f" and arr.dtype != np.float16:
            arr = arr.astype(np.float16)
        out[name] = np.ascontiguousarray(arr)
    return out


def _encode_nd(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VO":
            raise TypeError(f"cannot store arrays of dtype {obj.dtype}")
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": list(obj.shape),
                b"data": memoryview(np.ascontiguousarray(obj).reshape(-1).view(np.uint8))}
    raise TypeError(f"cannot encode {type(obj).__name__}")


_packer = msgpack.Packer(default=_encode_nd, use_bin_type=True)


def encode_value(arrays: dict[str, np.ndarray]) -> bytes:
    """Pack already-canonical arrays into one database value."""
    return _packer.pack(arrays)


_DTYPES: dict = {}
unpackb, ndarray = msgpack.unpackb, np.ndarray


def _dtype(type_str) -> np.dtype:
    dt = _DTYPES.get(type_str)
    if dt is None:
        dt = np.dtype(type_str)
        if dt.kind in "VO" or not isinstance(type_str, str):
            raise TypeError(f"unsupported array type {type_str!r}")
        dt = _DTYPES[type_str] = dt
    return dt


def decode_value(buf) -> dict[str, np.ndarray]:
    """Decode one value: a msgpack map (msgpack-numpy arrays) or an old in-memory npz blob.

    Arrays are read-only views over the unpacked bytes (one copy out of LMDB, none after);
    dtypes are kept (float16 stays float16). Raises :class:`DatabaseError` when the bytes are
    not a feature value.
    """
    try:
        if len(buf) and buf[0] == _NPZ_MAGIC[0]:
            with np.load(io.BytesIO(bytes(buf)), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        out = {}
        for name, arr in unpackb(buf, raw=False).items():
            if arr[b"nd"] is not True or arr.get(b"kind", b"") != b"":
                raise TypeError("not a plain numpy array")
            t = arr[b"type"]
            out[name] = ndarray(arr[b"shape"], _DTYPES.get(t) or _dtype(t), arr[b"data"])
        return out
    except Exception as exc:  # untrusted bytes: msgpack, zip, numpy and lookup errors alike
        raise DatabaseError(f"value does not decode ({type(exc).__name__}: {exc})") from None
