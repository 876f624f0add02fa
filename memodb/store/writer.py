"""Writing a database so that it is either complete under its final name or absent:
:class:`StagedDatabase` builds in a hidden ``.<name>.partial`` folder under a lock, grows the
LMDB map as needed and publishes atomically (with its nbb json); :func:`existing_build` tells
an identical finished build from anything else. The steps, and what a kill at each leaves:
docs/DATABASES.md, "Publishing"."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import lmdb

from ..errors import MemoError, OutputExistsError
from .digests import DigestList
from .files import atomic_write, fsync_dir
from .ids import KEYS_KEY
from .manifest import FORMAT_VERSION, MANIFEST, Checksum, read_manifest, write_json_atomic

INITIAL_MAP = 64 << 20
TXN_BYTES = 8 << 20
AT_FDCWD = -100  # renameat2: paths relative to the working directory
RENAME_EXCHANGE = 2

_first_publish: ContextVar[list | None] = ContextVar("first_publish", default=None)


@contextmanager
def before_first_publish(callback):
    """Inside the block, ``callback()`` runs once, just before the first change under a final
    name: a database published, or a side file rewritten (docs/DATABASES.md, "Publishing")."""
    token = _first_publish.set([callback])
    try:
        yield
    finally:
        _first_publish.reset(token)


def _publishing() -> None:
    pending = _first_publish.get()
    while pending:
        pending.pop()()


def existing_build(final: Path, kind: str, options: dict, source: dict,
                   replace: bool = False) -> dict | None:
    """Manifest of an identical finished build at ``final``, None when nothing is there.

    Raises OutputExistsError when ``final`` holds anything else, unless ``replace`` (then a
    different memo database there is reported as None: it will be replaced when the new one
    is published). An identical build's surroundings are put back in order after a killed
    build (:func:`_tidy`).
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
    _tidy(final, manifest)
    return manifest


def _tidy(final: Path, manifest: dict) -> None:
    """Put a finished database's surroundings back in order after a killed build: remove its
    hidden leftovers (``.partial``, ``.replaced``, the lock file, a side file's temporary link
    or copy) and rewrite the side file its manifest names (``nbb_file``) when it differs from
    the database's own copy. Only when there is something to do, and under the lock: a running
    build of the name is left alone."""
    out_dir, name = final.parent, final.name
    side = manifest.get("nbb_file")
    sides = [side] if isinstance(side, str) and side == Path(side).name else []
    leftovers = [p for p in (out_dir / f".{name}.partial", out_dir / f".{name}.replaced",
                             *(out_dir / f".{s}{t}" for s in sides for t in (".link", ".copy")))
                 if p.exists() or p.is_symlink()]
    lock_path = out_dir / f".{name}.lock"
    stale = [s for s in sides if _side_file_stale(final, s)]
    if not (leftovers or stale or lock_path.exists()):
        return
    try:
        lock = _lock(lock_path)
    except OSError:  # cannot even create the lock file (a read-only folder): leave it
        return
    if lock is None:  # a build of this name is running: they are its own
        return
    try:
        for p in leftovers:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if stale:
            _publishing()
            for s in _link_side_files(final, stale):
                _copy_atomic(final / s, out_dir / s)
    finally:
        _unlock(lock, lock_path)


class StagedDatabase:
    """Context manager for one database build (docs/DATABASES.md, "Publishing").

    On an exception the partial directory is removed and nothing is published.
    """

    def __init__(self, out_dir, name: str, *, keys_entry: bool = True, replace: bool = False):
        self.out_dir = Path(out_dir)
        self.keys_entry = keys_entry  # write the __keys__ list (feature databases)
        self.replace = replace  # publish over an existing database of the same name
        self.final = self.out_dir / name
        self.partial = self.out_dir / f".{name}.partial"
        self._replaced = self.out_dir / f".{name}.replaced"  # only without the exchange
        self._lock_path = self.out_dir / f".{name}.lock"
        self.checksum = Checksum()
        self.digests = DigestList()  # digests.bin: each value's digest (memodb.store.digests)
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
        self._lock = _lock(self._lock_path)
        if self._lock is None:
            raise OutputExistsError(f"another build of {self.final} is running "
                                    f"(lock {self._lock_path}); wait for it to finish")
        for left in (self.partial, self._replaced):  # left by a killed build: start over
            if left.exists():
                shutil.rmtree(left)
        self.partial.mkdir()
        self.env = lmdb.open(str(self.partial), map_size=INITIAL_MAP, readahead=False,
                             meminit=True, sync=False, metasync=False, max_dbs=0, lock=False)
        return self
    def put(self, key: bytes, value: bytes, digest: bytes | None = None) -> None:
        """Add one value; keys must come in strictly increasing byte order. ``digest`` is the
        value's sha256 when a worker already computed it."""
        if key <= self._last_key:
            raise ValueError(f"keys out of order: {key!r} after {self._last_key!r}")
        self._last_key = key
        if digest is None:
            digest = hashlib.sha256(value).digest()
        self.checksum.update_digest(key, digest)
        self.digests.add(key, digest)
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
        self.digests.add_part(keys, checksum_part)
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
        """Write ``__keys__``, ``digests.bin``, the files (name -> JSON object or text;
        ``side_files`` beside the database directory, ``inner_files`` inside it) and the
        manifest, then publish the directory under its final name (steps 1 to 3 of
        docs/DATABASES.md, "Publishing")."""
        extra = [(KEYS_KEY, json.dumps(self.keys).encode("utf-8"))] if self.keys_entry else []
        self._flush(extra=extra)
        self.env.sync(True)
        self.env.close()
        self.env = None
        for name, obj in {**(inner_files or {}), **(side_files or {})}.items():
            write_json_atomic(self.partial / name, obj)
        manifest = {"format_version": FORMAT_VERSION, **manifest,
                    "checksum": self.checksum.hexdigest(),
                    "digests": self.digests.write(self.partial)}
        write_json_atomic(self.partial / MANIFEST, manifest, indent=1)
        fsync_dir(self.partial)
        _publishing()
        unlinked = _link_side_files(self.final, side_files or {})
        old = self._move_in()
        for name in unlinked:  # no symbolic links here: a copy, after the database
            _copy_atomic(self.final / name, self.out_dir / name)
        fsync_dir(self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final, manifest

    def _move_in(self) -> Path | None:
        """Put the build directory under the final name; returns where the database it
        replaced now is (to be deleted), None when it replaced none."""
        if not (self.replace and self.final.exists()):
            os.rename(self.partial, self.final)
            return None
        if _exchange(self.partial, self.final):
            return self.partial
        os.rename(self.final, self._replaced)  # the final name is missing until the next line
        os.rename(self.partial, self.final)
        return self._replaced

    def __exit__(self, exc_type, exc, tb):
        if self.env is not None:
            self.env.close()
        if exc_type is not None and self.partial.exists():
            shutil.rmtree(self.partial, ignore_errors=True)
        _unlock(self._lock, self._lock_path)
        if isinstance(exc, lmdb.Error) and not isinstance(exc, MemoError):
            raise MemoError(f"LMDB error while writing {self.final}: {exc}; nothing was "
                            "published (check free disk space)") from exc
        return False


def _lock(path: Path):
    """The open lock file ``path``, locked exclusively (flock), or None when another process
    holds it. A lock taken on a file that its holder removed meanwhile is let go and taken on
    the current file."""
    while True:
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        held = os.fstat(f.fileno())
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return f
        f.close()


def _unlock(f, path: Path) -> None:
    """Remove the lock file, then let the lock go (in this order: see :func:`_lock`)."""
    try:
        path.unlink()
    except OSError:
        pass
    f.close()


@functools.cache
def _renameat2():
    """libc's ``renameat2`` (Linux, glibc 2.28 or later), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directory entries ``a`` and ``b`` in one atomic step; False where this system
    or file system cannot (then nothing was changed)."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _link_side_files(final: Path, names) -> list[str]:
    """Make each ``OUT_DIR/<side>`` a relative symbolic link to ``<final name>/<side>`` (step 2
    of docs/DATABASES.md, "Publishing"); returns the names that cannot be links here."""
    out_dir, unlinked, linked = final.parent, [], False
    for side in names:
        link, target = out_dir / side, f"{final.name}/{side}"
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_file() and final.is_dir() and not (final / side).exists():
            _copy_atomic(link, final / side)  # an older build: its nbb json goes with it
        tmp = out_dir / f".{side}.link"  # one at a time: the lock is held
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target, tmp)
        except OSError:  # a file system without symbolic links
            unlinked.append(side)
            continue
        os.replace(tmp, link)
        linked = True
    if linked:  # on disk before the directory goes in
        fsync_dir(out_dir)
    return unlinked


def _side_file_stale(final: Path, side: str) -> bool:
    """The side file beside ``final`` is neither the link to the database's own copy nor a
    file with the same bytes (False for a database that keeps no copy: nothing to compare)."""
    own, beside = final / side, final.parent / side
    if not own.is_file():
        return False
    if beside.is_symlink() and os.readlink(beside) == f"{final.name}/{side}":
        return False
    try:
        return beside.read_bytes() != own.read_bytes()
    except OSError:  # missing, or a link to nowhere
        return True


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file through a temporary file and a rename (never half-written); the caller
    holds the lock."""
    with atomic_write(dst, "wb", tmp_name=f".{dst.name}.copy") as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f)
