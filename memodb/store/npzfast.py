"""Fast reading of the npz bytes ``numpy.savez`` / ``numpy.savez_compressed`` write (a zip of
.npy members, stored or deflated).

``np.load`` spends most of its time in zipfile and in parsing each .npy header with
``ast.literal_eval``; for the plain files of a feature corpus this module reads the whole file
once and returns zero-copy views, and for the deflated values of a ``_compressed`` feature
database views over each member's inflated bytes. Anything unusual (another compression, data
descriptors, Fortran order, object arrays) returns None and the caller falls back to
``np.load``.
"""
from __future__ import annotations

import re
import struct
import zlib

import numpy as np

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIG, _CENTRAL_SIG, _END_SIG = 0x04034B50, b"PK\x01\x02", b"PK\x05\x06"
_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': False, "
                     rb"'shape': \(([\d, ]*)\), \}\s*$")
_DTYPES: dict = {}


def parse_npz(data: bytes) -> dict[str, np.ndarray] | None:
    """Arrays of an npz held in ``data`` (read-only views: over ``data`` for stored members,
    over the inflated bytes for deflated ones), or None if not that simple."""
    out = {}
    pos, n = 0, len(data)
    while pos + _LOCAL.size <= n:
        sig, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = \
            _LOCAL.unpack_from(data, pos)
        if sig != _LOCAL_SIG:
            break
        if method not in (0, 8) or flags & 0x9:  # other compression, encrypted, or sizes in
            return None                              # a data descriptor
        name_end = pos + _LOCAL.size + name_len
        start = name_end + extra_len
        if start > n:  # cut short
            return None
        if csize == 0xFFFFFFFF:  # zip64: sizes in the extra field (uncompressed, compressed)
            csize = _zip64_size(data, name_end, start)
            if csize is None:
                return None
        end = start + csize
        name = data[pos + _LOCAL.size:name_end]
        if end > n or not name.endswith(b".npy"):
            return None
        if method == 8:  # deflated (savez_compressed): raw deflate stream
            try:
                member = zlib.decompress(data[start:end], -15)
            except zlib.error:
                return None
            if zlib.crc32(member) != crc:  # damaged: np.load names the error
                return None
            arr = _parse_npy(member, 0, len(member))
        else:
            arr = _parse_npy(data, start, end)
        if arr is None:
            return None
        out[name[:-4].decode("utf-8")] = arr
        pos = end
    if not out or data[pos:pos + 4] not in (_CENTRAL_SIG, _END_SIG):
        return None
    return out


def _zip64_size(data, pos, end):
    while pos + 4 <= end:
        tag, size = struct.unpack_from("<HH", data, pos)
        if tag == 1 and size >= 16:
            return struct.unpack_from("<QQ", data, pos + 4)[1]
        pos += 4 + size
    return None


def _parse_npy(data, start, end):
    if end - start < 12 or data[start:start + 6] != b"\x93NUMPY":
        return None
    major = data[start + 6]
    if major == 1:
        hlen, h0 = struct.unpack_from("<H", data, start + 8)[0], start + 10
    elif major in (2, 3):
        hlen, h0 = struct.unpack_from("<I", data, start + 8)[0], start + 12
    else:
        return None
    m = _HEADER.match(data, h0, h0 + hlen)
    if m is None:
        return None
    descr = m.group(1)
    dt = _DTYPES.get(descr)
    if dt is None:
        dt = np.dtype(descr.decode())
        if dt.kind in "OV" or dt.hasobject:
            return None
        _DTYPES[descr] = dt
    shape = tuple(int(x) for x in m.group(2).split(b",") if x.strip())
    count = 1
    for s in shape:
        count *= s
    offset = h0 + hlen
    if offset + count * dt.itemsize != end:
        return None
    return np.frombuffer(data, dt, count, offset).reshape(shape)
