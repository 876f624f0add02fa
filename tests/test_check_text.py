"""``memo db check`` on text databases, split groups and dataset folders (issue 3).

One small dataset is built per module and copied for each test; every test corrupts one thing
and asserts the problem code and the text id it names.
"""
import json
import shutil

import lmdb
import lz4.frame
import msgpack
import pytest
from click.testing import CliRunner

from memo.cli import main
from memodb.checks.folders import find_databases
from memodb.checks.run import check
from memodb.feature.imgdb import create_imgdb
from memodb.store.reader import close_all
from memodb.store.textcodec import decode_example
from memodb.synth import make_captions, make_h5_corpus
from memodb.text.txtdb import create_txtdb

FEAT = "face/feat_th0.5_max36_min0"
LEXICON = "angry\tanger\nwonderful\tjoy\nlaughed\tjoy\ncried\tsadness\nalone\tsadness\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """ds/face/feat_...; ds/txt/{train,val,test,trn3k} + splits.json (captions);
    ds/lab (labels + lexicon, truncated at 12 pieces); ds/dataset.json."""
    root = tmp_path_factory.mktemp("tpl")
    ids = make_h5_corpus(root / "h5", movies=2, segments=10, faces=12, seed=1)
    make_captions(ids, root / "caps.json", seed=3)
    caps = json.loads((root / "caps.json").read_text())
    refs = {i: {"txt": c, "label": n % 3} for n, (i, c) in enumerate(sorted(caps.items()))}
    (root / "refs.json").write_text(json.dumps(refs))
    (root / "lex.txt").write_text(LEXICON)
    ds = root / "ds"
    img = create_imgdb(root / "h5", ds / "face", workers=1)
    create_txtdb(root / "caps.json", ds / "txt", img_db=img.path,
                 splits=["val=4", "test=4", "trn3k=3@train"])
    create_txtdb(root / "refs.json", ds / "lab", img_db=img.path, labels=["neu", "hap", "sad"],
                 lexicon=root / "lex.txt", max_len=12)
    (ds / "dataset.json").write_text(json.dumps({"kind": "dataset", "databases": {
        "face": {"path": FEAT, "kind": "feature"},
        "txt": {"path": "txt", "kind": "text"},
        "lab": {"path": "lab", "kind": "text"}}}))
    close_all()
    return ds


@pytest.fixture
def ds(template, tmp_path):
    shutil.copytree(template, tmp_path / "ds")
    return tmp_path / "ds"


def read(db, key):
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        ex = decode_example(txn.get(key.encode()))
    env.close()
    return ex


def keys_of(db):
    return sorted(json.loads((db / "id2len.json").read_text()))


def put(db, items: dict, delete=()):
    """Rewrite values (an example dict is encoded, bytes stored as they are)."""
    close_all()
    env = lmdb.open(str(db), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            if isinstance(v, dict):
                v = lz4.frame.compress(msgpack.packb(v, use_bin_type=True))
            txn.put(k.encode(), v)
        for k in delete:
            txn.delete(k.encode())
    env.close()


def edit_json(path, change):
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))


def found(report, path=None):
    """{(code, id)} of the problems of one database (all databases when path is None)."""
    return {(p.code, p.segment) for d in report.databases
            if path is None or d.path == str(path) for p in d.problems}


def warnings(report):
    return {(p.code, p.segment) for d in report.databases for p in d.warnings}


def test_clean_dataset_passes(ds):
    report = check([ds], workers=1)
    assert report.ok and report.exit_code == 0, report.to_json()
    by_path = {d.path: d for d in report.databases}
    assert {d.kind for d in report.databases} == {"feature", "text", "splits", "dataset"}
    assert by_path[str(ds / "txt")].kind == "splits"
    assert by_path[str(ds)].kind == "dataset"
    val = by_path[str(ds / "txt" / "val")]
    assert val.kind == "text" and val.counts["texts"] == 4
    assert val.counts["pieces"] == sum(json.loads((ds / "txt/val/id2len.json").read_text())
                                       .values())
    assert json.loads(report.to_json())["ok"] is True
    assert not warnings(report)


def test_cli_prints_text_dbs_and_json(ds):
    res = CliRunner().invoke(main, ["db", "check", "--workers", "2", str(ds / "txt")])
    assert res.exit_code == 0, res.output
    assert f"OK   {ds / 'txt' / 'val'} (text, 4 texts, " in res.output
    assert f"OK   {ds / 'txt'} (splits, 4 splits" in res.output
    res = CliRunner().invoke(main, ["db", "check", "--json", str(ds / "lab")])
    assert res.exit_code == 0 and json.loads(res.stdout)["databases"][0]["kind"] == "text"


def test_nested_databases_are_found(ds):
    (ds / "txt2").mkdir()
    shutil.move(str(ds / "lab"), str(ds / "txt2" / "fold1"))
    (ds / "txt2" / ".hidden").mkdir()
    shutil.copytree(ds / "txt" / "val", ds / "txt2" / ".hidden" / "val")
    (ds / "txt2" / "deeper" / ".val.partial").mkdir(parents=True)
    dbs = find_databases(ds)
    assert ds / FEAT in dbs and ds / "txt" / "trn3k" in dbs and ds / "txt2" / "fold1" in dbs
    assert not any(".hidden" in str(p) for p in dbs) and len(dbs) == 6
    assert find_databases(ds / "txt" / "val") == [ds / "txt" / "val"]
    report = check([ds], workers=1)
    partial = [d for d in report.databases if d.kind == "partial"]
    assert [d.path for d in partial] == [str(ds / "txt2" / "deeper" / ".val.partial")]
    # dataset.json still names "lab", which moved
    assert ("dataset_db_missing", None) in found(report, ds)
    assert report.exit_code == 1


def test_values_are_checked_and_ids_named(ds):
    db = ds / "txt" / "train"
    k = keys_of(db)
    bad_id, bad_len, bad_range, bad_piece, bad_img, no_ids, too_long = (
        read(db, x) for x in k[1:8])
    bad_id["id"] = "someone_else"
    bad_len["input_ids"].append(1045)
    bad_range["input_ids"][0] = 99999
    bad_piece["toked_caption"][0] = "[SEP]" if bad_piece["toked_caption"][0] != "[SEP]" else "a"
    bad_img["img_fname"] = "elsewhere.npz"
    del no_ids["input_ids"]
    for f in ("toked_caption", "input_ids", "word_ids"):
        too_long[f] = too_long[f] * 20
    extra = dict(read(db, k[0]), id="zz_extra_1")
    put(db, {k[0]: b"\x04\x22garbage", k[1]: bad_id, k[2]: bad_len, k[3]: bad_range,
             k[4]: bad_piece, k[5]: bad_img, k[6]: no_ids, k[7]: too_long,
             "zz_extra_1": extra})
    report = check([db], workers=2)
    got = found(report, db)
    for expected in [("undecodable", k[0]), ("id_mismatch", k[1]), ("length_mismatch", k[2]),
                     ("id2len_mismatch", k[2]), ("id_out_of_range", k[3]),
                     ("piece_mismatch", k[4]), ("txt2img_mismatch", k[5]),
                     ("bad_field", k[6]), ("too_long", k[7]), ("id2len_mismatch", k[7]),
                     ("id2len_unlisted", "zz_extra_1"), ("txt2img_unlisted", "zz_extra_1"),
                     ("checksum_mismatch", None), ("count_mismatch", None)]:
        assert expected in got, expected
    assert report.exit_code == 1
    assert report.databases[0].counts["texts"] == len(k) + 1


def test_labels_and_emotion_fields(ds):
    db = ds / "lab"
    k = keys_of(db)
    a, b, c, d = (read(db, x) for x in k[:4])
    assert "emo_type_ids" in a and a["target"] in (0, 1, 2)
    a["target"] = 7
    del b["target"]
    c["emo_type_ids"] = c["emo_type_ids"][:-1]
    d["emo_input_ids"] = d["emo_input_ids"] + [2000]
    put(db, {k[0]: a, k[1]: b, k[2]: c, k[3]: d})
    got = found(check([db], workers=1))
    for expected in [("label_out_of_range", k[0]), ("label_missing", k[1]),
                     ("length_mismatch", k[2]), ("emo_mismatch", k[3]),
                     ("label_count_mismatch", None)]:
        assert expected in got, expected


def test_side_files(ds):
    db = ds / "txt" / "val"
    k = keys_of(db)
    edit_json(db / "id2len.json", lambda d: {**{x: n for x, n in d.items() if x != k[0]},
                                             "ghost_1": 3})
    edit_json(db / "txt2img.json", lambda d: {**d, k[1]: "ghost_1.npz"})
    edit_json(db / "img2txts.json", lambda d: {x: v for x, v in d.items()
                                               if x != k[2] + ".npz"})
    edit_json(db / "meta.json", lambda d: {**d, "CLS": 7})
    got = found(check([db], workers=1))
    for expected in [("id2len_unlisted", k[0]), ("id2len_extra", "ghost_1"),
                     ("txt2img_mismatch", k[1]), ("img2txts_mismatch", k[1]),
                     ("img2txts_mismatch", k[2]), ("meta_mismatch", None)]:
        assert expected in got, expected
    (db / "txt2img.json").write_text("[1, 2")
    assert ("side_unreadable", None) in found(check([db], workers=1))
    (db / "txt2img.json").unlink()
    assert ("side_missing", None) in found(check([db], workers=1))


def test_feature_db_link(ds, tmp_path):
    db = ds / "txt" / "val"
    k = keys_of(db)
    feat = ds / FEAT
    nbb = ds / "face" / "nbb_th0.5_max36_min0.json"
    edit_json(nbb, lambda d: {**d, k[0] + ".npz": 0})
    put(feat, {}, delete=[k[1] + ".npz"])
    got = found(check([db], workers=1))
    assert ("img_too_few_faces", k[0]) in got and ("img_missing", k[1]) in got
    assert ("img_db_changed", None) not in got  # the manifest still says the same
    edit_json(feat / "manifest.json", lambda d: {**d, "checksum": "sha256:00"})
    assert ("img_db_changed", None) in found(check([db], workers=1))
    shutil.move(str(ds / "face"), str(tmp_path / "face_moved"))
    report = check([ds / "txt"], workers=1)
    for name in ("train", "val", "test", "trn3k"):
        assert ("img_db_missing", None) in found(report, ds / "txt" / name)


def test_vocabulary_file(ds, tmp_path):
    db = ds / "txt" / "val"
    vocab = json.loads((db / "manifest.json").read_text())["vocab"]["file"]
    shutil.copy(vocab, tmp_path / "vocab.txt")
    edit_json(db / "manifest.json", lambda d: d["vocab"].update(file=str(tmp_path / "vocab.txt")))
    assert check([db], workers=1).ok
    with open(tmp_path / "vocab.txt", "a") as f:
        f.write("extra\n")
    assert ("vocab_changed", None) in found(check([db], workers=1))
    (tmp_path / "vocab.txt").unlink()
    report = check([db], workers=1)
    assert report.ok and ("vocab_unavailable", None) in warnings(report)


def test_text_db_without_manifest(ds):
    db = ds / "txt" / "val"
    (db / "manifest.json").unlink()
    report = check([db], workers=1)
    (rep,) = report.databases
    assert rep.kind == "text" and rep.ok and ("no_manifest", None) in warnings(report)


def test_split_overlap_and_monitor(ds):
    txt = ds / "txt"
    val_id = keys_of(txt / "val")[0]
    test_id = keys_of(txt / "test")[0]
    put(txt / "train", {val_id: read(txt / "val", val_id)})
    put(txt / "trn3k", {test_id: read(txt / "test", test_id)})
    report = check([txt], workers=1)
    got = found(report, txt)
    assert ("splits_overlap", val_id) in got
    assert ("monitor_outside", test_id) in got
    assert ("splits_count", None) in got
    assert ("splits_identical", None) not in {(c, None) for c, _ in got}
    (group,) = [d for d in report.databases if d.kind == "splits"]
    assert group.path == str(txt) and report.exit_code == 1


def test_validation_equals_test(ds):
    txt = ds / "txt"
    edit_json(txt / "splits.json", lambda d: d["splits"]["test"].update(db="val"))
    report = check([txt], workers=1)
    got = found(report, txt)
    first = keys_of(txt / "val")[0]
    assert ("splits_identical", first) in got and ("splits_overlap", first) in got
    assert any(w[0] == "split_unlisted" for w in warnings(report))  # test/ no longer listed


def test_split_group_missing_db_and_dataset_links(ds, tmp_path):
    edit_json(ds / "txt" / "splits.json",
              lambda d: d["splits"].update(dev={"db": "dev", "role": "heldout", "texts": 1}))
    edit_json(ds / "dataset.json",
              lambda d: d["databases"].update(gone={"path": "txt/nothing", "kind": "text"}))
    # a text db linking a feature db outside the dataset folder: works, but is not portable
    outside = tmp_path / "elsewhere" / "feat_th0.5_max36_min0"
    shutil.copytree(ds / FEAT, outside)
    shutil.copy(ds / "face" / "nbb_th0.5_max36_min0.json", outside.parent)
    rel = "../../elsewhere/feat_th0.5_max36_min0"  # from ds/lab
    edit_json(ds / "lab" / "manifest.json", lambda d: d["img_db"].update(path=rel))
    report = check([ds], workers=1)
    assert ("split_db_missing", None) in found(report, ds / "txt")
    assert ("dataset_db_missing", None) in found(report, ds)
    assert ("img_db_outside", None) in warnings(report)
    assert found(report, ds / "lab") == set()


def test_malformed_splits_and_dataset_files(ds):
    txt = ds / "txt"
    def change(d):
        d["splits"]["trn3k"]["of"] = "nope"
        d["splits"]["val"]["role"] = "validation"

    edit_json(txt / "splits.json", change)
    got = found(check([txt], workers=1), txt)
    assert ("split_of_unknown", None) in got and ("split_role", None) in got
    (txt / "splits.json").write_text("[")
    (ds / "dataset.json").write_text("{}")
    report = check([ds], workers=1)
    assert ("splits_unreadable", None) in found(report, txt)
    assert ("dataset_unreadable", None) in found(report, ds)


def test_unexpected_label_and_orphan_image_entry(ds):
    db = ds / "txt" / "val"
    k = keys_of(db)
    put(db, {k[0]: dict(read(db, k[0]), target=1)})
    edit_json(db / "img2txts.json", lambda d: {**d, "orphan.npz": []})
    got = found(check([db], workers=1))
    assert ("label_unexpected", k[0]) in got and ("img2txts_mismatch", None) in got


# --- issue 16, item 3: deleted feature manifest, meta.json against the vocabulary ----------


def test_deleted_feature_manifest_is_a_problem(ds):
    """The text manifests recorded the feature database's checksum: its manifest existed, so
    a missing one was deleted (a problem naming the database and the fix, exit 1)."""
    (ds / FEAT / "manifest.json").unlink()
    report = check([ds], workers=1)
    assert report.exit_code == 1
    assert ("no_manifest", None) in warnings(report)
    for name in ("txt/train", "txt/val", "txt/test", "txt/trn3k", "lab"):
        assert ("img_db_manifest_missing", None) in found(report, ds / name), name
    (msg,) = [p.message for d in report.databases if d.path == str(ds / "lab")
              for p in d.problems]
    assert "feat_th0.5_max36_min0" in msg and "memo db build" in msg
    r = CliRunner().invoke(main, ["db", "check", str(ds)])
    assert r.exit_code == 1 and "img_db_manifest_missing" in r.output


def test_meta_token_ids_are_compared_with_the_vocabulary(ds):
    db = ds / "txt" / "val"
    # meta.json and the manifest agree with each other, not with vocab.txt
    for f, part in (("meta.json", lambda d: d), ("manifest.json", lambda d: d["vocab"])):
        edit_json(db / f, lambda d: part(d).update(CLS=5, v_range=[0, 30522]))
    report = check([db], workers=1)
    assert report.exit_code == 1
    got = [p for p in report.databases[0].problems]
    assert {p.code for p in got} == {"meta_vocab_mismatch"}
    msgs = sorted(p.message for p in got)
    assert len(msgs) == 2
    assert "CLS 5" in msgs[0] and "'[CLS]' id 101" in msgs[0]
    assert "v_range [0, 30522]" in msgs[1] and "v_range [999, 30522]" in msgs[1]
    # a missing token id is named too; without the vocabulary nothing is compared
    edit_json(db / "meta.json", lambda d: {k: v for k, v in d.items() if k != "MASK"})
    got = {p.message for p in check([db], workers=1).databases[0].problems
           if p.code == "meta_vocab_mismatch"}
    assert any("no MASK" in m and "'[MASK]' id 103" in m for m in got)
    edit_json(db / "manifest.json", lambda d: d["vocab"].update(file=str(ds / "gone.txt")))
    report = check([db], workers=1)
    assert "meta_vocab_mismatch" not in {p.code for p in report.databases[0].problems}
    assert ("vocab_unavailable", None) in warnings(report)


def test_recorded_vocabulary_that_is_not_one_is_a_problem(ds, tmp_path):
    import hashlib

    db = ds / "txt" / "val"
    bad = tmp_path / "vocab.txt"
    bad.write_text("hello\nworld\n")
    sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    edit_json(db / "manifest.json", lambda d: d["vocab"].update(file=str(bad), vocab_sha256=sha))
    report = check([db], workers=1)
    assert ("vocab_invalid", None) in found(report)
    msg = [p.message for p in report.databases[0].problems if p.code == "vocab_invalid"][0]
    assert str(bad) in msg and "[CLS]" in msg


def _columns(db):
    """(chunk screen, example by example) columns of every text of ``db`` as one chunk."""
    from memodb.checks import text as T
    from memodb.checks.report import DbReport
    from memodb.store.manifest import read_manifest
    manifest = read_manifest(db)
    meta = json.loads((db / "meta.json").read_text())
    ctx = T._context(DbReport(str(db)), db, manifest, meta, manifest.get("vocab") or {},
                     manifest.get("options") or {}, manifest.get("labels"))
    vocab = T._worker_vocab(ctx["vocab"])
    close_all()
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin(buffers=True) as txn:
        keys = [bytes(k).decode() for k in txn.cursor().iternext(values=False)]
        got = T._screen(txn, keys, ctx, vocab), T._inspect_values(txn, keys, ctx, vocab)
    env.close()
    return keys, got


@pytest.mark.parametrize("name", ["txt/train", "lab"])
def test_clean_chunk_is_screened_with_the_same_result(ds, name):
    keys, (screened, each) = _columns(ds / name)
    assert screened is not None and screened == each and each[4] == []


def test_a_wrong_example_sends_its_chunk_back_to_the_example_checks(ds):
    """Emotion ids moved from one example to the next keep the chunk's concatenation equal:
    the per-example counts catch it, and both examples are named."""
    db = ds / "lab"
    keys, _ = _columns(db)
    a, b = next((x, y) for x, y in zip(keys, keys[1:])
                if read(db, x)["emo_input_ids"] and read(db, y)["emo_input_ids"])
    ea, eb = read(db, a), read(db, b)
    eb["emo_input_ids"] = ea["emo_input_ids"][-1:] + eb["emo_input_ids"]
    ea["emo_input_ids"] = ea["emo_input_ids"][:-1]
    put(db, {a: ea, b: eb})
    _, (screened, each) = _columns(db)
    assert screened is None
    assert {(k, code) for k, code, _ in each[4]} >= {(a, "emo_mismatch"), (b, "emo_mismatch")}
    # a piece whose id is another piece's: the chunk-wide vocabulary comparison catches it
    db = ds / "txt" / "train"
    keys, _ = _columns(db)
    ex = read(db, keys[-1])
    ex["input_ids"][0] = ex["input_ids"][0] + 1
    put(db, {keys[-1]: ex})
    _, (screened, each) = _columns(db)
    assert screened is None and (keys[-1], "piece_mismatch") in {(k, c) for k, c, _ in each[4]}
