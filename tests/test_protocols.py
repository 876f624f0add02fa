"""Evaluation protocols on generated utterance lists in the corpora's own id formats: every
fold of iemocap-10fold, iemocap-5fold, msp-improv-12fold and MELD, the label maps and their
dropped counts, speaker independence, user protocol files, refused inputs, and ``memo db
build`` / ``memo db check`` of a protocol dataset."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from memo.cli import main
from memodb.dataset.build import build_dataset
from memodb.dataset.protocols import (PROTOCOLS, assign, iemocap_id, meld_id, msp_improv_id,
                                      protocol_of, verify)
from memodb.errors import BadInputError, BadInputsError, MemoError
from memodb.synth import make_utterances


def utterances(tmp_path, corpus, **kw):
    path = tmp_path / f"{corpus}.jsonl"
    return path, make_utterances(corpus, path, **kw)


def test_standard_ids_give_speaker_and_session():
    assert iemocap_id("Ses03F_impro02_M014") == ("Ses03M", 3)
    assert iemocap_id("Ses05M_script01_1b_F003") == ("Ses05F", 5)
    assert msp_improv_id("MSP-IMPROV-S01A-F01-P-FM01") == ("F01", 1)
    assert msp_improv_id("MSP-IMPROV-S08A-M05-S-MF02") == ("M05", 5)
    assert meld_id("dia12_utt3") == (None, None)
    assert meld_id("dev_dia0_utt0") == (None, None)
    for bad in ("Ses03F_impro02", "utt_001", "MSP-IMPROV-F01", "dia1-utt2"):
        assert iemocap_id(bad) is None and msp_improv_id(bad) is None and meld_id(bad) is None


def test_iemocap_10fold_every_fold(tmp_path):
    src, recs = utterances(tmp_path, "iemocap", per_speaker=8)
    a = assign("iemocap-10fold", src)
    assert a.folds == tuple(range(1, 11)) and a.version == 1
    kept = [r for r in recs if r["label"] in ("ang", "hap", "exc", "neu", "sad")]
    for fold in a.folds:
        s, first = (fold + 1) // 2, fold % 2 == 1
        test_spk, val_spk = (f"Ses{s:02d}F", f"Ses{s:02d}M")[::1 if first else -1]
        ids = a.fold_ids(fold)
        want = {"test": [], "val": [], "train": []}
        for r in kept:
            spk, session = iemocap_id(r["id"])
            want["train" if session != s else "test" if spk == test_spk else "val"].append(
                r["id"])
        assert ids == want, fold
        assert ids["test"] and ids["val"] and ids["train"]
        assert {iemocap_id(i)[0] for i in ids["test"]} == {test_spk}
        assert {iemocap_id(i)[0] for i in ids["val"]} == {val_spk}
    # every utterance is tested exactly once over the ten folds, never validated on its fold
    tested = Counter(i for f in a.folds for i in a.fold_ids(f)["test"])
    assert set(tested.values()) == {1} and len(tested) == len(kept)
    assert verify(a) == []


def test_iemocap_label_maps_merge_and_count(tmp_path):
    src, recs = utterances(tmp_path, "iemocap", per_speaker=8)
    given = Counter(r["label"] for r in recs)
    a = assign("iemocap-10fold", src)
    assert a.classes == ["angry", "happy", "neutral", "sad"]
    assert a.dropped == {k: given[k] for k in ("fru", "sur", "xxx")}
    got = Counter(a.classes[c] for c in a.labels.values())
    assert got == {"angry": given["ang"], "happy": given["hap"] + given["exc"],
                   "neutral": given["neu"], "sad": given["sad"]}
    six = assign("iemocap-10fold", src, label_map_spec="iemocap-6class")
    assert six.classes == ["angry", "happy", "excited", "neutral", "sad", "frustrated"]
    assert six.dropped == {k: given[k] for k in ("sur", "xxx")}
    assert six.hash != a.hash  # the map is part of the protocol
    assert assign("iemocap-10fold", src).hash == a.hash  # and the hash is reproducible


def test_iemocap_5fold_leaves_one_session_out(tmp_path):
    src, _ = utterances(tmp_path, "iemocap")
    a = assign("iemocap-5fold", src)
    for s in range(1, 6):
        ids = a.fold_ids(s)
        assert {iemocap_id(i)[1] for i in ids["test"]} == {s}
        assert {iemocap_id(i)[1] for i in ids["val"]} == {s % 5 + 1}
        assert {iemocap_id(i)[1] for i in ids["train"]} == set(range(1, 6)) - {s, s % 5 + 1}
    assert verify(a) == []


def test_msp_improv_12fold_every_fold(tmp_path):
    src, recs = utterances(tmp_path, "msp-improv", per_speaker=8)
    a = assign("msp-improv-12fold", src)
    assert a.folds == tuple(range(1, 13))
    assert a.dropped == dict(Counter(r["label"] for r in recs if r["label"] in "OX"))
    for fold in a.folds:
        s = (fold + 1) // 2
        test_spk = f"{'F' if fold % 2 else 'M'}{s:02d}"
        val_spk = f"{'M' if fold % 2 else 'F'}{s:02d}"
        ids = a.fold_ids(fold)
        assert {msp_improv_id(i)[0] for i in ids["test"]} == {test_spk}, fold
        assert {msp_improv_id(i)[0] for i in ids["val"]} == {val_spk}, fold  # never the test one
        assert {msp_improv_id(i)[1] for i in ids["train"]} == set(range(1, 7)) - {s}
    assert verify(a) == []


def test_meld_official_split(tmp_path):
    src, recs = utterances(tmp_path, "meld")
    a = assign("meld", src)
    assert a.folds == (1,) and not PROTOCOLS["meld"].speaker_independent
    ids = a.fold_ids(1)
    by_split = {"train": "train", "dev": "val", "test": "test"}
    assert {k: len(v) for k, v in ids.items()} == Counter(by_split[r["split"]] for r in recs)
    assert a.classes == ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
    assert a.dropped == {}
    # a split prefix in the id gives the split; a contradicting field is refused
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "dev_dia1_utt0", "text": "hi", "label": "joy",
                             "split": "test"}) + "\n")
    with pytest.raises(BadInputsError, match="the split field says 'test' but the id says"):
        assign("meld", p)


def test_speaker_fields_replace_unknown_ids_and_unknown_ids_are_refused(tmp_path):
    p = tmp_path / "u.jsonl"
    recs = [{"id": f"clip{n:03d}", "text": "hello", "label": "neu"} for n in range(4)]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(BadInputsError) as e:
        assign("iemocap-10fold", p)
    msg = str(e.value)
    assert "clip000" in msg and "not in the IEMOCAP (Ses03F_impro02_M014) format" in msg
    assert "no speaker field" in msg and "speaker and session fields" in msg
    # with speaker and session fields, any id works: two speakers per session
    rows = [{"id": f"clip{s}{g}{n}", "text": "hello there", "label": "neu",
             "speaker": f"s{s}{g}", "session": s}
            for s in range(1, 6) for g in "ab" for n in range(2)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = assign("iemocap-10fold", p)
    assert a.fold_ids(1)["test"] == ["clip1a0", "clip1a1"]
    assert a.fold_ids(2)["test"] == ["clip1b0", "clip1b1"]
    # a speaker field the id contradicts
    p.write_text(json.dumps({"id": "Ses01F_impro01_F000", "text": "x", "label": "neu",
                             "speaker": "Ses01M"}) + "\n")
    with pytest.raises(BadInputsError, match="speaker field says 'Ses01M' but the id says"):
        assign("iemocap-10fold", p)


def test_a_session_with_one_speaker_is_refused(tmp_path):
    src, recs = utterances(tmp_path, "iemocap")
    src.write_text("".join(json.dumps(r) + "\n" for r in recs if not r["id"].endswith(
        tuple(f"M{n:03d}" for n in range(10))) or not r["id"].startswith("Ses02")))
    with pytest.raises(BadInputError, match="session 2 has 1 speaker"):
        assign("iemocap-10fold", src)


def test_user_protocol_file_and_speaker_leak(tmp_path):
    src, recs = utterances(tmp_path, "iemocap")
    ids = [r["id"] for r in recs]
    split = {1: "test", 2: "val"}
    lines = []
    for fold in (1, 2):
        for i in ids:
            s = iemocap_id(i)[1]
            lines.append(f"{i}\t{fold}\t{split.get(s if fold == 1 else 6 - s, 'train')}")
    pfile = tmp_path / "my.tsv"
    pfile.write_text("# id fold split\n" + "\n".join(lines) + "\n")
    a = assign(str(pfile), src, label_map_spec="iemocap-4class")
    assert a.name == "file:my.tsv" and a.folds == (1, 2)
    assert {iemocap_id(i)[1] for i in a.fold_ids(2)["test"]} == {5}
    # a line that puts a test speaker into train is a leak
    leak = next(i for i in ids if iemocap_id(i)[1] == 1 and i in a.labels)
    pfile.write_text(pfile.read_text().replace(f"{leak}\t1\ttest", f"{leak}\t1\ttrain"))
    with pytest.raises(BadInputError, match=r"fold 1: speaker 'Ses01.' is in test and in "
                                            "train"):
        assign(str(pfile), src, label_map_spec="iemocap-4class")
    # an utterance the file leaves out
    pfile.write_text("\n".join(x for x in lines if not x.startswith(leak)) + "\n")
    with pytest.raises(BadInputError, match="1 utterance\\(s\\) are not in the protocol file"):
        assign(str(pfile), src, label_map_spec="iemocap-4class")


def test_unknown_protocol_and_label_map(tmp_path):
    src, _ = utterances(tmp_path, "iemocap")
    with pytest.raises(BadInputError, match="neither a named protocol nor a file"):
        assign("iemocap-11fold", src)
    with pytest.raises(BadInputError, match="unknown label map 'iemocap-5class'"):
        assign("iemocap-10fold", src, label_map_spec="iemocap-5class")
    with pytest.raises(BadInputError, match="no utterance has a label of the map"):
        assign("iemocap-10fold", src, label_map_spec="meld-7class")


def test_tampered_assignment_is_found(tmp_path):
    src, _ = utterances(tmp_path, "iemocap")
    a = assign("iemocap-10fold", src)
    uid = a.fold_ids(1)["test"][0]
    a.splits[uid] = ("train",) + a.splits[uid][1:]
    codes = {c for c, _, _ in verify(a)}
    assert codes == {"protocol_misplaced", "protocol_speaker_leak"}


# -- memo db build / memo db check ------------------------------------------------------------

def write_config(root, protocol, source, **text):
    cfg = {"name": "corpus", "text": {"source": source, "protocol": protocol, **text}}
    (root / "config.json").write_text(json.dumps(cfg))
    return root / "config.json"


def test_build_meld_with_the_cli(tmp_path):
    make_utterances("meld", tmp_path / "meld.jsonl", per_speaker=4)
    cfg = write_config(tmp_path, "meld", "meld.jsonl")
    out = tmp_path / "ds"
    r = CliRunner().invoke(main, ["db", "build", str(cfg), str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "txt" / "fold1").iterdir()) == [
        "splits.json", "test", "train", "val"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["protocol"]["name"] == "meld" and ds["protocol"]["version"] == 1
    assert len(ds["protocol"]["hash"]) == 12 and ds["protocol"]["utterances"] == 12
    rec = protocol_of(out / "txt" / "fold1" / "test")
    assert rec["hash"] == ds["protocol"]["hash"] and rec["fold"] == 1
    m = json.loads((out / "txt" / "fold1" / "val" / "manifest.json").read_text())
    assert m["labels"]["names"] == ["neutral", "joy", "surprise", "anger", "sadness",
                                    "disgust", "fear"] and m["counts"]["texts"] == 4
    again = CliRunner().invoke(main, ["db", "build", str(cfg), str(out), "--workers", "1"])
    assert again.exit_code == 0 and again.output.count("│ up to date │") == 3, again.output
    # fold groups of an earlier protocol are removed, a hand-made folder is not
    (out / "txt" / "fold2").mkdir()
    (out / "txt" / "fold2" / "splits.json").write_text(json.dumps(
        {"kind": "splits", "splits": {}, "protocol": {"name": "old", "hash": "x"}}))
    (out / "txt" / "fold3").mkdir()
    assert build_dataset(cfg, out, workers=1).report.ok
    assert sorted(p.name for p in (out / "txt").glob("fold*")) == ["fold1", "fold3"]


def test_build_and_check_a_5fold_protocol(tmp_path):
    src, recs = utterances(tmp_path, "iemocap", per_speaker=3)
    cfg = write_config(tmp_path, "iemocap-5fold", src.name, label_map="iemocap-6class")
    out = tmp_path / "ds"
    res = build_dataset(cfg, out, workers=1)
    assert res.report.ok, res.report.to_json()
    assert sorted(p.name for p in (out / "txt").glob("fold*")) == [f"fold{f}" for f in
                                                                    (1, 2, 3, 4, 5)]
    dropped = Counter(r["label"] for r in recs if r["label"] in ("sur", "xxx"))
    assert res.protocol["dropped"] == dropped
    assert any("with a label outside the map left out (sur 3, xxx 3)" in w
               for w in res.warnings)
    a = assign("iemocap-5fold", src, label_map_spec="iemocap-6class")
    assert res.protocol["hash"] == a.hash
    for fold in a.folds:
        splits = json.loads((out / "txt" / f"fold{fold}" / "splits.json").read_text())
        assert splits["protocol"]["hash"] == a.hash and splits["protocol"]["fold"] == fold
        for split, ids in a.fold_ids(fold).items():
            n = json.loads((out / "txt" / f"fold{fold}" / split / "manifest.json")
                           .read_text())["counts"]["texts"]
            assert n == len(ids)
    # protocol.json edited after the build: memo db check names it
    pfile = out / "txt" / "protocol.json"
    body = json.loads(pfile.read_text())
    row = next(u for u in body["utterances"] if u[5][0] == "e")
    row[5] = "t" + row[5][1:]
    pfile.write_text(json.dumps(body))
    r = CliRunner().invoke(main, ["db", "check", str(out), "--workers", "1"])
    assert r.exit_code == 1
    assert "[protocol_hash]" in r.output and "[protocol_misplaced]" in r.output
    assert "[protocol_speaker_leak]" in r.output
    assert f"(dataset, 15 databases, protocol iemocap-5fold@{a.hash})" in r.output


@pytest.mark.parametrize("text, message", [
    ({"protocol": "iemocap-10fold", "splits": ["val=3"]}, "text.splits cannot be combined "
                                                          "with a protocol"),
    ({"protocol": "iemocap-10fold", "labels": ["a"]}, "text.labels cannot be combined"),
    ({"protocol": "nope.tsv"}, "text.protocol is .*neither a named protocol nor a file"),
    ({"protocol": "iemocap-10fold", "label_map": "x"}, "unknown label map 'x'.*text.label_map"),
    ({"label_map": "iemocap-4class"}, "text.label_map needs a protocol"),
])
def test_bad_protocol_configs_are_refused(tmp_path, text, message):
    make_utterances("iemocap", tmp_path / "u.jsonl")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"text": {"source": "u.jsonl", **text}}))
    with pytest.raises(MemoError, match=message):
        build_dataset(cfg, tmp_path / "out", workers=1)
    assert not (tmp_path / "out" / "txt").exists()


def test_bad_utterance_file_names_the_line_and_publishes_nothing(tmp_path):
    src = tmp_path / "u.jsonl"
    src.write_text('{"id": "Ses01F_impro01_F000", "text": "hi", "label": "neu"}\n'
                   '{"id": "Ses01F_impro01_F001", "text": 3, "label": "neu"}\n'
                   '{"id": "Ses01F_impro01_F002", "text": "a", "label": 2}\n')
    cfg = write_config(tmp_path, "iemocap-10fold", "u.jsonl")
    r = CliRunner().invoke(main, ["db", "build", str(cfg), str(tmp_path / "out")])
    assert r.exit_code == 1
    assert "line 2: 'text' must be a string" in r.output
    assert "line 3: 'label' must be the corpus's label string" in r.output
    assert str(src) in r.output
    assert not (tmp_path / "out" / "txt").exists()


def test_meld_ids_repeated_across_splits_are_refused_with_the_fix(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"id": "dia0_utt0", "text": "hi", "label": "joy",
                                     "split": s}) + "\n" for s in ("train", "dev")))
    with pytest.raises(BadInputsError, match="line 2: the id appears more than once.*"
                                             "put the split before the id"):
        assign("meld", p)


def test_protocol_with_faces_shards_merge_like_a_single_build(tmp_path):
    """Speaker and session fields for ids in no corpus format; texts only for segments with
    faces (the others are ``protocol_lost`` warnings); two shards merged give the single
    build's folder byte for byte."""
    from memodb.dataset.merge import merge_shards
    from memodb.synth import make_h5_corpus

    ids = make_h5_corpus(tmp_path / "h5", movies=2, segments=10, faces=4, seed=2)
    rows = [{"id": i, "text": f"so happy {n}", "label": "ang hap neu sad".split()[n % 4],
             "speaker": f"spk{n % 10}", "session": n % 10 // 2 + 1} for n, i in enumerate(ids)]
    (tmp_path / "u.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.json").write_text(json.dumps(
        {"name": "faces", "features": {"face": {"source": "h5", "conf_th": 0.5}},
         "text": {"source": "u.jsonl", "protocol": "iemocap-5fold", "faces_from": "face"}}))
    single = build_dataset(tmp_path / "c.json", tmp_path / "single", workers=1)
    assert single.report.ok, single.report.to_json()
    lost = [w for d in single.report.databases for w in d.warnings
            if w.code == "protocol_lost"]
    faceless = json.loads(next((tmp_path / "single" / "face").glob("*.json")).read_text())
    assert lost and all(faceless[w.segment + ".npz"] == 0 for w in lost)
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        assert build_dataset(tmp_path / "c.json", d, workers=1, shard=f"{i}/2").report.ok
    merged = merge_shards(shards, tmp_path / "merged", workers=1)
    assert merged.report.ok

    def files(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file()}

    assert files(tmp_path / "merged") == files(tmp_path / "single")
