"""Publishing a database (memodb/store/writer.py): the paths a kill at each step cannot show.

tests/test_faults.py kills a replacement at each step of its publishing (with the atomic
exchange and without it). Here, in-process and deterministic: which of the two replacement
paths runs (the exchange, the two-rename fallback when it is unavailable or refused, a real
error of the exchange), the nbb json as a regular copy where symbolic links cannot be made (and
its repair by the next build), the nbb json of an older build (a regular file, no copy inside
the database), leftovers removed by an up-to-date build but not from under a running one,
``memo db check`` on leftovers, the lock against a lock file removed meanwhile, and a dataset
folder's ``check.json`` removed before its first database changes.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest

import memodb.store.writer as writer
from memodb.checks.run import check
from memodb.dataset.build import build_dataset
from memodb.errors import BadInputError
from memodb.feature.imgdb import create_imgdb
from memodb.synth import make_captions, make_h5_corpus, make_lexicon

DB = "feat_th0.5_max36_min0"
NBB = "nbb_th0.5_max36_min0.json"


@pytest.fixture
def sources(tmp_path):
    """Two h5 sources with the same segments and other values (``old``, ``new``) and the
    reference build of ``new`` in ``ref``."""
    make_h5_corpus(tmp_path / "old", movies=1, segments=6, faces=5, seed=1)
    make_h5_corpus(tmp_path / "new", movies=1, segments=6, faces=5, seed=2)
    create_imgdb(tmp_path / "new", tmp_path / "ref", workers=1)
    return tmp_path


def same_as_ref(out: Path, ref: Path) -> None:
    for name in (f"{DB}/data.mdb", f"{DB}/manifest.json", f"{DB}/{NBB}", NBB):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def problems(path) -> list:
    return [str(p) for d in check([path], workers=1).databases for p in d.problems]


def spy_renames(monkeypatch) -> list:
    calls = []
    real = os.rename

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        real(src, dst)
    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_new_database_and_its_nbb_json_link(sources):
    out = sources / "out"
    r = create_imgdb(sources / "new", out, workers=1)
    assert os.readlink(out / NBB) == f"{DB}/{NBB}"  # relative: the folder can move
    assert r.nbb_path.read_bytes() == (out / DB / NBB).read_bytes()
    assert not list(out.glob(".*")) and not problems(out)


def test_replacement_by_atomic_exchange(sources, monkeypatch):
    out = sources / "out"
    create_imgdb(sources / "old", out, workers=1)
    renames = spy_renames(monkeypatch)
    create_imgdb(sources / "new", out, workers=1, replace=True)
    assert renames == []  # one exchange, no rename: the final name was never missing
    same_as_ref(out, sources / "ref")
    assert not list(out.glob(".*")) and not problems(out)


@pytest.mark.parametrize("why", ["no renameat2", "EINVAL", "ENOSYS"])
def test_replacement_without_the_exchange_renames_twice(sources, monkeypatch, why):
    out = sources / "out"
    create_imgdb(sources / "old", out, workers=1)
    if why == "no renameat2":  # another OS, or a libc without it
        monkeypatch.setattr(writer, "_renameat2", lambda: None)
    else:  # a file system or kernel that refuses it
        def refuse(*args):
            ctypes.set_errno(getattr(errno, why))
            return -1
        monkeypatch.setattr(writer, "_renameat2", lambda: refuse)
    renames = spy_renames(monkeypatch)
    create_imgdb(sources / "new", out, workers=1, replace=True)
    assert renames == [(DB, f".{DB}.replaced"), (f".{DB}.partial", DB)]
    same_as_ref(out, sources / "ref")
    assert not list(out.glob(".*")) and not problems(out)


def test_an_error_of_the_exchange_publishes_nothing(sources, monkeypatch):
    out = sources / "out"
    create_imgdb(sources / "old", out, workers=1)
    before = {n: (out / n).read_bytes() for n in (f"{DB}/data.mdb", NBB)}

    def fail(*args):
        ctypes.set_errno(errno.EACCES)
        return -1
    monkeypatch.setattr(writer, "_renameat2", lambda: fail)
    with pytest.raises(PermissionError) as ei:
        create_imgdb(sources / "new", out, workers=1, replace=True)
    assert DB in str(ei.value)
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not list(out.glob(".*")) and not problems(out)


def test_without_symbolic_links_the_nbb_json_is_a_copy_that_the_next_build_repairs(
        sources, monkeypatch):
    out = sources / "out"

    def no_links(*args, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "symlink", no_links)
    create_imgdb(sources / "old", out, workers=1)
    old_nbb = (out / NBB).read_bytes()
    assert not (out / NBB).is_symlink() and old_nbb == (out / DB / NBB).read_bytes()
    create_imgdb(sources / "new", out, workers=1, replace=True)
    assert not (out / NBB).is_symlink()
    same_as_ref(out, sources / "ref")
    # a build killed between publishing the database and copying its nbb json left this:
    (out / NBB).write_bytes(old_nbb)
    assert any("[nbb_mismatch]" in p for p in problems(out))
    r = create_imgdb(sources / "new", out, workers=1, replace=True)
    assert r.skipped
    same_as_ref(out, sources / "ref")
    assert not list(out.glob(".*")) and not problems(out)


def test_up_to_date_build_repairs_a_wrong_nbb_json_through_the_link(sources):
    out = sources / "out"
    create_imgdb(sources / "new", out, workers=1)
    (out / NBB).unlink()
    (out / NBB).write_text("{}")  # a regular file with other content
    assert problems(out)
    assert create_imgdb(sources / "new", out, workers=1).skipped
    assert os.readlink(out / NBB) == f"{DB}/{NBB}" and not problems(out)


def older_layout(out: Path) -> bytes:
    """Turn a database into what an older memo wrote: the nbb json a regular file beside it,
    no copy inside."""
    data = (out / NBB).read_bytes()
    (out / NBB).unlink()
    (out / NBB).write_bytes(data)
    (out / DB / NBB).unlink()
    return data


def test_replacing_an_older_build_keeps_its_nbb_json_until_the_exchange(sources, monkeypatch):
    out = sources / "out"
    create_imgdb(sources / "old", out, workers=1)
    old_nbb = older_layout(out)

    def killed(self):
        raise KeyboardInterrupt  # stopped just before the new directory goes in
    monkeypatch.setattr(writer.StagedDatabase, "_move_in", killed)
    with pytest.raises(KeyboardInterrupt):
        create_imgdb(sources / "new", out, workers=1, replace=True)
    # the link is in place already and reads the old database's own (copied-in) nbb json
    assert os.readlink(out / NBB) == f"{DB}/{NBB}" and (out / NBB).read_bytes() == old_nbb
    assert not problems(out)
    monkeypatch.undo()
    create_imgdb(sources / "new", out, workers=1, replace=True)
    same_as_ref(out, sources / "ref")
    assert not list(out.glob(".*")) and not problems(out)


def leftovers(out: Path) -> list:
    (out / f".{DB}.partial").mkdir()
    (out / f".{DB}.partial" / "data.mdb").write_bytes(b"half")
    (out / f".{DB}.replaced").mkdir()
    (out / f".{NBB}.link").symlink_to("nowhere")
    (out / f".{DB}.lock").touch()
    return sorted(p.name for p in out.glob(".*"))


def test_up_to_date_build_removes_what_a_killed_build_left(sources):
    out = sources / "out"
    create_imgdb(sources / "new", out, workers=1)
    leftovers(out)
    warned = {w.code for d in check([out], workers=1).databases for w in d.warnings}
    assert {"unfinished_build", "replaced_left"} <= warned
    assert check([out], workers=1).exit_code == 0  # warnings: the database itself is fine
    assert create_imgdb(sources / "new", out, workers=1).skipped
    assert not list(out.glob(".*"))
    same_as_ref(out, sources / "ref")


def test_up_to_date_build_leaves_a_running_build_alone(sources):
    out = sources / "out"
    create_imgdb(sources / "new", out, workers=1)
    left = leftovers(out)
    with open(out / f".{DB}.lock", "a") as held:  # another build of this name is running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert create_imgdb(sources / "new", out, workers=1).skipped
        assert sorted(p.name for p in out.glob(".*")) == left


def test_check_names_the_fix_for_leftover_folders(tmp_path):
    (tmp_path / f".{DB}.replaced").mkdir()
    (tmp_path / f".{DB}.partial").mkdir()
    report = check([tmp_path], workers=1)
    left = {Path(d.path).name: d.warnings[0] for d in report.databases if d.kind == "partial"}
    assert set(left) == {f".{DB}.replaced", f".{DB}.partial"}
    assert left[f".{DB}.replaced"].code == "replaced_left"
    assert all("re-run the build" in w.message and "delete it" in w.message
               for w in left.values())


def test_lock_taken_on_a_removed_lock_file_is_not_held(tmp_path, monkeypatch):
    """A build that opened the lock file just before its holder removed it, while a third
    build locked the new file: flock on the removed one succeeds, yet it is not the lock."""
    path = tmp_path / ".x.lock"
    path.touch()
    other = []
    real_flock = fcntl.flock

    def flock(f, op):
        if not other:  # the holder removed the file, a third build made and locked a new one
            path.unlink()
            other.append(open(path, "a"))
            real_flock(other[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        real_flock(f, op)
    monkeypatch.setattr(writer.fcntl, "flock", flock)
    assert writer._lock(path) is None
    other[0].close()
    monkeypatch.undo()
    got = writer._lock(path)
    assert got is not None
    writer._unlock(got, path)
    assert not path.exists()


@pytest.fixture
def dataset_corpus(tmp_path):
    c = tmp_path / "corpus"
    ids = make_h5_corpus(c / "h5", movies=1, segments=12, faces=5, seed=3)
    make_captions(ids, c / "captions.json", seed=3)
    make_lexicon(c / "lexicon.tsv")
    cfg = {"name": "tiny", "lexicon": "lexicon.tsv",
           "features": {"face": {"source": "h5", "conf_th": 0.5, "max_bb": 36}},
           "text": {"source": "captions.json", "faces_from": "face", "max_len": 20,
                    "splits": ["val=3"], "seed": 1}}
    (c / "config.json").write_text(json.dumps(cfg))
    return c


def test_check_json_goes_before_the_first_database_changes(dataset_corpus, tmp_path,
                                                           monkeypatch):
    c, out = dataset_corpus, tmp_path / "ds"
    build_dataset(c / "config.json", out, workers=1)
    report = out / "check.json"
    assert json.loads(report.read_text())["ok"]
    caps = json.loads((c / "captions.json").read_text())
    (c / "captions.json").write_text(json.dumps({k: [v[0] + " again"] for k, v in caps.items()}))
    real_finish = writer.StagedDatabase.finish

    def finish_then_die(self, *args, **kw):
        real_finish(self, *args, **kw)
        raise KeyboardInterrupt  # killed just after the first text database changed
    monkeypatch.setattr(writer.StagedDatabase, "finish", finish_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(c / "config.json", out, workers=1)
    assert not report.exists()
    monkeypatch.undo()
    res = build_dataset(c / "config.json", out, workers=1)
    assert res.report.ok and json.loads(report.read_text())["ok"]
    stat = report.stat()
    shutil.rmtree(c / "h5")  # the source of the face database is gone: fails before publishing
    with pytest.raises(BadInputError):
        build_dataset(c / "config.json", out, workers=1)
    assert report.stat().st_mtime_ns == stat.st_mtime_ns  # the report was left alone
