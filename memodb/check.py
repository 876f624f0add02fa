"""``memo db check``: verify databases; a :class:`CheckReport` decides the exit code."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .codec import decode_value
from .errors import DatabaseError, MemoError
from .ids import KEYS_KEY
from .manifest import Checksum, read_manifest
from .naming import nbb_path_for
from .parallel import chunked, ordered_map
from .progress import progress_bar
from .reader import open_env


@dataclass
class Problem:
    code: str
    message: str
    segment: str | None = None

    def __str__(self):
        return f"[{self.code}] " + (f"{self.segment}: " if self.segment else "") + self.message


@dataclass
class DbReport:
    """What one database's check found."""

    path: str
    kind: str = "feature"
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def problem(self, code: str, message: str, segment: str | None = None) -> None:
        self.problems.append(Problem(code, message, segment))

    def warn(self, code: str, message: str, segment: str | None = None) -> None:
        self.warnings.append(Problem(code, message, segment))

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "ok": self.ok, "counts": self.counts,
                "problems": [vars(p) for p in self.problems],
                "warnings": [vars(p) for p in self.warnings]}

    def summary(self) -> str:
        """What the database holds, in a few words (``memo db check`` prints it)."""
        c = self.counts
        if self.kind == "text":
            return f"{c.get('texts', 0)} texts, {c.get('pieces', 0)} pieces"
        if self.kind == "splits":
            return f"{c.get('splits', 0)} splits, {c.get('texts', 0)} texts"
        if self.kind == "dataset":
            return f"{c.get('databases', 0)} databases"
        if self.kind == "shard":
            return (f"shard {c.get('index')}/{c.get('count')}, {c.get('databases', 0)} "
                    "databases; memo db merge joins the shards into a dataset")
        if self.kind in ("missing", "partial"):
            return ""
        return f"{c.get('segments', 0)} segments, {c.get('empty', 0)} empty"


@dataclass
class CheckReport:
    """All databases checked in one run. Exit code 0 when every one is clean, 1 otherwise."""

    databases: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.databases)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict:
        return {"ok": self.ok, "databases": [d.to_dict() for d in self.databases]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)


@dataclass
class _Found:
    """What a walk below a folder found (each list sorted, paths as walked)."""

    dbs: list = field(default_factory=list)
    partials: list = field(default_factory=list)  # .<name>.partial / .replaced: leftovers
    split_groups: list = field(default_factory=list)  # folders holding splits.json
    datasets: list = field(default_factory=list)  # folders holding dataset.json
    shards: list = field(default_factory=list)  # folders holding shard.json (memodb.shard)


def _walk(path) -> _Found:
    """Databases anywhere below ``path`` (or ``path`` itself), skipping hidden entries;
    symbolic links are followed once (no loops). A database directory is not entered."""
    from .check_text import DATASET_FILE
    from .shard import SHARD_FILE
    from .splits import SPLITS_FILE

    found = _Found()
    path = Path(path)
    if (path / "data.mdb").exists():
        found.dbs.append(path)
        return found
    seen = set()
    stack = [path] if path.is_dir() else []
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        if (folder / SPLITS_FILE).is_file():
            found.split_groups.append(folder)
        if (folder / DATASET_FILE).is_file():
            found.datasets.append(folder)
        if (folder / SHARD_FILE).is_file():
            found.shards.append(folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                continue
            if not is_dir:
                continue
            sub = folder / e.name
            if e.name.startswith("."):
                if e.name.endswith((".partial", ".replaced")):  # left by a killed build
                    found.partials.append(sub)
                continue
            if (sub / "data.mdb").exists():
                found.dbs.append(sub)
            else:
                stack.append(sub)
    for lst in (found.dbs, found.partials, found.split_groups, found.datasets, found.shards):
        lst.sort()
    return found


def find_databases(path) -> list[Path]:
    """A database directory itself, or every database nested anywhere below a folder
    (hidden entries skipped)."""
    return _walk(path).dbs


def db_kind(path) -> str:
    """"text" for a text database (manifest kind, or its side files), else "feature"."""
    from .txtdb import is_text_db

    return "text" if is_text_db(path) else "feature"


def check(paths, *, workers: int | None = None, progress: bool = False) -> CheckReport:
    """Check every database found at ``paths`` (database directories or folders holding them
    at any depth), every split group (folder with splits.json) and dataset folder
    (dataset.json) found there."""
    from .check_text import _check_text_db, check_dataset, check_split_group
    from .shard import check_shard_folder

    report = CheckReport()
    links: dict = {}  # linked feature databases, read once per run
    for path in paths:
        found = _walk(path)
        if not found.dbs:
            r = DbReport(str(path), kind="missing")
            r.problem("not_found", "no LMDB database here (no data.mdb in it or in its "
                      "sub-folders); give a database directory or a folder of them")
            report.databases.append(r)
        for partial_dir in found.partials:
            r = DbReport(str(partial_dir), kind="partial")
            if partial_dir.name.endswith(".replaced"):
                r.warn("replaced_left", "a database replaced by a newer build, left by a build "
                       "killed before deleting it; re-run the build (it removes it) or delete it")
            else:
                r.warn("unfinished_build", "an interrupted build left this (an unfinished "
                       "database, or the one it was replacing); re-run the build (it removes "
                       "it) or delete it")
            report.databases.append(r)
        ids_by_db: dict = {}
        for db in found.dbs:
            if db_kind(db) == "text":
                rep, ids = _check_text_db(db, workers=workers, progress=progress, links=links)
                if ids is not None:
                    ids_by_db[os.path.realpath(db)] = ids
            else:
                rep = check_feature_db(db, workers=workers, progress=progress)
            report.databases.append(rep)
        for folder in found.split_groups:
            report.databases.append(check_split_group(folder, ids_by_db))
        for folder in found.datasets:
            report.databases.append(check_dataset(folder, find_databases))
        for folder in found.shards:
            report.databases.append(check_shard_folder(folder))
    return report


def check_feature_db(path, *, workers: int | None = None, progress: bool = False) -> DbReport:
    """Check one feature / raw-crop / speech database; see docs/FORMAT.md for each rule."""
    path = Path(path)
    rep = DbReport(str(path))
    try:
        manifest = read_manifest(path)
        env = open_env(path)
        with env.begin() as txn:
            stored = [k for k in txn.cursor().iternext(values=False) if k != KEYS_KEY]
            keys_raw = txn.get(KEYS_KEY)
    except (MemoError, UnicodeDecodeError) as exc:
        rep.problem("unreadable", str(exc))
        return rep
    except Exception as exc:  # lmdb raises many types on damaged files
        rep.problem("unreadable", f"LMDB cannot read it ({type(exc).__name__}: {exc}); "
                    "re-copy or rebuild the database")
        return rep
    if manifest is not None:
        manifest = manifest_fields(rep, manifest, FEATURE_FIELDS)
        rep.kind = manifest.get("kind", "feature")
    else:
        rep.warn("no_manifest", "no memo manifest (built by another tool, or not finished): "
                 "counts and checksum cannot be verified")
    stored_set = set(stored)
    names = utf8_keys(rep, stored)
    _check_keys_list(rep, keys_raw, stored_set)
    nbb = _check_nbb(rep, path, stored_set, required=manifest is not None)

    layouts: dict = {}
    checksum = Checksum()
    counts = {"segments": len(names), "empty": 0, "frames": 0}
    with progress_bar(progress, len(names), f"check {path.name}") as bar:
        for results in ordered_map(partial(_inspect_chunk, str(path)), chunked(names, 256),
                                   workers):
            for key, digest, info, err in results:
                bar(1)
                checksum.update_digest(key.encode("utf-8"), digest)
                if err:
                    rep.problem("undecodable", err, key)
                    continue
                layout, length, mismatch, bad_arrays = info
                layouts.setdefault(layout, []).append(key)
                counts["frames"] += length
                counts["empty"] += length == 0
                if mismatch:
                    rep.problem("length_mismatch", f"arrays have different lengths ({mismatch})",
                                key)
                for name in bad_arrays:
                    rep.problem("not_finite", f"'{name}' holds NaN or Inf", key)
                if nbb is not None and key in nbb and nbb[key] != length:
                    rep.problem("nbb_mismatch", f"nbb json says {nbb[key]} frames, the value "
                                f"stores {length}", key)
    _check_layouts(rep, layouts)
    rep.counts = counts
    if manifest is not None:
        _check_manifest(rep, manifest, counts, layouts, checksum.hexdigest(), path)
    return rep


# The JSON type of each manifest field the checks read (docs/FORMAT.md); any may be absent.
FEATURE_FIELDS = {"kind": str, "counts": dict, "arrays": dict, "options": dict, "source": dict}
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


def manifest_fields(rep: DbReport, manifest: dict, types: dict) -> dict:
    """The manifest without the fields whose JSON type is not the one in ``types``, each
    reported as a ``manifest_invalid`` problem: a damaged or hand-edited manifest is reported,
    it does not crash the check."""
    out = dict(manifest)
    for name, typ in types.items():
        value = out.get(name)
        if value is not None and not isinstance(value, typ):
            rep.problem("manifest_invalid", f"manifest.json: {name!r} is "
                        f"{json.dumps(value)[:60]}, not {_JSON_TYPES[typ]}; rebuild the "
                        "database")
            del out[name]
    return out


def utf8_keys(rep: DbReport, stored) -> list[str]:
    """The stored keys as text; a key that is not UTF-8 is a problem."""
    names = []
    for k in stored:
        try:
            names.append(k.decode("utf-8"))
        except UnicodeDecodeError:
            rep.problem("bad_key", f"key {k!r} is not UTF-8")
    return names


def _check_keys_list(rep: DbReport, keys_raw, stored_set) -> None:
    if keys_raw is None:
        rep.problem("keys_missing", "no __keys__ entry; rebuild with memo db create-imgdb")
        return
    try:
        listed = json.loads(keys_raw)
        assert isinstance(listed, list) and all(isinstance(k, str) for k in listed)
    except (ValueError, AssertionError):
        rep.problem("keys_unreadable", "__keys__ is not a JSON list of strings; rebuild")
        return
    listed_b = [k.encode("utf-8") for k in listed]
    if len(set(listed_b)) != len(listed_b):
        rep.problem("keys_duplicate", f"__keys__ lists {len(listed_b) - len(set(listed_b))} "
                    "key(s) twice")
    for k in sorted(set(listed_b) - stored_set):
        rep.problem("keys_extra", "listed in __keys__ but not stored", k.decode())
    for k in sorted(stored_set - set(listed_b)):
        rep.problem("keys_unlisted", "stored but not listed in __keys__", k.decode("utf-8", "replace"))


def _check_nbb(rep: DbReport, path: Path, stored_set, required: bool):
    nbb_path = nbb_path_for(path)
    if nbb_path is None:
        (rep.problem if required else rep.warn)(
            "nbb_missing", f"no nbb json beside the database (expected {path.parent}/nbb_*.json)")
        return None
    try:
        nbb = json.loads(nbb_path.read_text(encoding="utf-8"))
        assert isinstance(nbb, dict) and all(isinstance(v, int) for v in nbb.values())
    except (OSError, ValueError, AssertionError):
        rep.problem("nbb_unreadable", f"{nbb_path} is not a JSON object of integer counts; "
                    "rebuild the database")
        return None
    nbb_b = {k.encode("utf-8") for k in nbb}
    for k in sorted(nbb_b - stored_set):
        rep.problem("nbb_extra", f"in {nbb_path.name} but not stored", k.decode())
    for k in sorted(stored_set - nbb_b):
        rep.problem("nbb_unlisted", f"stored but not in {nbb_path.name}", k.decode("utf-8", "replace"))
    return nbb


def _check_layouts(rep: DbReport, layouts: dict) -> None:
    """Array names, dtypes and trailing dims agree across segments (majority is the norm)."""
    if len(layouts) <= 1:
        return
    norm = max(layouts, key=lambda l: (len(layouts[l]), l))  # noqa: E741
    for layout, keys in sorted(layouts.items()):
        if layout == norm:
            continue
        desc = ", ".join(f"{n} {dt}{list(s)}" for n, (dt, s) in layout)
        for k in keys:
            rep.problem("layout_mismatch", f"arrays ({desc}) differ from the other segments'", k)


def _check_manifest(rep, manifest, counts, layouts, checksum, path) -> None:
    m_counts = manifest.get("counts") or {}
    if m_counts.get("segments") != counts["segments"]:
        rep.problem("count_mismatch", f"manifest says {m_counts.get('segments')} segments, "
                    f"the database stores {counts['segments']}")
    if m_counts.get("empty") is not None and m_counts.get("empty") != counts["empty"]:
        rep.problem("count_mismatch", f"manifest says {m_counts['empty']} empty segments, "
                    f"found {counts['empty']}")
    if manifest.get("checksum") != checksum:
        rep.problem("checksum_mismatch", f"content checksum {checksum} differs from the "
                    f"manifest's {manifest.get('checksum')}: values changed after the build")
    expect = {}
    for n, a in (manifest.get("arrays") or {}).items():
        shape = a.get("shape") if isinstance(a, dict) else None
        if not isinstance(shape, list) or not shape:
            rep.problem("manifest_invalid", f"manifest.json: arrays[{n!r}] is not "
                        "{dtype, shape}; rebuild the database")
            continue
        expect[n] = (a.get("dtype"), tuple(shape[1:]))
    for layout, keys in layouts.items():
        if dict(layout) != expect:
            rep.problem("manifest_arrays", f"{len(keys)} segment(s) store arrays other than "
                        f"the manifest's {manifest.get('arrays')}", keys[0])


def _inspect_chunk(path: str, keys: list[str]):
    """Decode each value; return (key, sha256 digest, (layout, length, length mismatch or None,
    non-finite array names) or None, error or None)."""
    out = []
    env = open_env(path)
    with env.begin(buffers=True) as txn:
        for key in keys:
            buf = txn.get(key.encode("utf-8"))
            digest = hashlib.sha256(buf).digest()
            try:
                arrays = decode_value(buf)
            except DatabaseError as exc:
                out.append((key, digest, None, str(exc)))
                continue
            layout = tuple((n, (a.dtype.str, tuple(a.shape[1:]))) for n, a in arrays.items())
            lengths = {n: (a.shape[0] if a.ndim else None) for n, a in arrays.items()}
            mismatch = (", ".join(f"{n} {v}" for n, v in lengths.items())
                        if len(set(lengths.values())) > 1 else None)
            length = lengths.get("features") or 0
            bad = [n for n, a in arrays.items()
                   if a.dtype.kind == "f" and a.size and not np.isfinite(a).all()]
            out.append((key, digest, (layout, length, mismatch, bad), None))
    return out
