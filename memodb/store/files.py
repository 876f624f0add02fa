"""Writing one file so that it is complete under its final name or absent: :func:`atomic_write`
(a temporary file in the same folder, fsync, rename, fsync of the folder)."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode: str = "w", *, tmp_name: str | None = None, durable: bool = True,
                 encoding: str | None = None):
    """Yield a file open on a temporary name beside ``path`` (``.<name>.tmp-<pid>``, or
    ``tmp_name``); when the block ends, flush it, fsync it, rename it over ``path`` and fsync
    the folder. On an exception the temporary file is removed and ``path`` is left as it was.
    ``durable=False`` leaves out both fsyncs (for many small files a re-run can recreate)."""
    path = Path(path)
    tmp = path.with_name(tmp_name or f".{path.name}.tmp-{os.getpid()}")
    if encoding is None and "b" not in mode:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path) -> None:
    """Make the entries of a folder (created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (model files, checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
