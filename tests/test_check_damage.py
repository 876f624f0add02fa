"""``memo db check`` survives the data it checks (issue 16, item 1): one damaged LMDB page of a
text or feature database (zeroed or scrambled, at several page offsets) is reported, whether the
database is checked alone, in its split group or in its dataset folder, through the CLI with
``--json``: a report and exit code 1, never a traceback nor a process killed by liblmdb's
assertions. A dead worker or child process is an error, never a wait forever.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from memo.cli import main
from memodb.dataset.build import build_dataset
from memodb.parallel import WorkerDied, ordered_map, run_isolated
from memodb.store.reader import close_all
from memodb.synth import make_captions, make_h5_corpus

PAGE = 4096
FACE = "face/feat_th0.5_max36_min0"
TRAIN = "txt/train"
CONFIG = {"name": "damage",
          "features": {"face": {"source": "h5", "conf_th": 0.5, "max_bb": 36}},
          "text": {"source": "captions.json", "faces_from": "face", "max_len": 20,
                   "splits": ["val=8"], "seed": 1}}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A dataset folder (memo db build): face feature db, txt/{train,val} + splits.json."""
    root = tmp_path_factory.mktemp("damage")
    ids = make_h5_corpus(root / "h5", movies=2, segments=40, faces=12, seed=1)
    make_captions(ids, root / "captions.json", seed=3)
    (root / "config.json").write_text(json.dumps(CONFIG))
    res = build_dataset(root / "config.json", root / "ds", workers=1)
    assert res.report.ok
    close_all()
    return root


def damage(db: Path, page: int, how: str) -> None:
    """Overwrite one whole page of ``db``'s data.mdb: zeros, or seeded random bytes."""
    data = bytes(PAGE) if how == "zero" else random.Random(page).randbytes(PAGE)
    with open(db / "data.mdb", "r+b") as f:
        f.seek(page * PAGE)
        f.write(data)


def pages(db: Path) -> int:
    return os.path.getsize(db / "data.mdb") // PAGE


def run_check(*paths, workers=2):
    res = CliRunner().invoke(main, ["db", "check", "--json", "--workers", str(workers),
                                    *map(str, paths)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, json.loads(res.stdout)


def problems(body: dict, path: Path | None = None) -> list:
    return [(d["path"], p["code"], p["message"]) for d in body["databases"]
            if path is None or d["path"] == str(path) for p in d["problems"]]


# pages past LMDB's two meta pages: the first leaf / branch pages, the middle, the last
@pytest.mark.parametrize("which", [TRAIN, FACE])
@pytest.mark.parametrize("where", ["first", "second", "middle", "last"])
@pytest.mark.parametrize("how", ["zero", "random"])
def test_a_damaged_page_is_reported_never_a_crash(template, tmp_path, which, where, how):
    ds = tmp_path / "ds"
    shutil.copytree(template / "ds", ds)
    db = ds / which
    n = pages(db)
    page = {"first": 2, "second": 3, "middle": n // 2, "last": n - 1}[where]
    damage(db, page, how)
    for target in (db, ds / "txt", ds):  # alone, in its split group, in the dataset folder
        code, body = run_check(target)
        if which == FACE and target == ds / "txt":
            # the text checks read only the linked feature db's keys: a damaged value page
            # there is found by the feature db's own check; whatever they find, a report
            assert code == (0 if body["ok"] else 1)
            assert {c for _, c, _ in problems(body)} <= {"img_db_unreadable"}
            continue
        assert code == 1, (target, body)
        assert body["ok"] is False
        found = problems(body)
        assert found, body
        if target == db or target == ds:
            # the database itself is reported, named by its path
            assert problems(body, db), (target, found)
        if which == TRAIN and target == ds / "txt":
            assert any(c == "split_db_unreadable" or p == str(db) for p, c, _ in found)


def test_an_aborting_database_is_unreadable_with_its_path(template, tmp_path):
    """Zeroed page 3 of this text database makes liblmdb abort (``IS_LEAF(mp)`` assertion in
    mdb_cursor_next): the child checking it dies; the report names the database and the
    signal, and the rest of the folder is still checked."""
    ds = tmp_path / "ds"
    shutil.copytree(template / "ds", ds)
    aborted = []
    for page in range(2, pages(ds / TRAIN)):
        shutil.copyfile(template / "ds" / TRAIN / "data.mdb", ds / TRAIN / "data.mdb")
        damage(ds / TRAIN, page, "zero")
        code, body = run_check(ds)
        assert code == 1
        got = problems(body, ds / TRAIN)
        assert got and all(c == "unreadable" for _, c, _ in got)
        if any("SIGABRT" in m for _, _, m in got):
            assert all(str(ds / TRAIN) in m for _, _, m in got)
            aborted.append(page)
        checked = {d["path"] for d in body["databases"]}
        assert {str(ds / FACE), str(ds / "txt/val"), str(ds / "txt"), str(ds)} <= checked
        assert not problems(body, ds / FACE) and not problems(body, ds / "txt/val")
    assert aborted, "no zeroed page made liblmdb abort: the test no longer covers it"


def test_a_damaged_linked_feature_db_is_reported_by_the_text_checks(template, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(template / "ds", ds)
    damage(ds / FACE, 2, "random")
    code, body = run_check(ds / "txt")
    assert code == 1
    assert {c for _, c, _ in problems(body)} == {"img_db_unreadable"}
    code, body = run_check(ds)
    assert code == 1
    assert problems(body, ds / FACE)
    assert {c for _, c, _ in problems(body, ds / TRAIN)} == {"img_db_unreadable"}


def test_build_reports_a_damaged_database_and_rewrites_check_json(template, tmp_path):
    """The databases are up to date (nothing to rebuild), but the check at the end of the build
    reports the damage, and check.json says so (not the old clean report)."""
    root = tmp_path / "root"
    shutil.copytree(template, root)
    args = ["db", "build", str(root / "config.json"), str(root / "ds"), "--workers", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0  # moved: text databases rebuilt
    assert json.loads((root / "ds/check.json").read_text())["ok"] is True
    damage(root / "ds" / TRAIN, 3, "zero")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert "built" not in res.output and "up to date" in res.output
    assert f"error {root / 'ds' / TRAIN}" in res.output
    report = json.loads((root / "ds/check.json").read_text())
    assert report["ok"] is False
    bad = {d["path"]: [p["code"] for p in d["problems"]] for d in report["databases"]
           if d["problems"]}
    assert "unreadable" in bad[TRAIN]


def _abort_on(x):
    if x == 5:
        os.abort()
    return x * 2


def _raise_on(x):
    if x == 1:
        raise ValueError("bad value")
    return x


def test_a_dead_worker_is_an_error_not_a_wait_forever():
    with pytest.raises(WorkerDied, match="worker process died"):
        list(ordered_map(_abort_on, range(20), workers=2))
    assert list(ordered_map(_abort_on, range(5), workers=2)) == [0, 2, 4, 6, 8]


def test_run_isolated_returns_the_result_or_names_the_death():
    assert run_isolated(_abort_on, 3) == 6
    with pytest.raises(WorkerDied, match="killed by SIGABRT"):
        run_isolated(_abort_on, 5)
    with pytest.raises(WorkerDied, match="ValueError: bad value"):
        run_isolated(_raise_on, 1)


def _abort(*args, **kwargs):
    os.abort()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_check_worker_killed_makes_its_database_unreadable(template, monkeypatch, workers):
    """Whatever kills the process reading values (a pool worker, or with one worker the
    database's own child) is an ``unreadable`` problem of that database; the others are
    checked as usual."""
    import memodb.checks.feature as feature
    from memodb.checks.run import check

    monkeypatch.setattr(feature, "_inspect_chunk", _abort)
    ds = template / "ds"
    report = check([ds], workers=workers)
    got = {d.path: [p.code for p in d.problems] for d in report.databases}
    assert got[str(ds / FACE)] == ["unreadable"]
    assert not got[str(ds / TRAIN)] and not got[str(ds / "txt/val")]
    (p,) = next(d for d in report.databases if d.path == str(ds / FACE)).problems
    assert ("worker process died" if workers > 1 else "killed by SIGABRT") in p.message
