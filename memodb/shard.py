"""Building one dataset on several machines: shards of ``memo db build`` and their folders.

``memo db build CONFIG OUT --shard I/N`` builds shard I (counted from 0) of N into a shard
folder; ``memo db merge SHARD_DIR... OUT`` (:mod:`memodb.merge`) joins the N shard folders into
the dataset folder a single ``memo db build CONFIG OUT`` makes, byte for byte.

**Membership.** Every feature source lists its segments sorted by key (every build does; it
reads no feature) and shard I of N takes the contiguous range ``[I*M//N, (I+1)*M//N)`` of its M
keys. The range is a pure function of the key list and N, and the key list is the same on every
machine that sees the same source files, which the merge proves: every shard records the
source fingerprint (file names, sizes, modification times) and the merge refuses shards whose
fingerprints differ. Ranges rather than ``sha256(id) mod N``: a movie's segments stay together
(one shard opens each movie's h5 file, instead of every shard opening every file), each shard's
keys all sort after the previous shard's, so the merge is a concatenation in shard order, and
the shards' ``start`` / ``stop`` recorded in their manifests prove them disjoint and covering
(they must tile ``[0, M)``).

**What a shard folder holds.** Only the expensive part, the share of every feature and
raw-crop database (h5 reading, image decoding): ``<feature name>/feat_th.../`` and its nbb
json, a database whose options carry ``shard`` (``{"index", "count"}``, so it is never taken
for a full build) and whose manifest records ``shard`` (``{"index", "count", "start", "stop",
"corpus_segments"}``); ``check.json``; and ``shard.json`` (:data:`SHARD_FILE`), the resolved
config and the databases, written last: a shard folder without it is unfinished. Raw-crop
shards store 8-bit gray crops and integer pixel sums, since the normalisation needs the mean
over the whole corpus (see :mod:`memodb.rawimg`). ``memo db check`` checks a shard folder's
databases and reports the folder as a shard.

**Text.** Splits are drawn from the usable ids of the whole corpus, and which ids are usable
depends on the faces every segment has in the whole feature database (``min_faces``) and on
its text (empty texts, ``long: drop``). A shard sees neither, so shards tokenise nothing: the
merge builds the text databases from the merged feature database with the very code of a
single build (``create_txtdb``), which makes them identical by construction. Tokenising is
cheap next to the features (tens of thousands of texts a second).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .check import DbReport
from .errors import BadInputError, MemoError, OutputExistsError
from .manifest import DATASET_FILE, read_manifest, write_json_atomic

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
                f"{out_dir} is a shard folder ({SHARD_FILE}: shard {_label(body)}); build the "
                "dataset in another OUT_DIR, or join the shards with memo db merge")
        return
    if (out_dir / DATASET_FILE).exists():
        raise OutputExistsError(f"{out_dir} holds a dataset ({DATASET_FILE}); build shard "
                                f"{shard} in a folder of its own (e.g. shards/{shard.index})")
    if body is not None and (body.get("index"), body.get("count")) != (shard.index,
                                                                      shard.count):
        raise OutputExistsError(f"{out_dir} holds shard {_label(body)}, not {shard}; give each "
                                f"shard a folder of its own (e.g. shards/{shard.index})")
    (out_dir / SHARD_FILE).unlink(missing_ok=True)


def _read_json(path: Path):
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _label(body) -> str:
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


def check_shard_folder(folder) -> DbReport:
    """``memo db check`` of a shard folder's record: the listed databases are there and are
    shard I/N's (their own checks run separately)."""
    folder = Path(folder)
    rep = DbReport(str(folder), kind=KIND)
    try:
        body = read_shard_file(folder)
    except MemoError as exc:
        rep.problem("shard_unreadable", str(exc))
        return rep
    for name, entry in sorted(body["databases"].items()):
        path = folder / str(entry.get("path"))
        try:
            manifest = read_manifest(path) if (path / "data.mdb").exists() else None
        except MemoError:
            continue  # the database's own check reports it
        if manifest is None:
            rep.problem("shard_db_missing", f"database {name!r} is listed at "
                        f"{entry.get('path')} but no finished database is there")
            continue
        got = manifest.get("shard") or {}
        if (got.get("index"), got.get("count")) != (body["index"], body["count"]):
            rep.problem("shard_mismatch", f"database {name!r} is shard {_label(got)}, the "
                        f"folder is shard {_label(body)}; rebuild the shard")
    rep.counts = {"index": body["index"], "count": body["count"],
                  "databases": len(body["databases"])}
    return rep
