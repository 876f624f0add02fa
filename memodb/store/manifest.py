"""memo's manifest (``manifest.json`` inside every database directory, written last: its
presence marks a finished build), the content checksum, source fingerprints and JSON files
written atomically. Fields: docs/FORMAT.md section 5."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import DatabaseError
from .files import atomic_write

MANIFEST = "manifest.json"
DATASET_FILE = "dataset.json"  # a dataset folder's record (memo db build)
FORMAT_VERSION = 1


def read_manifest(db_dir) -> dict | None:
    """The manifest of a database directory, or None for a database without one."""
    path = Path(db_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatabaseError(f"{path}: manifest is not readable JSON ({exc}); "
                            "rebuild the database") from exc
    if not isinstance(data, dict) or "kind" not in data:
        raise DatabaseError(f"{path}: not a memo manifest; rebuild the database")
    return data


def write_json_atomic(path, obj, *, indent=None) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written).
    ``obj`` may also be JSON text already encoded (a str)."""
    if isinstance(obj, str):
        text = obj
    else:  # json.dumps (one call into the C encoder) is many times faster than json.dump
        text = json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=indent is not None)
        text = text + "\n" if indent is not None else text
    with atomic_write(path) as f:
        f.write(text)


class Checksum:
    """Content checksum of a database: sha256 over, for each pair in key order,
    ``key NUL sha256(value)`` (``__keys__`` excluded). Per-value digests let a check hash the
    values in parallel and combine them in order."""

    def __init__(self):
        self._h = hashlib.sha256()

    def update(self, key: bytes, value) -> None:
        self.update_digest(key, hashlib.sha256(value).digest())

    def update_digest(self, key: bytes, digest: bytes) -> None:
        self._h.update(self.records((key,), (digest,)))

    def update_raw(self, part: bytes) -> None:
        """Several ``key NUL digest`` records, concatenated (:meth:`records`, as a worker
        prepares them)."""
        self._h.update(part)

    @staticmethod
    def records(keys, digests) -> bytes:
        """The ``key NUL digest`` records of (key, sha256 digest) pairs, concatenated."""
        return b"".join([b"%s\0%s" % pair for pair in zip(keys, digests)])

    def hexdigest(self) -> str:
        return "sha256:" + self._h.hexdigest()


def fingerprint_files(paths, root) -> dict:
    """A cheap fingerprint of source files: relative path, size and mtime of each.

    Changes when a file is added, removed, rewritten or touched; does not read contents.
    """
    h = hashlib.sha256()
    prefix = os.path.join(str(root), "")
    n = total = 0
    for p in sorted(str(x) for x in paths):
        st = os.stat(p)
        rel = p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        n += 1
        total += st.st_size
    return {"fingerprint": "sha256:" + h.hexdigest(), "files": n, "bytes": total}
