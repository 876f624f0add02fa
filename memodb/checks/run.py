"""``memo db check``: :func:`check` finds what is at the given paths and runs the check of
each database and folder found; its :class:`~memodb.checks.report.CheckReport` decides the
exit code. Each database is read in a child process (:func:`check_db_isolated`): a damaged
LMDB page can make liblmdb abort the process walking it, and the checker must survive the data
it checks."""
from __future__ import annotations

import os
from functools import partial

from ..parallel import WorkerDied, run_isolated
from ..store.textdb import is_text_db
from .feature import check_feature_db
from .folders import check_dataset, check_shard_folder, check_split_group, walk
from .report import CheckReport, DbReport
from .text import check_text_db, prefetch_link, read_linked


def db_kind(path) -> str:
    """"text" for a text database (manifest kind, or its side files), else "feature"."""
    return "text" if is_text_db(path) else "feature"


def check(paths, *, workers: int | None = None, progress: bool = False) -> CheckReport:
    """Check every database found at ``paths`` (database directories or folders holding them
    at any depth), every split group (folder with splits.json) and dataset folder
    (dataset.json) found there."""
    report = CheckReport()
    links: dict = {}  # linked feature databases, read once per run
    for path in paths:
        found = walk(path)
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
            rep, ids = check_db_isolated(db, workers=workers, progress=progress, links=links)
            if rep.kind == "text" or ids is not None:
                ids_by_db[os.path.realpath(db)] = ids  # None: unreadable
            report.databases.append(rep)
        for folder in found.split_groups:
            report.databases.append(check_split_group(folder, ids_by_db))
        for folder in found.datasets:
            report.databases.append(check_dataset(folder, ids_by_db))
        for folder in found.shards:
            report.databases.append(check_shard_folder(folder))
    return report


def check_db_isolated(db, *, workers=None, progress=False, links=None):
    """(report, stored text ids or None) of one database, checked in a child process: its
    death (e.g. liblmdb's assertions on a damaged page abort the process) or an error no rule
    caught becomes an ``unreadable`` problem naming the database; feature databases give None
    for the ids. The feature database a text database links is read first, in a child of its
    own (:func:`~memodb.checks.text.prefetch_link`), and inherited by the text check, unless
    the check of that feature database, earlier in the run, already read it."""
    kind = db_kind(db)
    try:
        if kind == "text":
            prefetch_link(db, links)
            return run_isolated(partial(check_text_db, db, workers=workers, progress=progress,
                                        links=links))
        rep, link = run_isolated(partial(_check_feature, db, workers, progress,
                                         links is not None))
        if link is not None:
            links[os.path.realpath(db)] = link
        return rep, None
    except WorkerDied as exc:
        rep = DbReport(str(db), kind=kind)
        rep.problem("unreadable", f"reading {db} stopped the check ({exc}): the database is "
                    "damaged (a damaged LMDB page?); re-copy or rebuild it")
        return rep, None


def _check_feature(db, workers, progress, link: bool):
    """(report, what a text database linking it needs or None) of a feature database: the
    check lists its keys anyway, so a later text check need not list them again. A link this
    cannot read is left to :func:`~memodb.checks.text.prefetch_link` (which reports it)."""
    rep, stored = check_feature_db(db, workers=workers, progress=progress)
    if not link or stored is None:
        return rep, None
    try:
        return rep, read_linked(db, {k.decode("utf-8", "replace") for k in stored})
    except Exception:  # noqa: BLE001 - read again, and reported, by prefetch_link
        return rep, None
