"""``memo db build``: a dataset config -> a checked dataset folder; re-runs and resumes."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from memo.cli import main
from memodb.dataset.build import build_dataset
from memodb.dataset.config import load_config
from memodb.errors import BadInputError
from memodb.synth import make_captions, make_h5_corpus, make_lexicon


@pytest.fixture
def corpus(tmp_path):
    """A pretraining corpus: h5 for 2 movies x 15 segments, captions, lexicon, config."""
    c = tmp_path / "corpus"
    ids = make_h5_corpus(c / "h5", movies=2, segments=15, faces=10, seed=3)
    make_captions(ids, c / "captions.json", seed=3)
    make_lexicon(c / "lexicon.tsv")
    cfg = {"name": "tiny", "lexicon": "lexicon.tsv",
           "features": {"face": {"source": "h5", "conf_th": 0.5, "max_bb": 36}},
           "text": {"source": "captions.json", "faces_from": "face", "max_len": 20,
                    "splits": ["val=4", "mon=3@train"], "seed": 1}}
    (c / "config.json").write_text(json.dumps(cfg))
    return c


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def test_build_writes_a_checked_dataset_folder(corpus, tmp_path):
    out = tmp_path / "ds"
    res = build_dataset(corpus / "config.json", out, workers=1)
    assert res.report.ok, res.report.to_json()
    names = [s.name for s in res.steps]
    assert names == ["face", "txt/train", "txt/val", "txt/mon"]
    assert all(s.status == "built" for s in res.steps)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["databases"]["face"]["path"] == "face/feat_th0.5_max36_min0"
    assert meta["databases"]["txt/val"]["path"] == "txt/val"
    assert json.loads((out / "check.json").read_text())["ok"] is True
    splits = json.loads((out / "txt" / "splits.json").read_text())["splits"]
    assert splits["val"]["texts"] == 4 and splits["mon"]["role"] == "monitor"

    again = build_dataset(corpus / "config.json", out, workers=2)
    assert all(s.status == "up to date" for s in again.steps)


def test_changed_input_rebuilds_only_what_depends_on_it(corpus, tmp_path):
    out = tmp_path / "ds"
    build_dataset(corpus / "config.json", out, workers=1)
    face_before = (out / "face" / "feat_th0.5_max36_min0" / "data.mdb").read_bytes()
    caps = json.loads((corpus / "captions.json").read_text())
    first = sorted(caps)[0]
    caps[first] = ["she laughed and cried"]
    (corpus / "captions.json").write_text(json.dumps(caps))
    res = build_dataset(corpus / "config.json", out, workers=1)
    status = {s.name: s.status for s in res.steps}
    assert status == {"face": "up to date", "txt/train": "built", "txt/val": "built",
                      "txt/mon": "built"}
    assert (out / "face" / "feat_th0.5_max36_min0" / "data.mdb").read_bytes() == face_before
    assert res.report.ok


def test_rebuilt_feature_db_rebuilds_the_texts(corpus, tmp_path):
    out = tmp_path / "ds"
    build_dataset(corpus / "config.json", out, workers=1)
    shutil.rmtree(corpus / "h5")  # new features (new files: the old ones may still be open)
    make_h5_corpus(corpus / "h5", movies=2, segments=15, faces=10, seed=4)
    res = build_dataset(corpus / "config.json", out, workers=1)
    assert {s.status for s in res.steps} == {"built"}, res.steps
    assert res.report.ok, res.report.to_json()


def test_downstream_folds_with_placeholders(tmp_path):
    c = tmp_path / "iemocap"
    ids = make_h5_corpus(c / "h5", movies=1, segments=24, faces=6, seed=5)
    for fold in (1, 2):
        rot = ids[fold * 8:] + ids[:fold * 8]
        for split, part in (("trn", rot[:16]), ("val", rot[16:20]), ("tst", rot[20:])):
            refs = {i: {"txt": [f"i am so happy {n}"], "label": n % 4}
                    for n, i in enumerate(part)}
            (c / "refs" / str(fold)).mkdir(parents=True, exist_ok=True)
            (c / "refs" / str(fold) / f"{split}.json").write_text(json.dumps(refs))
    cfg = {"name": "iemocap", "features": {"face": {"source": "h5", "conf_th": 0.0}},
           "text": {"sources": {"train": "refs/{fold}/trn.json", "val": "refs/{fold}/val.json",
                                "test": "refs/{fold}/tst.json"},
                    "folds": [1, 2], "labels": ["anger", "happy", "neutral", "sad"],
                    "faces_from": "face", "min_faces": 0}}
    (c / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "ds"
    res = build_dataset(c / "config.json", out, workers=1)
    assert res.report.ok, res.report.to_json()
    for fold in (1, 2):
        group = json.loads((out / "txt" / f"fold{fold}" / "splits.json").read_text())
        assert {k: v["role"] for k, v in group["splits"].items()} == {
            "train": "train", "val": "heldout", "test": "heldout"}
        m = json.loads((out / "txt" / f"fold{fold}" / "test" / "manifest.json").read_text())
        assert m["labels"]["names"] == ["anger", "happy", "neutral", "sad"]
        assert sum(m["labels"]["counts"].values()) == m["counts"]["texts"]


def test_test_equal_to_validation_fails_the_check(tmp_path):
    c = tmp_path / "c"
    ids = make_h5_corpus(c / "h5", movies=1, segments=10, faces=4, seed=6)
    refs = {i: {"txt": ["hello there"], "label": 0} for i in ids}
    (c / "all.json").write_text(json.dumps(refs))
    (c / "held.json").write_text(json.dumps({i: refs[i] for i in ids[:3]}))
    cfg = {"features": {"face": {"source": "h5"}},
           "text": {"sources": {"train": "all.json", "val": "held.json", "test": "held.json"},
                    "faces_from": "face", "min_faces": 0}}
    (c / "config.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["db", "build", str(c / "config.json"), str(tmp_path / "o"),
                                    "--workers", "1"])
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "o" / "check.json").read_text())
    codes = {p["code"] for d in report["databases"] for p in d["problems"]}
    assert "splits_overlap" in codes


def test_cli_build_prints_a_summary_table(corpus, tmp_path):
    res = CliRunner().invoke(main, ["db", "build", str(corpus / "config.json"),
                                    str(tmp_path / "o"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    for name in ("face", "txt/train", "txt/val", "txt/mon"):
        assert name in res.output
    assert "check: clean" in res.output
    res = CliRunner().invoke(main, ["db", "build", str(corpus / "config.json"),
                                    str(tmp_path / "o"), "--workers", "1"])
    assert res.exit_code == 0 and "up to date" in res.output
    assert not re.search(r"\bbuilt\b", res.output)


@pytest.mark.parametrize("cfg, message", [
    ({"features": {"face": {"source": "h5", "conf": 0.5}}}, "unknown key(s) ['conf']"),
    ({"features": {"face": {"conf_th": 0.5}}}, "has no source"),
    ({"features": {"face": {"source": "h5", "type": "video"}}}, "'video'"),
    ({"featurez": {}}, "unknown key(s) ['featurez']"),
    ({}, "builds nothing"),
    ({"features": {"face": {"source": "h5"}},
      "text": {"source": "c.json", "faces_from": "speech"}}, "not a feature database"),
    ({"text": {"source": "c.json", "sources": {"train": "t.json"}}}, "either source"),
    ({"text": {"sources": {"train": "{fold}.json"}}}, "go together"),
    ({"text": {"sources": {"val": "v.json"}}}, "no train file"),
])
def test_bad_config_is_refused_with_the_key_named(tmp_path, cfg, message):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as err:
        load_config(tmp_path / "config.json")
    assert message in str(err.value) and "config.json" in str(err.value)


def test_invalid_json_config(tmp_path):
    (tmp_path / "config.json").write_text('{"features": {')
    res = CliRunner().invoke(main, ["db", "build", str(tmp_path / "config.json"),
                                    str(tmp_path / "o")])
    assert res.exit_code == 1 and "not valid JSON" in res.output and "line 1" in res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_killed_build_resumes_to_the_same_bytes(corpus, tmp_path):
    """SIGKILL `memo db build` while it writes, run it again: same files as a clean build."""
    caps = json.loads((corpus / "captions.json").read_text())
    caps = {k: [" ".join([v[0]] * 40)] for k, v in caps.items()}  # longer texts: slower
    (corpus / "captions.json").write_text(json.dumps(caps))
    clean = tmp_path / "clean"
    build_dataset(corpus / "config.json", clean, workers=1)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "memo.cli", "db", "build",
                             str(corpus / "config.json"), str(out), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (out / "face").exists() and any((out / "face").iterdir()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = build_dataset(corpus / "config.json", out, workers=1)
    assert res.report.ok
    assert not list(out.rglob(".*.partial"))
    want, got = _files(clean), _files(out)
    assert sorted(want) == sorted(got)
    for name in want:
        if name.endswith(("data.mdb", ".json")) and "manifest" not in name and \
                name not in ("dataset.json", "check.json"):
            assert want[name] == got[name], name


@pytest.mark.parametrize("cfg, message", [
    ({"features": {"face": {"source": "h5", "conf_th": "0.5"}}},
     "config key features.face.conf_th: expected float or null, got '0.5'"),
    ({"features": {"face": {"source": "h5", "max_bb": 36.7}}},
     "config key features.face.max_bb: expected int or null, got 36.7"),
    ({"features": {"crops": {"source": "of", "type": "rawimg", "size": True}}},
     "config key features.crops.size: expected int, got True"),
    ({"text": {"source": "c.json", "min_faces": "1"}}, "config key text.min_faces: expected int"),
    ({"name": 3, "text": {"source": "c.json"}}, "config key name: expected str or null, got 3"),
])
def test_config_values_are_type_checked(tmp_path, cfg, message):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as err:
        load_config(tmp_path / "config.json")
    assert message in str(err.value) and "config.json" in str(err.value)
