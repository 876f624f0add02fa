"""Feature-database values (docs/FORMAT.md section 3): a msgpack map of arrays in
msgpack-numpy's encoding, or, in the ``_compressed`` variant, ``np.savez_compressed`` bytes.
:func:`encode_value` writes exactly msgpack-numpy's bytes without depending on it,
:func:`encode_compressed` a deflated npz with fixed member times; :func:`decode_value` is the
reference decoder of both, :class:`FastDecoder` the msgpack decoder with a per-length layout
cache (docs/PERFORMANCE.md) and :func:`decode_compressed` the npz one."""
from __future__ import annotations

import io
import zipfile

import msgpack
import numpy as np

from ..errors import DatabaseError
from .npzfast import parse_npz

#: Order in which arrays are written; other names follow in sorted order.
ARRAY_ORDER = ("features", "soft_labels", "confidence", "frame_idxs")

NPZ_MAGIC = b"PK\x03\x04"


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


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest time: same input, same bytes


def encode_compressed(arrays: dict[str, np.ndarray]) -> bytes:
    """One value of the ``_compressed`` variant: what ``np.savez_compressed(f, **arrays)``
    writes (a deflated zip of ``<name>.npy`` members), but with a fixed member time instead of
    the clock's, so a build is byte-identical when repeated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


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
    if len(buf) and buf[0] == NPZ_MAGIC[0]:
        return decode_compressed(buf)
    try:
        out = {}
        for name, arr in unpackb(buf, raw=False).items():
            if type(name) is not str:
                raise TypeError(f"array name {name!r} is not a string")
            if arr[b"nd"] is not True or arr.get(b"kind", b"") != b"":
                raise TypeError("not a plain numpy array")
            t = arr[b"type"]
            out[name] = ndarray(arr[b"shape"], _DTYPES.get(t) or _dtype(t), arr[b"data"])
        return out
    except Exception as exc:  # untrusted bytes: msgpack, zip, numpy and lookup errors alike
        raise DatabaseError(f"value does not decode ({type(exc).__name__}: {exc})") from None


def decode_compressed(buf) -> dict[str, np.ndarray]:
    """Decode one npz value (the ``_compressed`` variant, or an old in-memory npz blob):
    arrays in their stored dtypes, read-only views over the inflated bytes where
    :func:`~memodb.store.npzfast.parse_npz` takes them (else ``np.load``'s). Raises
    :class:`DatabaseError` when the bytes are not one."""
    data = bytes(buf)
    arrays = parse_npz(data)  # the fast path: savez_compressed's usual members
    if arrays is not None:
        return arrays
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # untrusted bytes: zip, zlib and numpy errors alike
        raise DatabaseError(f"value does not decode as a compressed npz "
                            f"({type(exc).__name__}: {exc})") from None


def _bin_header(n: int) -> bytes:
    if n < 256:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 65536:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


class FastDecoder:
    """:func:`decode_value` with a per-value-length layout cache.

    Values of one database differ mostly in their number of frames, and each frame count gives
    one byte length and one layout. The first value of a given length is decoded in full; its
    layout (the msgpack bytes around each array's data, dtypes, shapes, offsets) is remembered,
    and later values of that length are decoded by checking every one of those header bytes and
    taking arrays at the known offsets: one copy out of LMDB and no msgpack parsing. Anything
    that does not match falls back to the full decoder, so the result is always the same.
    """

    def __init__(self, max_layouts: int = 4096):
        self._layouts: dict = {}
        self._max = max_layouts

    def __call__(self, buf) -> dict[str, np.ndarray]:
        layout = self._layouts.get(len(buf))
        if layout is not None:
            data = bytes(buf)
            if all(map(data.startswith, layout[0], layout[1])):
                return {name: ndarray(shape, dt, data, off) for name, dt, shape, off in layout[2]}
        arrays = decode_value(buf)
        if len(self._layouts) < self._max and buf[0] != NPZ_MAGIC[0]:  # npz: no layout
            self._learn(len(buf), arrays)
        return arrays

    def _learn(self, length: int, arrays: dict) -> None:
        layout = value_layout(length, arrays)
        if layout is not None:
            self._layouts[length] = layout


def value_layout(length: int, arrays: dict) -> tuple | None:
    """The byte layout of a msgpack value of ``length`` bytes that decoded to ``arrays``:
    (header bytes, their offsets, (name, dtype, shape, data offset) of each array), or None
    when the value is not laid out as :func:`encode_value` writes it. A value of the same
    length whose bytes at those offsets equal the headers decodes to arrays of the same names,
    dtypes and shapes at the same offsets (every byte outside the array data is checked)."""
    pos = 0
    headers, specs = [], []
    head = _packer.pack_map_header(len(arrays))
    for name, a in arrays.items():
        meta = _packer.pack({b"nd": True, b"type": a.dtype.str, b"kind": b"",
                             b"shape": list(a.shape), b"data": b""})
        head += _packer.pack(name) + meta[:-2] + _bin_header(a.nbytes)
        headers.append((pos, head))
        pos += len(head)
        specs.append((name, a.dtype, a.shape, pos))
        pos += a.nbytes
        head = b""
    if pos != length:
        return None
    return tuple(h for _, h in headers), tuple(p for p, _ in headers), tuple(specs)
