"""Reading text databases, memo-built or built by the original UNITER / MEmoBERT tools:
:class:`TextDB` (picklable, opened lazily once per process like
:class:`~memodb.store.reader.FeatureDB`) and the names of a text database's side files."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DatabaseError, MemoError
from .manifest import read_manifest
from .reader import open_env
from .textcodec import decode_example

META, ID2LEN, TXT2IMG, IMG2TXTS = "meta.json", "id2len.json", "txt2img.json", "img2txts.json"


def is_text_db(path) -> bool:
    """A text database: manifest kind "text", or (without manifest) the text side files."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except MemoError:
        manifest = None
    if manifest is not None:
        return manifest.get("kind") == "text"
    return (path / ID2LEN).exists() or (path / TXT2IMG).exists()


class TextDB:
    """Read a text database (memo-built or from the original tools): ``db[id]`` is the
    example dict; ``ids()``, ``id2len``, ``txt2img``, ``meta`` and ``manifest`` as stored."""

    def __init__(self, path):
        self.path = Path(path)
        self._json: dict = {}
        self._pid = None
        self._txn()  # fail early on a wrong path

    def _txn(self):
        """This process's read transaction (the database is immutable once built: one
        transaction serves every read, as in FeatureDB)."""
        if self._pid != os.getpid():
            self._read = open_env(self.path).begin(buffers=True)
            self._pid = os.getpid()
        return self._read

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _side(self, name, value_type=None):
        """A side file's JSON object (``value_type``: the type of every value), read once."""
        if name not in self._json:
            p = self.path / name
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DatabaseError(f"{p}: unreadable ({exc}); rebuild the text "
                                    "database") from None
            if not isinstance(data, dict) or (value_type is not None and not all(
                    type(v) is value_type for v in data.values())):
                what = f" of {value_type.__name__} values" if value_type else ""
                raise DatabaseError(f"{p}: not a JSON object{what}; rebuild the text database")
            self._json[name] = data
        return self._json[name]

    @property
    def meta(self) -> dict:
        return self._side(META)

    @property
    def id2len(self) -> dict:
        return self._side(ID2LEN, int)

    @property
    def txt2img(self) -> dict:
        return self._side(TXT2IMG, str)

    @property
    def manifest(self) -> dict | None:
        return read_manifest(self.path)

    def ids(self) -> list[str]:
        return list(self.id2len)

    def __len__(self) -> int:
        return len(self.id2len)

    def __getitem__(self, text_id: str) -> dict:
        buf = self._txn().get(text_id.encode("utf-8"))
        if buf is None:
            raise KeyError(f"{self.path}: no text {text_id!r}")
        try:
            ex = decode_example(buf)
        except DatabaseError as exc:
            raise DatabaseError(f"{self.path}: text {text_id!r}: {exc}") from None
        if not isinstance(ex, dict):
            raise DatabaseError(f"{self.path}: text {text_id!r}: the value is a "
                                f"{type(ex).__name__}, not an example map; rebuild the text "
                                "database")
        return ex
