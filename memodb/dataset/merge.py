"""``memo db merge SHARD_DIR... OUT``: shard folders -> the folder a single ``memo db build``
of the same config makes, byte for byte. What is refused, how each feature database is joined
and why the result is identical: docs/DATABASES.md, "Sharded builds"."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import changes
from ..errors import BadInputError, DatabaseError, MemoError
from ..feature.imgdb import feature_fields, feature_warnings
from ..feature.rawimg import mean_std, normalization, normalized
from ..parallel import ordered_map
from ..progress import progress_bar
from ..store.build import Build, BuildResult, Written
from ..store.codec import decode_value, encode_value
from ..store.ids import KEYS_KEY
from ..store.manifest import Checksum, read_manifest
from ..store.reader import open_env
from .build import (DatasetResult, build_texts, check_folder, check_goes_stale, feature_summary,
                    stale_databases, write_dataset_file)
from .shard import prepare_folder, read_shard_file

CHUNK = 64  # values per task
REBUILD = "rebuild the shard with memo db build CONFIG DIR --shard {}"


@dataclass
class ShardFolder:
    path: Path
    record: dict  # its shard.json

    @property
    def index(self) -> int:
        return self.record["index"]

    @property
    def count(self) -> int:
        return self.record["count"]

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def merge_shards(shard_dirs, out_dir, *, workers: int | None = None, progress: bool = False,
                 log=None) -> DatasetResult:
    """Join the shard folders of one config into the dataset folder ``out_dir``, then check
    it (docs/DATABASES.md, "Sharded builds")."""
    shards = read_shards(shard_dirs)
    cfg = shards[0].record["config"]
    out_dir = Path(out_dir)
    for s in shards:
        if out_dir.exists() and os.path.samefile(out_dir, s.path):
            raise BadInputError("OUT is one of the shard folders", file=out_dir,
                                fix="merge into a folder of its own")
    prepare_folder(out_dir, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = DatasetResult(out_dir)
    feature_paths = {}
    with check_goes_stale(out_dir):  # as in a build: no report about replaced databases
        for name, spec in cfg["features"].items():
            t0 = time.perf_counter()
            r = merge_feature_db(shards, name, out_dir / name, workers=workers,
                                 progress=progress)
            feature_paths[name] = r.path
            res.warnings += [f"{name}: {w}" for w in feature_warnings(r.manifest)]
            res.warnings += stale_databases(out_dir / name, r.path)
            res.record(spec["type"], name, r.path, "up to date" if r.skipped else "merged",
                       feature_summary(r.manifest), t0, log)
        build_texts(cfg, res, feature_paths, workers=workers, progress=progress, log=log)
        write_dataset_file(cfg, res)
    return check_folder(res, workers=workers, progress=progress)


def read_shards(shard_dirs) -> list[ShardFolder]:
    """The shard folders in index order, after refusing any set that is not one whole dataset."""
    if not shard_dirs:
        raise BadInputError("no shard folder given", fix="list every shard folder, then OUT")
    shards = [ShardFolder(Path(d), read_shard_file(d)) for d in shard_dirs]
    first = shards[0]
    for s in shards:
        if s.record.get("memo_version") != __version__:
            raise BadInputError(f"shard {s.label} was built by memo "
                                f"{s.record.get('memo_version')}, this is memo {__version__}",
                                file=s.path, fix="build the shards and merge them with one "
                                "memo version")
        if s.count != first.count:
            raise BadInputError(f"is shard {s.label} but {first.path} is shard {first.label}: "
                                "the shards were built for different numbers of shards",
                                file=s.path, fix=f"build every shard with --shard "
                                f"I/{first.count}, or all of them again with another N")
        if s.record["config"] != first.record["config"]:
            keys = ", ".join(changes(s.record["config"], first.record["config"]))
            raise BadInputError(f"shard {s.label} was built from another config than "
                                f"{first.path} (differs in {keys})", file=s.path,
                                fix="build every shard of a dataset from the same config: "
                                + REBUILD.format(s.label))
    by_index: dict[int, ShardFolder] = {}
    for s in shards:
        if s.index in by_index:
            raise BadInputError(f"is shard {s.label}, and so is {by_index[s.index].path}",
                                file=s.path, fix="list each shard once")
        by_index[s.index] = s
    missing = [f"{i}/{first.count}" for i in range(first.count) if i not in by_index]
    if missing:
        raise BadInputError(f"shard(s) {', '.join(missing)} missing: {len(by_index)} of "
                            f"{first.count} given", fix=f"build each with memo db build CONFIG "
                            f"DIR --shard {missing[0]} and list its folder too")
    return [by_index[i] for i in range(first.count)]


def _shard_db(shard: ShardFolder, name: str) -> tuple[Path, dict]:
    """A shard's database of feature ``name`` and its manifest, refused unless finished and
    numbered like its folder."""
    entry = shard.record["databases"].get(name)
    path = shard.path / str((entry or {}).get("path"))
    fix = REBUILD.format(shard.label)
    if entry is None:
        raise BadInputError(f"shard {shard.label} has no database {name!r}", file=shard.path,
                            fix=fix)
    try:
        manifest = read_manifest(path) if (path / "data.mdb").exists() else None
    except MemoError as exc:
        raise BadInputError(str(exc), file=path, fix=fix) from None
    if manifest is None:
        raise BadInputError(f"shard {shard.label}: database {name!r} is not a finished build",
                            file=path, fix=fix)
    got = manifest.get("shard") or {}
    if (got.get("index"), got.get("count")) != (shard.index, shard.count):
        raise BadInputError(f"database {name!r} is not shard {shard.label} (its manifest says "
                            f"{got.get('index')}/{got.get('count')})", file=path, fix=fix)
    return path, manifest


def _arrays(manifest: dict) -> dict:
    return {k: (a["dtype"], tuple(a["shape"][1:])) for k, a in manifest["arrays"].items()}


def merge_feature_db(shards: list[ShardFolder], name: str, out_folder: Path, *,
                     workers: int | None = None, progress: bool = False) -> BuildResult:
    """Merge the shards' databases of feature ``name`` into ``out_folder`` (step 2 of
    docs/DATABASES.md, "Sharded builds")."""
    dbs, manifests = zip(*(_shard_db(s, name) for s in shards))
    first = manifests[0]
    kind, source = first["kind"], first["source"]
    options = {k: v for k, v in first["options"].items() if k != "shard"}
    arrays_seen: dict = {}
    pos = 0
    total = first["shard"]["corpus_segments"]
    for s, db, m in zip(shards, dbs, manifests):
        fix = REBUILD.format(s.label)
        own = {k: v for k, v in m["options"].items() if k != "shard"}
        if m["kind"] != kind or own != options:
            raise BadInputError(f"{kind} database built with options {own}, shard "
                                f"{shards[0].label}'s with {options}", file=db, fix=fix)
        if (m["source"].get("path"), m["source"].get("fingerprint")) != (
                source.get("path"), source.get("fingerprint")):
            raise BadInputError(
                f"built from other source files than shard {shards[0].label} "
                f"({m['source'].get('files')} files, {m['source'].get('bytes')} bytes at "
                f"{m['source'].get('path')}; shard {shards[0].label}: {source.get('files')} "
                f"files, {source.get('bytes')} bytes at {source.get('path')})", file=db,
                fix="every shard must see the same files at the same path with the same "
                "modification times (a shared file system, or copies made with rsync -a); "
                + fix)
        rng = m["shard"]
        if rng["corpus_segments"] != total or rng["start"] != pos:
            raise BadInputError(f"holds segments {rng['start']}..{rng['stop']} of "
                                f"{rng['corpus_segments']}; the shards before it end at {pos} "
                                f"of {total}", file=db, fix=fix)
        pos = rng["stop"]
        if m["counts"]["segments"]:
            layout = _arrays(m)
            if arrays_seen and layout != arrays_seen:
                raise BadInputError(f"its segments store arrays {layout}, those of the shards "
                                    f"before it {arrays_seen} (a single build refuses such a "
                                    "corpus too)", file=db, fix="build segments of different "
                                    "feature kinds into separate databases")
            arrays_seen = arrays_seen or layout
    if pos != total:  # cannot happen when every shard tiles its part; kept as a guard
        raise BadInputError(f"the shards cover segments 0..{pos} of {total}",
                            file=shards[-1].path, fix=REBUILD.format(shards[-1].label))
    db_name, nbb_file = dbs[0].name, first["nbb_file"]
    build = Build(out_folder / db_name, kind, options, source, replace=True, nbb_file=nbb_file)
    done = build.up_to_date()
    if done is not None:
        return done

    extra, work, w = {}, _copy_chunk, 1
    if "id_case_collisions" in first:  # found over the whole corpus by every shard
        extra["id_case_collisions"] = first["id_case_collisions"]
    if kind != "rawimg" and any("sums" in m for m in manifests):  # speech: audio counts
        extra["sums"] = {k: sum(m.get("sums", {}).get(k, 0) for m in manifests)
                         for k in sorted({k for m in manifests for k in m.get("sums", {})})}
    if kind == "rawimg":
        if arrays_seen and arrays_seen["features"][0] != np.dtype(np.uint8).str:
            raise BadInputError("raw-crop shard does not hold 8-bit crops", file=dbs[0],
                                fix=REBUILD.format(shards[0].label))
        if options["mean"] is None:
            sums = {k: sum(m.get("sums", {}).get(k, 0) for m in manifests)
                    for k in ("pixels", "pixel_sum", "pixel_sum_sq")}
            mean, std = mean_std(sums)
        else:
            mean, std = options["mean"], options["std"]
        extra["normalization"] = normalization(mean, std, options["mean"] is None)
        work, w = partial(_normalize_chunk, float(mean), float(std)), workers
        if arrays_seen:
            arrays_seen = {**arrays_seen, "features": (np.dtype(np.float16).str,
                                                       arrays_seen["features"][1])}
    counts = {k: sum(m["counts"][k] for m in manifests) for k in first["counts"]}
    nbbs = [_read_nbb(db, m, s) for s, db, m in zip(shards, dbs, manifests)]

    def write(out) -> Written:
        nbb: dict[str, int] = {}
        checks, seen, last = [Checksum() for _ in dbs], [0] * len(dbs), b""
        with progress_bar(progress, counts["segments"], f"merge {name}") as bar:
            for i, items in ordered_map(work, _chunks(dbs), w):
                for key, value, in_digest, out_digest in items:
                    if key <= last:
                        raise DatabaseError(f"{dbs[i]}: key {key!r} does not sort after the "
                                            "keys of the shards before it; "
                                            + REBUILD.format(shards[i].label))
                    last = key
                    checks[i].update_digest(key, in_digest)
                    text = key.decode("utf-8")
                    if text not in nbbs[i]:
                        raise DatabaseError(f"{dbs[i]}: segment {text!r} is not in its nbb "
                                            "json; " + REBUILD.format(shards[i].label))
                    out.put(key, value, out_digest)
                    nbb[text] = nbbs[i][text]
                    seen[i] += 1
                    bar(1)
        for args in zip(shards, dbs, manifests, checks, seen, nbbs):
            _verify(*args)
        return Written(feature_fields(arrays_seen, counts, nbb_file, extra), {nbb_file: nbb})

    return build.run(write)


def _read_nbb(db: Path, manifest: dict, shard: ShardFolder) -> dict:
    path = db.parent / manifest["nbb_file"]
    try:
        nbb = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(nbb, dict)
    except (OSError, ValueError, AssertionError):
        raise BadInputError("missing or not a JSON object", file=path,
                            fix=REBUILD.format(shard.label)) from None
    return nbb


def _verify(shard: ShardFolder, db: Path, manifest: dict, check: Checksum, seen: int,
            nbb: dict) -> None:
    """A shard's streamed content is what its manifest and nbb json say."""
    if check.hexdigest() != manifest.get("checksum") or seen != manifest["counts"]["segments"] \
            or len(nbb) != seen:
        raise DatabaseError(f"{db}: its content differs from its manifest ({seen} segments "
                            f"read, the manifest says {manifest['counts']['segments']}; "
                            f"checksum {check.hexdigest()}, the manifest says "
                            f"{manifest.get('checksum')}): the shard changed after its build "
                            f"(a damaged copy?); re-copy it or "
                            + REBUILD.format(shard.label))


def _chunks(dbs):
    """``(shard position, [(key, value), ...])`` in shard order, then key order."""
    for i, db in enumerate(dbs):
        with open_env(db).begin() as txn:
            chunk = []
            for key, value in txn.cursor():
                if key == KEYS_KEY:
                    continue
                chunk.append((key, value))
                if len(chunk) == CHUNK:
                    yield i, chunk
                    chunk = []
            if chunk:
                yield i, chunk


def _copy_chunk(task):
    i, items = task
    out = []
    for key, value in items:
        digest = hashlib.sha256(value).digest()
        out.append((key, value, digest, digest))
    return i, out


def _normalize_chunk(mean: float, std: float, task):
    """Worker: 8-bit gray crops of a raw-crop shard -> the values a single build stores."""
    i, items = task
    out = []
    for key, value in items:
        try:
            arrays = decode_value(value)
        except DatabaseError as exc:
            raise DatabaseError(f"segment {key!r} of a raw-crop shard: {exc}") from None
        new = encode_value(normalized(arrays, mean, std))
        out.append((key, new, hashlib.sha256(value).digest(), hashlib.sha256(new).digest()))
    return i, out
