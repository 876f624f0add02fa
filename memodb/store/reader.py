"""Reading feature databases, memo-built or built by the original UNITER / MEmoBERT tools.

:class:`FeatureDB` is cheap to create and to pickle: the LMDB environment is opened lazily,
read-only and without a lock file, once per path per process, and reopened after a fork, so an
instance can be handed to forked DataLoader workers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import lmdb
import numpy as np

from ..errors import DatabaseError
from .codec import FastDecoder, decode_value
from .ids import KEYS_KEY, id_to_key
from .manifest import read_manifest
from .naming import is_compressed, nbb_path_for

_envs: dict[str, lmdb.Environment] = {}
_envs_pid: int | None = None


def open_env(path) -> lmdb.Environment:
    """The process's single read-only environment for ``path`` (reopened after fork)."""
    global _envs_pid
    if _envs_pid != os.getpid():
        # Handles inherited through fork must not be used; close them (safe: opened read-only
        # without a lock table) so LMDB lets this process open its own.
        for inherited in _envs.values():
            inherited.close()
        _envs.clear()
        _envs_pid = os.getpid()
    real = os.path.realpath(path)
    try:  # a rebuilt database is a new file: key by inode so it is never read through an old map
        st = os.stat(os.path.join(real, "data.mdb"))
    except OSError:
        raise DatabaseError(f"{path}: not an LMDB database (no data.mdb); give the "
                            "database directory, e.g. OUT_DIR/feat_th0.5_max36_min0") from None
    key = f"{real}\0{st.st_dev}:{st.st_ino}"
    env = _envs.get(key)
    if env is None:
        try:
            env = lmdb.open(real, readonly=True, lock=False, readahead=False, meminit=False,
                            max_readers=1024, subdir=True)
        except lmdb.Error as exc:
            raise DatabaseError(f"{path}: cannot open LMDB database ({exc}); the file may be "
                                "truncated or damaged: rebuild or re-copy it") from exc
        # LMDB maps the file and dies with SIGBUS on pages past its end: refuse a cut copy.
        have = os.path.getsize(os.path.join(real, "data.mdb"))
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        if have < need:
            env.close()
            raise DatabaseError(f"{path}: data.mdb is truncated ({have} bytes, LMDB needs "
                                f"{need}); re-copy or rebuild the database")
        _envs[key] = env
    return env


class FeatureDB:
    """Random access to one feature (or raw-crop, or speech) database.

    ``db["No0123.Brokeback.Mountain_1"]`` (or the key with ``.npz``) returns the segment's arrays
    as read-only numpy views, float16 kept, truncated to ``nbb`` when the database has an nbb
    json that says fewer frames than are stored.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._manifest = False  # not read yet
        self._nbb = None
        self._keys = None
        self._pid = None
        # the _compressed variant's npz values go straight to the npz decoder; FastDecoder's
        # layout cache serves msgpack values only
        self._decode = decode_value if is_compressed(self.path) else FastDecoder()
        self._txn()  # fail early on a wrong path

    def _txn(self):
        """This process's read transaction. The database is immutable once built, so one
        transaction per process serves every read (no begin / commit per segment)."""
        if self._pid != os.getpid():
            self._read = open_env(self.path).begin(buffers=True)
            self._pid = os.getpid()
            self._truncate = not self.memo_built  # memo stores exactly nbb frames
        return self._read

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    @property
    def manifest(self) -> dict | None:
        if self._manifest is False:
            self._manifest = read_manifest(self.path)
        return self._manifest

    @property
    def memo_built(self) -> bool:
        return self.manifest is not None

    def raw(self, key: str) -> bytes | None:
        """The stored bytes of a key (None when absent)."""
        buf = self._txn().get(key.encode("utf-8"))
        return None if buf is None else bytes(buf)

    def get(self, segment: str) -> dict[str, np.ndarray]:
        key = segment if segment.endswith(".npz") else id_to_key(segment)
        txn = self._read if self._pid == os.getpid() else self._txn()
        buf = txn.get(key.encode("utf-8"))
        if buf is None:
            raise KeyError(f"{self.path}: no segment {key!r}")
        try:
            arrays = self._decode(buf)
        except DatabaseError as exc:
            raise DatabaseError(f"{self.path}: segment {key!r}: {exc}; rebuild the "
                                "database") from None
        if self._truncate:  # other tools may store more frames than nbb says
            n = self.nbb().get(key)
            if n is not None and "features" in arrays and len(arrays["features"]) > n:
                arrays = {k: v[:n] for k, v in arrays.items()}
        return arrays

    __getitem__ = get

    def __contains__(self, segment: str) -> bool:
        return self._txn().get(id_to_key(segment).encode("utf-8")) is not None

    def keys(self) -> list[str]:
        """All segment keys (from ``__keys__``, or by scanning when it is missing)."""
        if self._keys is None:
            txn = self._txn()
            raw = txn.get(KEYS_KEY)
            if raw is not None:
                try:
                    self._keys = json.loads(bytes(raw))
                except ValueError as exc:
                    raise DatabaseError(f"{self.path}: __keys__ is not JSON ({exc}); "
                                        "rebuild the database") from exc
            else:
                self._keys = scan_keys(txn)
        return self._keys

    def __len__(self) -> int:
        return len(self.keys())

    def nbb(self) -> dict[str, int]:
        """``{key: kept frame count}`` from the nbb json beside the database ({} if none)."""
        if self._nbb is None:
            path = nbb_path_for(self.path)
            if path is None:
                self._nbb = {}
            else:
                try:
                    nbb = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise DatabaseError(f"{path}: unreadable nbb json ({exc}); rebuild the "
                                        "database") from exc
                if not (isinstance(nbb, dict) and all(type(v) is int and v >= 0
                                                      for v in nbb.values())):
                    raise DatabaseError(f"{path}: not an nbb json (a JSON object of segment "
                                        "key -> frame count); rebuild the database")
                self._nbb = nbb
        return self._nbb


def close_all() -> None:
    """Close every environment this process opened for reading (e.g. before rewriting one).
    FeatureDB objects made before must not be used afterwards."""
    for env in _envs.values():
        env.close()
    _envs.clear()


def scan_keys(txn, errors: str = "strict") -> list[str]:
    """Every key a database stores (``__keys__`` left out), by walking its cursor."""
    return [bytes(k).decode("utf-8", errors)
            for k in txn.cursor().iternext(values=False) if k != KEYS_KEY]


def stored_ids(db) -> set[str]:
    """The keys actually stored in the database at ``db`` (not what ``__keys__`` says)."""
    with open_env(db).begin() as txn:
        return set(scan_keys(txn, "replace"))
