"""``memo db check`` of folders: finding the databases below a path (and the hidden leftovers
of killed builds), split groups (``splits.json``), dataset folders (``dataset.json``) and
shard folders (``shard.json``). The files: docs/FORMAT.md section 7."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..dataset.shard import KIND as SHARD_KIND
from ..dataset.shard import SHARD_FILE, read_shard_file, shard_label
from ..dataset.protocols import PROTOCOL_FILE, assignment_hash, verify
from ..dataset.protocols import from_json as protocol_from_json
from ..errors import DatabaseError, MemoError
from ..parallel import WorkerDied, run_isolated
from ..store.manifest import DATASET_FILE, read_manifest
from ..store.reader import stored_ids
from ..text.splits import SPLITS_FILE
from .report import DbReport

ROLES = ("train", "heldout", "monitor")


@dataclass
class _Found:
    """What a walk below a folder found (each list sorted, paths as walked)."""

    dbs: list = field(default_factory=list)
    partials: list = field(default_factory=list)  # .<name>.partial / .replaced: leftovers
    split_groups: list = field(default_factory=list)  # folders holding splits.json
    datasets: list = field(default_factory=list)  # folders holding dataset.json
    shards: list = field(default_factory=list)  # folders holding shard.json (memodb.dataset.shard)


def walk(path) -> _Found:
    """Databases anywhere below ``path`` (or ``path`` itself), skipping hidden entries;
    symbolic links are followed once (no loops). A database directory is not entered."""
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
    return walk(path).dbs


def check_split_group(folder, ids_by_db: dict | None = None) -> DbReport:
    """Check a folder holding ``splits.json``: every listed database there, train and held-out
    sets pairwise disjoint, no two held-out sets equal, monitors inside their parent.
    ``ids_by_db`` maps a database's real path to the ids its check found (read otherwise)."""
    folder = Path(folder)
    rep = DbReport(str(folder), kind="splits")
    try:
        body = json.loads((folder / SPLITS_FILE).read_text(encoding="utf-8"))
        assert isinstance(body, dict) and isinstance(body.get("splits"), dict)
        assert all(isinstance(e, dict) for e in body["splits"].values())
    except (OSError, ValueError, AssertionError):
        rep.problem("splits_unreadable", f"{SPLITS_FILE} is not a JSON object with a "
                    "'splits' map; rebuild the split databases")
        return rep
    ids_by_db = ids_by_db if ids_by_db is not None else {}
    ids: dict[str, set] = {}
    roles: dict[str, str] = {}
    listed_dbs = set()
    for name, entry in sorted(body["splits"].items()):
        role = entry.get("role")
        if role not in ROLES:
            rep.problem("split_role", f"split {name!r} has role {role!r}, not one of {ROLES}")
            continue
        db = folder / str(entry.get("db", name))
        listed_dbs.add(os.path.realpath(db))
        if not (db / "data.mdb").is_file():
            rep.problem("split_db_missing", f"split {name!r}: no database at {db}")
            continue
        try:
            ids[name] = _split_ids(db, ids_by_db)
            manifest = read_manifest(db)
        except MemoError as exc:
            rep.problem("split_db_unreadable", f"split {name!r}: {exc}")
            continue
        roles[name] = role
        if isinstance(entry.get("texts"), int) and entry["texts"] != len(ids[name]):
            rep.problem("splits_count", f"{SPLITS_FILE} says split {name!r} holds "
                        f"{entry['texts']} texts, its database {len(ids[name])}")
        split = (manifest or {}).get("split")
        if isinstance(split, dict) and split.get("role") not in (None, role):
            rep.problem("split_role_mismatch", f"split {name!r} is {role} in {SPLITS_FILE} "
                        f"but {split.get('role')} in its manifest")
    if not any(e.get("role") == "train" for e in body["splits"].values()) and ids:
        rep.problem("split_no_train", f"{SPLITS_FILE} lists no train split")
    # train and held-out sets pairwise disjoint: one pass, owner of each id
    owner: dict[str, str] = {}
    shared: dict[tuple, list] = {}
    disjoint = [n for n in sorted(roles) if roles[n] in ("train", "heldout")]
    for name in disjoint:
        for t in ids[name]:
            first = owner.setdefault(t, name)
            if first != name:
                shared.setdefault((first, name), []).append(t)
    heldout = [n for n in disjoint if roles[n] == "heldout"]
    for i, a in enumerate(heldout):
        for b in heldout[i + 1:]:
            if ids[a] and ids[a] == ids[b]:
                rep.problem("splits_identical", f"held-out splits {a!r} and {b!r} hold the "
                            f"same {len(ids[a])} ids (validation equals test)", min(ids[a]))
    for (a, b), ts in sorted(shared.items()):
        rep.problem("splits_overlap", f"in both {a!r} ({roles[a]}) and {b!r} ({roles[b]}); "
                    f"{len(ts)} id(s) shared", min(ts))
    for name, entry in sorted(body["splits"].items()):
        if roles.get(name) != "monitor":
            continue
        of = entry.get("of")
        if of not in ids:
            rep.problem("split_of_unknown", f"monitor split {name!r} is drawn from {of!r}, "
                        "which is not a listed split")
            continue
        outside = ids[name] - ids[of]
        if outside:
            rep.problem("monitor_outside", f"in monitor split {name!r} but not in {of!r} "
                        f"({len(outside)} id(s) outside)", min(outside))
    for sub in sorted(folder.iterdir()):
        if not sub.name.startswith(".") and (sub / "data.mdb").exists() \
                and os.path.realpath(sub) not in listed_dbs:
            rep.warn("split_unlisted", f"database {sub.name} is in the folder but not in "
                     f"{SPLITS_FILE} (left from an earlier build?)")
    rep.counts = {"splits": len(body["splits"]), "texts": sum(len(v) for v in ids.values())}
    return rep


def _split_ids(db: Path, ids_by_db: dict) -> set:
    """The ids a split's database stores: those its check found, else read in a child process
    (a damaged database cannot take the check down). A database its check could not read
    (None in ``ids_by_db``) is not read again."""
    real = os.path.realpath(db)
    if real in ids_by_db and ids_by_db[real] is None:
        raise DatabaseError(f"{db} cannot be read (see its own check)")
    if ids_by_db.get(real) is not None:
        return ids_by_db[real]
    try:
        return run_isolated(stored_ids, db)
    except WorkerDied as exc:
        raise DatabaseError(f"reading {db} stopped ({exc}): it is damaged; re-copy or "
                            "rebuild it") from None


def check_dataset(folder, ids_by_db: dict | None = None) -> DbReport:
    """Check a dataset folder's ``dataset.json`` (written by ``memo db build``): every listed
    path exists, text databases link feature databases inside the folder, and text built by a
    protocol is where the protocol puts it (:func:`check_protocol`)."""
    folder = Path(folder)
    rep = DbReport(str(folder), kind="dataset")
    try:
        body = json.loads((folder / DATASET_FILE).read_text(encoding="utf-8"))
        assert isinstance(body, dict) and isinstance(body.get("databases"), dict)
        assert all(isinstance(e, dict) and isinstance(e.get("path"), str)
                   for e in body["databases"].values())
    except (OSError, ValueError, AssertionError):
        rep.problem("dataset_unreadable", f"{DATASET_FILE} is not a JSON object with a "
                    "'databases' map of {path, kind}; rebuild with memo db build")
        return rep
    dbs = set(find_databases(folder))
    for name, entry in sorted(body["databases"].items()):
        p = folder / entry["path"]
        if not p.exists():
            rep.problem("dataset_db_missing", f"database {name!r} ({entry.get('kind')}) is "
                        f"listed at {entry['path']} but is not there")
            continue
        found = find_databases(p)
        if not found:
            rep.problem("dataset_db_missing", f"database {name!r} ({entry.get('kind')}): "
                        f"{entry['path']} holds no database")
        dbs.update(found)
    root = os.path.realpath(folder)
    for db in sorted(dbs):
        try:
            manifest = read_manifest(db)
        except MemoError:
            continue  # the database's own check reports it
        link = (manifest or {}).get("img_db") if (manifest or {}).get("kind") == "text" else None
        if isinstance(link, dict) and isinstance(link.get("path"), str):
            target = os.path.realpath(Path(db) / link["path"])
            if os.path.commonpath([root, target]) != root:
                rep.warn("img_db_outside", f"text database {db} links the feature database "
                         f"{target}, outside the dataset folder: copying the folder breaks it")
    rep.counts = {"databases": len(body["databases"])}
    if isinstance(body.get("protocol"), dict):
        check_protocol(folder, body["protocol"], rep, ids_by_db or {})
    return rep


def check_protocol(folder: Path, record: dict, rep: DbReport, ids_by_db: dict) -> None:
    """A dataset built by a protocol: ``protocol.json`` matches its hash, the protocol's rule
    and speaker independence hold (:func:`~memodb.dataset.protocols.verify`), and each fold's
    databases hold exactly the utterances the assignment gives them (one it lost, e.g. left
    out for having no faces, is a warning; one in the wrong split a problem)."""
    path = folder / str(record.get("file", "txt/" + PROTOCOL_FILE))
    try:
        a = protocol_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, MemoError) as exc:
        rep.problem("protocol_unreadable", f"{path} cannot be read ({exc}); rebuild with "
                    "memo db build")
        return
    digest = assignment_hash(a.name, a.version, a.classes, a.folds, a.labels, a.splits)
    if digest != a.hash or a.hash != record.get("hash"):
        rep.problem("protocol_hash", f"{path}: the assignment hashes to {digest}, the record "
                    f"says {a.hash} ({DATASET_FILE}: {record.get('hash')}): it was changed "
                    "after the build; rebuild with memo db build")
    rep.counts["protocol"] = f"{a.name}@{a.hash}"
    for code, message, uid in verify(a):
        rep.problem(code, message, uid)
    for fold in a.folds:
        group = path.parent / f"fold{fold}"
        for split, want in a.fold_ids(fold).items():
            db = group / split
            if not (db / "data.mdb").is_file():
                rep.problem("protocol_db_missing", f"fold {fold}: no {split} database at {db}")
                continue
            try:
                have = _split_ids(db, ids_by_db)
            except MemoError as exc:
                rep.problem("protocol_db_unreadable", f"fold {fold} {split}: {exc}")
                continue
            want = set(want)
            wrong = sorted(have - want)
            if wrong:
                rep.problem("protocol_misplaced", f"fold {fold}: {len(wrong)} text(s) in "
                            f"{split} that {a.name} does not put there", wrong[0])
            lost = sorted(want - have)
            if lost:
                rep.warn("protocol_lost", f"fold {fold}: {len(lost)} {split} utterance(s) of "
                         f"{a.name} have no text in the database (left out by the text "
                         "filters: no faces, empty text)", lost[0])


def check_shard_folder(folder) -> DbReport:
    """``memo db check`` of a shard folder's record: the listed databases are there and are
    shard I/N's (their own checks run separately)."""
    folder = Path(folder)
    rep = DbReport(str(folder), kind=SHARD_KIND)
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
            rep.problem("shard_mismatch", f"database {name!r} is shard {shard_label(got)}, the "
                        f"folder is shard {shard_label(body)}; rebuild the shard")
    rep.counts = {"index": body["index"], "count": body["count"],
                  "databases": len(body["databases"])}
    return rep
