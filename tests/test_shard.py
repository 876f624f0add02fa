"""``memo db build --shard I/N`` and ``memo db merge``: shards of a dataset built apart and
joined into the folder a single build makes, byte for byte; every mismatch refused."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner

from memo.cli import main
from memodb.checks.folders import check_shard_folder
from memodb.checks.run import check
from memodb.dataset.build import build_dataset
from memodb.dataset.merge import merge_shards
from memodb.dataset.shard import SHARD_FILE, Shard, parse_shard
from memodb.errors import BadInputError, DatabaseError, OutputExistsError
from memodb.store.reader import FeatureDB, close_all
from memodb.synth import make_captions, make_h5_corpus, make_lexicon, make_openface

FACE_DB = "face/feat_th0.5_max36_min1"


@pytest.fixture
def corpus(tmp_path):
    """h5 for 2 movies x 8 segments (min_bb 1 drops the faceless ones), 2 OpenFace clips (so
    one of 3 raw-crop shards is empty; mean / std computed), captions with splits."""
    c = tmp_path / "corpus"
    ids = make_h5_corpus(c / "h5", movies=2, segments=8, faces=6, seed=3)
    make_captions(ids, c / "captions.json", seed=3)
    make_lexicon(c / "lexicon.tsv")
    make_openface(c / "openface", clips=2, frames=5, size=24, seed=2)
    cfg = {"name": "tiny", "lexicon": "lexicon.tsv",
           "features": {"face": {"source": "h5", "conf_th": 0.5, "max_bb": 36, "min_bb": 1},
                        "raw": {"type": "rawimg", "source": "openface", "size": 16}},
           "text": {"source": "captions.json", "faces_from": "face", "max_len": 20,
                    "splits": ["val=3", "mon=2@train"], "seed": 1}}
    (c / "config.json").write_text(json.dumps(cfg))
    return c


def _files(folder: Path) -> dict:
    """Every file under ``folder``: {relative path: bytes}."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _shards(config, base: Path, n: int) -> list[Path]:
    dirs = [base / f"shard{i}" for i in range(n)]
    for i, d in enumerate(dirs):
        res = build_dataset(config, d, workers=1, shard=f"{i}/{n}")
        assert res.report.ok, res.report.to_json()
    return dirs


def _keys(db) -> list[str]:
    return FeatureDB(db).keys()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_shards_merge_into_the_single_build_byte_for_byte(corpus, tmp_path, n):
    single = tmp_path / "single"
    assert build_dataset(corpus / "config.json", single, workers=1).report.ok
    dirs = _shards(corpus / "config.json", tmp_path / "shards", n)
    for feature, db in (("face", FACE_DB), ("raw", "raw/feat_th0.5_max36_min0")):
        parts = [_keys(d / db) for d in dirs]
        assert [k for p in parts for k in p] == _keys(single / db)  # disjoint, covering, in order
        assert sum(map(len, parts)) == len(set().union(*parts))
    assert not (dirs[0] / "txt").exists() and not (dirs[0] / "dataset.json").exists()

    res = merge_shards(dirs, tmp_path / "merged", workers=2)
    assert res.report.ok, res.report.to_json()
    assert {s.name: s.status for s in res.steps} == {
        "face": "merged", "raw": "merged", "txt/train": "built", "txt/val": "built",
        "txt/mon": "built"}
    want, got = _files(single), _files(tmp_path / "merged")
    assert sorted(got) == sorted(want)
    assert [name for name in want if want[name] != got[name]] == []
    assert "lock.mdb" not in " ".join(want)  # LMDB's process-specific lock file is not written


def test_downstream_folds_and_given_mean_std_merge_identically(tmp_path):
    c = tmp_path / "c"
    ids = make_h5_corpus(c / "h5", movies=1, segments=12, faces=5, seed=5)
    make_openface(c / "openface", clips=3, frames=4, size=24, seed=4)
    for fold in (1, 2):
        rot = ids[fold * 4:] + ids[:fold * 4]
        (c / str(fold)).mkdir()
        for split, part in (("trn", rot[:8]), ("tst", rot[8:])):
            refs = {i: {"txt": [f"i am so happy {k}"], "label": k % 2} for k, i in enumerate(part)}
            (c / str(fold) / f"{split}.json").write_text(json.dumps(refs))
    cfg = {"name": "down",
           "features": {"face": {"source": "h5", "conf_th": 0.0},
                        "raw": {"type": "rawimg", "source": "openface", "size": 16,
                                "mean": 120.0, "std": 60.0}},
           "text": {"sources": {"train": "{fold}/trn.json", "test": "{fold}/tst.json"},
                    "folds": [1, 2], "labels": ["neg", "pos"], "faces_from": "face",
                    "min_faces": 0}}
    (c / "config.json").write_text(json.dumps(cfg))
    single = tmp_path / "single"
    assert build_dataset(c / "config.json", single, workers=1).report.ok
    dirs = _shards(c / "config.json", tmp_path / "shards", 2)
    assert merge_shards(dirs, tmp_path / "merged", workers=1).report.ok
    assert _files(tmp_path / "merged") == _files(single)


def test_shard_membership_is_contiguous_ranges_of_the_sorted_keys():
    keys = [f"k{i:02d}" for i in range(10)]
    parts = [Shard(i, 3).take(keys) for i in range(3)]
    assert parts == [keys[0:3], keys[3:6], keys[6:10]]
    assert [Shard(i, 4).take(["a", "b"]) for i in range(4)] == [[], ["a"], [], ["b"]]
    assert Shard(2, 3).record(10) == {"index": 2, "count": 3, "start": 6, "stop": 10,
                                      "corpus_segments": 10}
    assert parse_shard(" 2 / 8 ") == Shard(2, 8) and str(Shard(2, 8)) == "2/8"


@pytest.mark.parametrize("text, message", [
    ("3/3", "run from 0 to 2"), ("0/0", "at least 1"), ("1", "not INDEX/COUNT"),
    ("a/b", "not INDEX/COUNT"), ("-1/2", "not INDEX/COUNT")])
def test_bad_shard_option_is_refused(corpus, tmp_path, text, message):
    with pytest.raises(BadInputError) as err:
        parse_shard(text)
    assert message in str(err.value) and "--shard 0/4" in str(err.value)
    res = CliRunner().invoke(main, ["db", "build", str(corpus / "config.json"),
                                    str(tmp_path / "o"), "--shard", text])
    assert res.exit_code == 1 and message in res.output
    assert not (tmp_path / "o").exists()


def test_a_config_without_features_is_not_sharded(corpus, tmp_path):
    cfg = json.loads((corpus / "config.json").read_text())
    cfg["features"] = {}
    del cfg["text"]["faces_from"]
    (corpus / "text.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError, match="builds no feature database"):
        build_dataset(corpus / "text.json", tmp_path / "s", shard="0/2")
    assert not (tmp_path / "s").exists()


def test_shard_rerun_is_skipped_and_an_interrupted_shard_resumes(corpus, tmp_path, monkeypatch):
    d = tmp_path / "shard1"
    build_dataset(corpus / "config.json", d, workers=1, shard="1/2")
    before = _files(d)
    again = build_dataset(corpus / "config.json", d, workers=1, shard="1/2")
    assert {s.status for s in again.steps} == {"up to date"} and _files(d) == before

    # the same shard, interrupted after its first database (options changed: rebuilt)
    import memodb.dataset.build

    cfg = json.loads((corpus / "config.json").read_text())
    cfg["features"]["face"]["max_bb"] = 4
    (corpus / "config.json").write_text(json.dumps(cfg))

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    other = build_dataset(corpus / "config.json", tmp_path / "shard0", workers=1, shard="0/2")
    assert other.report.ok
    monkeypatch.setattr(memodb.dataset.build, "rawimg_db", killed)
    with pytest.raises(Killed):
        build_dataset(corpus / "config.json", d, workers=1, shard="1/2")
    assert not (d / SHARD_FILE).exists()  # unfinished: shard.json is written last
    with pytest.raises(BadInputError) as err:
        merge_shards([tmp_path / "shard0", d], tmp_path / "m")
    assert "unfinished shard" in str(err.value) and str(d) in str(err.value)
    assert "re-run its memo db build --shard" in str(err.value)

    monkeypatch.undo()
    res = build_dataset(corpus / "config.json", d, workers=1, shard="1/2")
    # the face database finished before the interruption and is kept
    assert {s.name: s.status for s in res.steps} == {"face": "up to date", "raw": "up to date"}
    assert merge_shards([tmp_path / "shard0", d], tmp_path / "m", workers=1).report.ok


def test_merge_resumes_and_is_up_to_date_over_an_identical_build(corpus, tmp_path):
    dirs = _shards(corpus / "config.json", tmp_path / "shards", 2)
    out = tmp_path / "ds"
    build_dataset(corpus / "config.json", out, workers=1)
    res = merge_shards(dirs, out, workers=1)
    assert {s.status for s in res.steps} == {"up to date"} and res.report.ok
    shutil.rmtree(out / FACE_DB)  # as if a merge was killed before publishing it
    res = merge_shards(dirs, out, workers=1)
    assert {s.name: s.status for s in res.steps}["face"] == "merged"
    assert {s.status for s in res.steps if s.name != "face"} == {"up to date"}


@pytest.fixture
def three(corpus, tmp_path):
    """The three shard folders of the corpus."""
    return _shards(corpus / "config.json", tmp_path / "shards", 3)


def _refused(shard_dirs, out, *parts, error=BadInputError):
    with pytest.raises(error) as err:
        merge_shards(shard_dirs, out, workers=1)
    for p in parts:
        assert str(p) in str(err.value), str(err.value)
    assert not list(Path(out).rglob("data.mdb")) and not (Path(out) / "dataset.json").exists()
    return str(err.value)


def test_missing_and_duplicate_shards_are_refused(three, tmp_path):
    out = tmp_path / "out"
    msg = _refused([three[0], three[2]], out, "shard(s) 1/3 missing", "2 of 3 given")
    assert "--shard 1/3" in msg
    copy = tmp_path / "copy1"
    shutil.copytree(three[1], copy)
    _refused([three[0], three[1], copy, three[2]], out, copy, "is shard 1/3, and so is",
             three[1], "list each shard once")
    _refused([three[0], three[0], three[1], three[2]], out, "and so is")


def test_shards_of_another_n_or_config_are_refused(corpus, three, tmp_path):
    out = tmp_path / "out"
    two = build_dataset(corpus / "config.json", tmp_path / "two1", workers=1, shard="1/2")
    _refused([three[0], two.out_dir, three[2]], out, two.out_dir, "is shard 1/2",
             "different numbers of shards", "--shard I/3")

    cfg = json.loads((corpus / "config.json").read_text())
    cfg["features"]["face"]["max_bb"] = 4
    (corpus / "other.json").write_text(json.dumps(cfg))
    odd = build_dataset(corpus / "other.json", tmp_path / "odd1", workers=1, shard="1/3")
    _refused([three[0], odd.out_dir, three[2]], out, odd.out_dir, "another config",
             "features.face.max_bb", "--shard 1/3")


def test_shard_built_from_other_source_files_is_refused(corpus, tmp_path):
    s0 = build_dataset(corpus / "config.json", tmp_path / "s0", workers=1, shard="0/2").out_dir
    h5 = sorted((corpus / "h5").rglob("*.h5"))[0]
    st = os.stat(h5)
    os.utime(h5, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a copy without mtimes kept
    s1 = build_dataset(corpus / "config.json", tmp_path / "s1", workers=1, shard="1/2").out_dir
    msg = _refused([s0, s1], tmp_path / "out", "other source files", "rsync -a")
    assert str(s1 / FACE_DB) in msg


def test_unfinished_foreign_and_damaged_shards_are_refused(three, tmp_path):
    out = tmp_path / "out"
    (three[1] / SHARD_FILE).unlink()
    _refused(three, out, three[1], "unfinished shard")
    (tmp_path / "empty").mkdir()
    _refused([tmp_path / "empty"], out, "not a shard folder")
    (three[1] / SHARD_FILE).write_text("{}")
    _refused(three, out, three[1] / SHARD_FILE, "not a shard record")


def test_damaged_shard_copy_is_refused_and_nothing_is_published(three, tmp_path):
    db = three[1] / FACE_DB
    close_all()  # the check's read-only handle
    with lmdb.open(str(db), lock=False) as env, env.begin(write=True) as txn:
        key = next(k for k in txn.cursor().iternext(values=False) if k != b"__keys__")
        value = bytearray(txn.get(key))
        value[-1] ^= 1
        txn.put(key, bytes(value))
    msg = _refused(three, tmp_path / "out", db, "differs from its manifest", "--shard 1/3",
                   error=DatabaseError)
    assert "checksum" in msg
    assert not list((tmp_path / "out").rglob(".*.partial"))


def test_shard_of_another_memo_version_is_refused(three, tmp_path):
    body = json.loads((three[2] / SHARD_FILE).read_text())
    body["memo_version"] = "0.0.1"
    (three[2] / SHARD_FILE).write_text(json.dumps(body))
    _refused(three, tmp_path / "out", three[2], "built by memo 0.0.1")


def test_folders_of_the_other_kind_are_refused(corpus, three, tmp_path):
    cfg = corpus / "config.json"
    with pytest.raises(OutputExistsError, match="is a shard folder"):
        build_dataset(cfg, three[0], workers=1)
    with pytest.raises(OutputExistsError, match="holds shard 0/3, not 1/3"):
        build_dataset(cfg, three[0], workers=1, shard="1/3")
    with pytest.raises(BadInputError, match="OUT is one of the shard folders"):
        merge_shards(three, three[2])
    ds = tmp_path / "ds"
    build_dataset(cfg, ds, workers=1)
    with pytest.raises(OutputExistsError, match="holds a dataset"):
        build_dataset(cfg, ds, workers=1, shard="0/3")
    _refused([ds], tmp_path / "out", "a dataset folder", "not a shard")


def test_a_shard_folder_checks_clean_and_says_it_is_a_shard(three, tmp_path):
    report = check([three[1]], workers=1)
    assert report.ok, report.to_json()
    shard = [d for d in report.databases if d.kind == "shard"]
    assert len(shard) == 1 and shard[0].summary().startswith("shard 1/3, 2 databases")
    assert json.loads((three[1] / "check.json").read_text())["ok"] is True
    res = CliRunner().invoke(main, ["db", "check", str(three[1])])
    assert res.exit_code == 0 and "(shard, shard 1/3" in res.output and "memo db merge" in res.output

    shutil.rmtree(three[1] / FACE_DB)  # a database the record lists is gone
    rep = check_shard_folder(three[1])
    assert [p.code for p in rep.problems] == ["shard_db_missing"] and "face" in rep.problems[0].message
    shutil.copytree(three[2] / FACE_DB, three[1] / FACE_DB)  # shard 2's database in shard 1
    rep = check_shard_folder(three[1])
    assert [p.code for p in rep.problems] == ["shard_mismatch"]
    assert "is shard 2/3, the folder is shard 1/3" in rep.problems[0].message


def test_cli_build_shards_and_merge(corpus, tmp_path):
    run = CliRunner().invoke
    dirs = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        res = run(main, ["db", "build", str(corpus / "config.json"), str(d), "--shard",
                         f"{i}/2", "--workers", "1"])
        assert res.exit_code == 0, res.output
        assert f"shard {i}/2" in res.output and "check: clean" in res.output
        assert "txt/train" not in res.output
        dirs.append(str(d))
    res = run(main, ["db", "merge", *dirs, str(tmp_path / "ds"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "merged" in res.output and "txt/train" in res.output and "check: clean" in res.output
    res = run(main, ["db", "merge", dirs[0], str(tmp_path / "ds2")])
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and "shard(s) 1/2 missing" in res.output
    assert not (tmp_path / "ds2").exists()
