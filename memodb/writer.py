"""Writing a database so that it is either complete under its final name or absent.

:class:`StagedDatabase` builds into ``OUT_DIR/.<name>.partial`` under an exclusive lock, writes
values in sorted key order in large transactions, grows the LMDB map as needed (starting small:
no 1 TiB sparse files), then writes ``__keys__``, the side files and the manifest, and renames
the directory into place as the very last step.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import lmdb

from .errors import MemoError, OutputExistsError
from .ids import KEYS_KEY
from .manifest import MANIFEST, FORMAT_VERSION, Checksum, read_manifest, write_json_atomic

INITIAL_MAP = 64 << 20
TXN_BYTES = 8 << 20


def existing_build(final: Path, kind: str, options: dict, source: dict,
                   replace: bool = False) -> dict | None:
    """Manifest of an identical finished build at ``final``, None when nothing is there.

    Raises OutputExistsError when ``final`` holds anything else, unless ``replace`` (then a
    different memo database there is reported as None: it will be replaced when the new one
    is published).
    """
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return None
    manifest = read_manifest(final)
    if manifest is None:
        raise OutputExistsError(
            f"{final} already exists and is not a finished memo database (no {MANIFEST}); "
            "move it away or choose another OUT_DIR")
    same = (manifest.get("kind") == kind and manifest.get("options") == options
            and manifest.get("source", {}).get("fingerprint") == source.get("fingerprint"))
    if not same and replace:
        return None
    if not same:
        raise OutputExistsError(
            f"{final} already holds a different {manifest.get('kind')} database "
            f"(built with options {manifest.get('options')} from "
            f"{manifest.get('source', {}).get('path')}); delete it or choose another OUT_DIR")
    return manifest


class StagedDatabase:
    """Context manager for one database build; see the module docstring.

    On an exception the partial directory is removed and nothing is published.
    """

    def __init__(self, out_dir, name: str, *, keys_entry: bool = True, replace: bool = False):
        self.out_dir = Path(out_dir)
        self.keys_entry = keys_entry  # write the __keys__ list (feature databases)
        self.replace = replace  # publish over an existing database of the same name
        self.final = self.out_dir / name
        self.partial = self.out_dir / f".{name}.partial"
        self._lock_path = self.out_dir / f".{name}.lock"
        self.checksum = Checksum()
        self.keys: list[str] = []
        self._pending: list = []
        self._pending_bytes = 0
        self._last_key = b""
        self.env = None

    def __enter__(self):
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputExistsError(f"{self.out_dir} is a file, not a folder; choose another "
                                    "OUT_DIR")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self._lock_path, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OutputExistsError(f"another build of {self.final} is running "
                                    f"(lock {self._lock_path}); wait for it to finish") from None
        if self.partial.exists():  # left by a killed build: start over
            shutil.rmtree(self.partial)
        self.partial.mkdir()
        self.env = lmdb.open(str(self.partial), map_size=INITIAL_MAP, readahead=False,
                             meminit=True, sync=False, metasync=False, max_dbs=0)
        return self

    def put(self, key: bytes, value: bytes, digest: bytes | None = None) -> None:
        """Add one value; keys must come in strictly increasing byte order. ``digest`` is the
        value's sha256 when a worker already computed it."""
        if key <= self._last_key:
            raise ValueError(f"keys out of order: {key!r} after {self._last_key!r}")
        self._last_key = key
        if digest is None:
            self.checksum.update(key, value)
        else:
            self.checksum.update_digest(key, digest)
        if self.keys_entry:
            self.keys.append(key.decode("utf-8"))
        self._pending.append((key, value))
        self._pending_bytes += len(key) + len(value)
        if self._pending_bytes >= TXN_BYTES:
            self._flush()

    def put_many(self, keys: list, values: list, checksum_part: bytes) -> None:
        """Add many values at once (keys in strictly increasing byte order, after those put
        before). ``checksum_part`` is ``key NUL sha256(value)`` of each pair, concatenated: what
        :class:`Checksum` hashes, computed by a worker."""
        if not keys:
            return
        if keys[0] <= self._last_key or any(a >= b for a, b in zip(keys, keys[1:])):
            raise ValueError(f"keys out of order after {self._last_key!r}")
        self._last_key = keys[-1]
        self.checksum.update_raw(checksum_part)
        if self.keys_entry:
            self.keys.extend(k.decode("utf-8") for k in keys)
        self._pending.extend(zip(keys, values))
        self._pending_bytes += sum(map(len, keys)) + sum(map(len, values))
        if self._pending_bytes >= TXN_BYTES:
            self._flush()

    def _flush(self, extra=()) -> None:
        items = self._pending
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    txn.cursor().putmulti(items, append=True)
                    for k, v in extra:
                        txn.put(k, v)
                break
            except lmdb.MapFullError:
                need = sum(len(k) + len(v) for k, v in (*items, *extra))
                size = self.env.info()["map_size"]
                self.env.set_mapsize(max(size * 2, size + 3 * need))
        self._pending, self._pending_bytes = [], 0

    def finish(self, manifest: dict, side_files: dict | None = None,
               inner_files: dict | None = None) -> tuple[Path, dict]:
        """Write ``__keys__``, side files (name -> JSON object; ``side_files`` beside the
        database directory, ``inner_files`` inside it) and the manifest, then publish the
        directory under its final name."""
        extra = [(KEYS_KEY, json.dumps(self.keys).encode("utf-8"))] if self.keys_entry else []
        self._flush(extra=extra)
        self.env.sync(True)
        self.env.close()
        self.env = None
        for name, obj in (inner_files or {}).items():
            write_json_atomic(self.partial / name, obj)
        for name, obj in (side_files or {}).items():
            write_json_atomic(self.out_dir / name, obj)
        manifest = {"format_version": FORMAT_VERSION, **manifest,
                    "checksum": self.checksum.hexdigest()}
        write_json_atomic(self.partial / MANIFEST, manifest, indent=1)
        _fsync_dir(self.partial)
        old = None
        if self.replace and self.final.exists():
            old = self.out_dir / f".{self.final.name}.replaced"
            if old.exists():
                shutil.rmtree(old)
            os.rename(self.final, old)
        os.rename(self.partial, self.final)
        _fsync_dir(self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final, manifest

    def __exit__(self, exc_type, exc, tb):
        if self.env is not None:
            self.env.close()
        if exc_type is not None and self.partial.exists():
            shutil.rmtree(self.partial, ignore_errors=True)
        self._lock.close()
        try:
            self._lock_path.unlink()
        except OSError:
            pass
        if isinstance(exc, lmdb.Error) and not isinstance(exc, MemoError):
            raise MemoError(f"LMDB error while writing {self.final}: {exc}; nothing was "
                            "published (check free disk space)") from exc
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
