"""Per-value digests (``digests.bin`` inside a database directory): what lets ``memo db check``
name each damaged segment instead of one database-wide checksum mismatch.

The file, for each stored pair in key order (``__keys__`` excluded): the key's length (2 bytes,
little-endian), the key, the first :data:`DIGEST_SIZE` bytes of ``sha256(value)``. The
manifest's ``digests`` records its name, sha256, size in bytes, entry count and digest size
(docs/FORMAT.md section 5). Keys are in the file so that missing and extra keys are named even
when ``__keys__`` or the side files are damaged too.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from .files import atomic_write

DIGESTS = "digests.bin"
DIGEST_SIZE = 16  # bytes of sha256 kept: 2**-128 chance that a change goes unseen
_LEN = struct.Struct("<H")


class DigestList:
    """The records of ``digests.bin``, built as the values are put (in key order)."""

    def __init__(self):
        self._parts: list[bytes] = []
        self.count = 0

    def add(self, key: bytes, sha256: bytes) -> None:
        self._parts.append(_LEN.pack(len(key)) + key + sha256[:DIGEST_SIZE])
        self.count += 1

    def add_part(self, keys: list, part: bytes) -> None:
        """Keys and a checksum part (``key NUL sha256(value)`` per pair, concatenated)."""
        pos = 0
        for k in keys:
            pos += len(k) + 1
            self.add(k, part[pos:pos + 32])
            pos += 32

    def write(self, folder: Path) -> dict:
        """Write the file into ``folder``; returns the manifest's ``digests`` entry."""
        data = b"".join(self._parts)
        with atomic_write(Path(folder) / DIGESTS, "wb") as f:
            f.write(data)
        return {"file": DIGESTS, "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data), "entries": self.count, "digest_size": DIGEST_SIZE}


def read_digests(folder, entry: dict, parse: bool = True) -> dict[bytes, bytes] | None:
    """key -> truncated digest from the file a manifest's ``digests`` entry describes (with
    ``parse=False`` the file is only verified against the manifest, and None returned). Raises
    ValueError naming what is wrong (missing, changed, malformed)."""
    if not isinstance(entry, dict) or entry.get("file") != DIGESTS \
            or not isinstance(entry.get("digest_size"), int) or not 0 < entry["digest_size"] <= 32:
        raise ValueError(f"manifest.json: digests is {str(entry)[:80]}, not "
                         f"{{file: {DIGESTS}, sha256, bytes, entries, digest_size}}")
    path = Path(folder) / DIGESTS
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} is missing or unreadable ({exc.strerror})") from None
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ValueError(f"{path} differs from the manifest's record of it (size {len(data)}, "
                         f"the manifest says {entry.get('bytes')}): it changed after the build")
    if not parse:
        return None
    size, out, pos = entry["digest_size"], {}, 0
    while pos < len(data):
        n = _LEN.unpack_from(data, pos)[0] if pos + 2 <= len(data) else -1
        if n < 0 or pos + 2 + n + size > len(data):
            raise ValueError(f"{path} is malformed at byte {pos}")
        key = data[pos + 2:pos + 2 + n]
        out[key] = data[pos + 2 + n:pos + 2 + n + size]
        pos += 2 + n + size
    if len(out) != entry.get("entries"):
        raise ValueError(f"{path} holds {len(out)} entries, the manifest says "
                         f"{entry.get('entries')}")
    return out
