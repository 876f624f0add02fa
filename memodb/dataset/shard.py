"""Shards of ``memo db build`` (``--shard I/N``): which segments shard I of N takes, the shard
folder's record ``shard.json`` and the checks that keep a dataset and a shard folder apart. Why
ranges, what a shard folder holds and why text is left to the merge: docs/DATABASES.md,
"Sharded builds"."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import BadInputError, OutputExistsError
from ..store.manifest import DATASET_FILE, write_json_atomic

SHARD_FILE = "shard.json"
KIND = "shard"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (from 0) of ``count``."""

    index: int
    count: int

    def __str__(self):
        return f"{self.index}/{self.count}"

    def bounds(self, total: int) -> tuple[int, int]:
        """``[start, stop)`` of this shard among ``total`` sorted segments."""
        return self.index * total // self.count, (self.index + 1) * total // self.count

    def take(self, items: list) -> list:
        start, stop = self.bounds(len(items))
        return items[start:stop]

    def options(self) -> dict:
        """What goes into a shard database's options (an identical re-run is skipped)."""
        return {"index": self.index, "count": self.count}

    def record(self, total: int) -> dict:
        """The manifest's ``shard`` entry of a database built from ``total`` listed segments."""
        start, stop = self.bounds(total)
        return {"index": self.index, "count": self.count, "start": start, "stop": stop,
                "corpus_segments": total}


def parse_shard(text) -> Shard:
    """``"2/8"`` -> Shard(2, 8); a Shard is returned as it is."""
    if isinstance(text, Shard):
        return text
    fix = "write the shard index (from 0) and the number of shards: --shard 0/4 ... --shard 3/4"
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise BadInputError(f"--shard {text!r} is not INDEX/COUNT", fix=fix)
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1:
        raise BadInputError(f"--shard {text}: the number of shards must be at least 1", fix=fix)
    if index >= count:
        raise BadInputError(f"--shard {text}: shard indices run from 0 to {count - 1}", fix=fix)
    return Shard(index, count)


def prepare_folder(out_dir: Path, shard: Shard | None) -> None:
    """Refuse an OUT_DIR that holds the other kind of build (a shard folder for a dataset
    build, a dataset or another shard for a shard build). For a shard build, remove its
    ``shard.json``: the folder reads as unfinished until the build rewrites it at the end."""
    out_dir = Path(out_dir)
    body = _read_json(out_dir / SHARD_FILE)
    if shard is None:
        if (out_dir / SHARD_FILE).exists():
            raise OutputExistsError(
                f"{out_dir} is a shard folder ({SHARD_FILE}: shard {shard_label(body)}); build "
                "the dataset in another OUT_DIR, or join the shards with memo db merge")
        return
    if (out_dir / DATASET_FILE).exists():
        raise OutputExistsError(f"{out_dir} holds a dataset ({DATASET_FILE}); build shard "
                                f"{shard} in a folder of its own (e.g. shards/{shard.index})")
    if body is not None and (body.get("index"), body.get("count")) != (shard.index,
                                                                      shard.count):
        raise OutputExistsError(f"{out_dir} holds shard {shard_label(body)}, not {shard}; give "
                                f"each shard a folder of its own (e.g. shards/{shard.index})")
    (out_dir / SHARD_FILE).unlink(missing_ok=True)


def _read_json(path: Path):
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def shard_label(body) -> str:
    if not body:
        return "?"
    return f"{body.get('index')}/{body.get('count')}"


def write_shard_file(out_dir, cfg: dict, shard: Shard, databases: dict) -> None:
    """The record of a finished shard (written last)."""
    write_json_atomic(Path(out_dir) / SHARD_FILE, {
        "kind": KIND, "name": cfg["name"], "memo_version": __version__, "index": shard.index,
        "count": shard.count, "config": cfg, "databases": databases}, indent=1)


def read_shard_file(folder) -> dict:
    """The ``shard.json`` of a finished shard folder, or BadInputError saying what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError("not a folder", file=folder, fix="give the shard folders that "
                            "memo db build --shard wrote")
    path = folder / SHARD_FILE
    if not path.exists():
        if (folder / DATASET_FILE).exists():
            raise BadInputError(f"a dataset folder ({DATASET_FILE}), not a shard", file=folder,
                                fix="give the folders of memo db build --shard I/N")
        if any(folder.iterdir()):
            raise BadInputError(f"an unfinished shard (no {SHARD_FILE}: its build was "
                                "interrupted or failed, or this is not a shard folder)",
                                file=folder, fix="re-run its memo db build --shard I/N "
                                "command to finish it")
        raise BadInputError(f"not a shard folder (empty, no {SHARD_FILE})", file=folder,
                            fix="give the folders of memo db build --shard I/N")
    body = _read_json(path)
    ok = (body is not None and body.get("kind") == KIND and isinstance(body.get("config"), dict)
          and isinstance(body.get("databases"), dict)
          and all(isinstance(body.get(k), int) for k in ("index", "count"))
          and 0 <= body["index"] < body["count"])
    if not ok:
        raise BadInputError(f"{SHARD_FILE} is not a shard record", file=path,
                            fix="rebuild the shard with memo db build --shard I/N")
    return body
