"""Databases in the layouts the original UNITER / MEmoBERT tools read and write: the
``_compressed`` feature variant (np.savez_compressed values) that memo writes with --compress,
the min{N} name rule, original-layout feature databases written here from the documented
format, the whole-word text layout (memo's --layout wwm and an original counter-keyed one),
and memo extract naming its outputs by segment through txt2img."""
from __future__ import annotations

import io
import json

import lmdb
import lz4.frame
import msgpack
import msgpack_numpy
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memo.cli import main
from memodb.checks.run import check
from memodb.dataset.build import build_dataset
from memodb.dataset.merge import merge_shards
from memodb.describe import stats
from memodb.errors import BadInputError, DatabaseError, OutputExistsError
from memodb.feature.imgdb import create_imgdb
from memodb.store.codec import decode_compressed, encode_compressed
from memodb.store.reader import FeatureDB, close_all
from memodb.store.textdb import TextDB
from memodb.synth import make_captions, make_h5_corpus, make_lexicon
from memodb.text.txtdb import create_txtdb
from memotrain.checkpoint import save_checkpoint
from memotrain.config import preset
from memotrain.data import MemoDataset
from memotrain.model import MemoBert
from memotrain.recipes.extract import ExtractError, extract
from memotrain.recipes.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

ORIGINAL_NAME = "feat_th0.5_max36_min10_compressed"  # what every original config opens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 segments x up to 10 faces: a plain and a --compress feature database of the same
    source, and flat / wwm text databases of the same captions."""
    root = tmp_path_factory.mktemp("interop")
    ids = make_h5_corpus(root / "h5", movies=2, segments=6, faces=10, seed=4)
    plain = create_imgdb(root / "h5", root / "img", workers=1).path
    packed = create_imgdb(root / "h5", root / "imgz", compress=True, name_min=10, workers=1).path
    make_captions(ids, root / "caps.json", seed=4)
    create_txtdb(root / "caps.json", root / "txt", img_db=plain, workers=1)
    create_txtdb(root / "caps.json", root / "wwm", img_db=plain, layout="wwm", workers=1)
    close_all()
    return {"root": root, "ids": ids, "plain": plain, "packed": packed,
            "txt": root / "txt", "wwm": root / "wwm"}


def values(db) -> dict:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k).decode(): bytes(v) for k, v in txn.cursor()}
    env.close()
    return out


def ok(paths) -> bool:
    report = check([str(p) for p in paths], workers=1)
    assert report.ok, [str(p) for d in report.databases for p in d.problems]
    return report


def write_original_txtdb(path, examples: dict, txt2img: dict, meta: dict):
    """A text database as the original builders wrote it: lz4(msgpack) examples keyed by a
    counter, id2len counted over pieces, txt2img / img2txts, meta.json; no manifest."""
    env = lmdb.open(str(path), map_size=1 << 26)  # lock=True, as the original opens it
    with env.begin(write=True) as txn:
        for key, ex in examples.items():
            txn.put(key.encode(), lz4.frame.compress(msgpack.packb(ex, use_bin_type=True)))
    env.close()
    pieces = {k: sum(len(w) if isinstance(w, list) else 1 for w in ex["input_ids"])
              for k, ex in examples.items()}
    (path / "id2len.json").write_text(json.dumps(pieces))
    (path / "txt2img.json").write_text(json.dumps(txt2img))
    img2txts: dict = {}
    for t, img in txt2img.items():
        img2txts.setdefault(img, []).append(t)
    (path / "img2txts.json").write_text(json.dumps(img2txts))
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def original_wwm(corpus, path, sentences_of=None):
    """memo's flat texts rewritten in the original whole-word layout, keyed "0", "1", ...;
    ``sentences_of`` splits chosen segments' texts into two texts (one per sentence)."""
    txt = TextDB(corpus["txt"])
    examples, txt2img = {}, {}
    for seg in sorted(txt.ids()):
        ex = txt[seg]
        words: dict = {}
        for i, p, w in zip(ex["input_ids"], ex["toked_caption"], ex["word_ids"]):
            words.setdefault(w, ([], []))
            words[w][0].append(i)
            words[w][1].append(p if p.isalpha() else "@@" + p)  # the original's marking
        nested = [list(v) for v in words.values()]
        parts = [nested]
        if sentences_of and seg in sentences_of:
            parts = [nested[:1], nested[1:]]
        for part in parts:
            key = str(len(examples))
            examples[key] = {"id": key, "dataset": "movies", "file_path": ex["img_fname"],
                             "toked_caption": [p for _, p in part],
                             "input_ids": [i for i, _ in part], "img_fname": ex["img_fname"]}
            txt2img[key] = ex["img_fname"]
    meta = {k: txt.meta[k] for k in ("UNK", "CLS", "SEP", "MASK", "v_range")}
    return write_original_txtdb(path, examples, txt2img, {**meta, "toker": "bert-base-uncased"})


def train_config(txt, img, out) -> dict:
    return {"model": "tiny",
            "data": {"corpora": [{"txt_db": str(txt), "img_db": str(img),
                                  "tasks": {"mlm": 1, "mrfr": 1, "itm": 1}}],
                     "max_text_len": 20, "max_faces": 10, "batch_size": 4},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "steps": 3, "seed": 0, "log_every": 1,
            "val_every": 0, "save_every": 0, "output_dir": str(out)}


# ----------------------------------------------------------------------------- --compress

def test_compressed_variant_is_the_original_layout(corpus, tmp_path):
    packed, plain = corpus["packed"], corpus["plain"]
    assert packed.name == ORIGINAL_NAME
    assert (packed.parent / "nbb_th0.5_max36_min10.json").is_file()  # no _compressed
    raw, plain_db, packed_db = values(packed), FeatureDB(plain), FeatureDB(packed)
    assert set(raw) - {"__keys__"} == set(plain_db.keys()) == set(packed_db.keys())
    for key in plain_db.keys():
        with np.load(io.BytesIO(raw[key]), allow_pickle=True) as npz:  # the original reader
            stored = {k: npz[k] for k in npz.files}
        want = plain_db[key]
        assert list(stored) == list(want) == list(packed_db[key])
        for name, arr in want.items():
            np.testing.assert_array_equal(stored[name], arr)
            np.testing.assert_array_equal(packed_db[key][name], arr)
            assert stored[name].dtype == arr.dtype
    manifest = packed_db.manifest
    assert manifest["options"]["compress"] is True and manifest["options"]["name_min"] == 10
    assert manifest["counts"]["dropped_below_min_bb"] == 0  # min10 names, never drops
    ok([packed])
    assert stats(packed)["segments"] == stats(plain)["segments"] == len(corpus["ids"])
    again = create_imgdb(corpus["root"] / "h5", tmp_path, compress=True, name_min=10,
                         workers=2).path
    assert values(again) == raw  # fixed zip member times: byte-identical builds


def test_cli_compress_check_and_stats(corpus, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["db", "create-imgdb", str(corpus["root"] / "h5"), str(tmp_path),
                               "--compress", "--name-min", "10", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / ORIGINAL_NAME / "manifest.json").is_file()
    res = runner.invoke(main, ["db", "check", str(tmp_path / ORIGINAL_NAME)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["db", "stats", str(tmp_path / ORIGINAL_NAME)])
    assert res.exit_code == 0 and "12" in res.output, res.output
    assert "--compress" in runner.invoke(main, ["db", "create-imgdb", "--help"]).output


def test_compressed_db_and_wwm_text_db_train_as_the_plain_ones(corpus, tmp_path):
    base = pretrain(train_config(corpus["txt"], corpus["plain"], tmp_path / "plain"))
    assert base["steps"] == 3 and all(np.isfinite(x) for _, _, x in base["losses"])
    packed = pretrain(train_config(corpus["txt"], corpus["packed"], tmp_path / "packed"))
    wwm = pretrain(train_config(corpus["wwm"], corpus["plain"], tmp_path / "wwm"))
    assert packed["losses"] == base["losses"] == wwm["losses"]  # the same data, read alike


# ----------------------------------------------------------------------------- min{N}

def test_min_bb_is_refused_where_the_name_is_read_the_original_way(corpus, tmp_path):
    h5 = str(corpus["root"] / "h5")
    res = CliRunner().invoke(main, ["db", "create-imgdb", h5, str(tmp_path), "--compress",
                                    "--min-bb", "3", "--workers", "1"])
    assert res.exit_code == 1
    assert "--min-bb 3 drops segments with fewer kept frames" in res.output
    assert "the original readers take the min part of the name as a name only" in res.output
    assert "pass --name-min 3 instead of --min-bb" in res.output
    with pytest.raises(BadInputError, match="drop --min-bb .* or drop --name-min"):
        create_imgdb(h5, tmp_path, min_bb=2, name_min=10, workers=1)
    assert not list(tmp_path.iterdir())  # nothing published, nothing staged
    # --name-min alone: the plain variant under the original name, every segment kept
    r = create_imgdb(h5, tmp_path, name_min=10, workers=1)
    assert r.path.name == "feat_th0.5_max36_min10"
    assert r.counts["segments"] == len(corpus["ids"]) and min(FeatureDB(r.path).nbb().values()) < 10
    # the two variants of one name share an nbb json: not both in one folder
    with pytest.raises(OutputExistsError, match="would be shared"):
        create_imgdb(h5, tmp_path, name_min=10, compress=True, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feat_th0.5_max36_min10",
                                                          "nbb_th0.5_max36_min10.json"]


# ----------------------------------------------------------------------------- original writers

@pytest.mark.parametrize("compressed", [True, False])
def test_original_layout_feature_db_is_read_checked_and_trained_on(corpus, tmp_path, compressed):
    """Written as the original builder does: savez_compressed (or msgpack-numpy) values, keys
    in arbitrary order, __keys__, an nbb json without _compressed, an LMDB lock file."""
    plain = FeatureDB(corpus["plain"])
    keys = sorted(plain.keys(), reverse=True)
    path = tmp_path / (ORIGINAL_NAME if compressed else ORIGINAL_NAME[:-len("_compressed")])
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for key in keys:
            arrays = {k: np.array(v) for k, v in plain[key].items()}
            if compressed:
                buf = io.BytesIO()
                np.savez_compressed(buf, allow_pickle=True, **arrays)
                value = buf.getvalue()
            else:
                value = msgpack.dumps(arrays, default=msgpack_numpy.encode, use_bin_type=True)
            txn.put(key.encode(), value)
        txn.put(b"__keys__", json.dumps(keys).encode())
    env.close()
    (tmp_path / "nbb_th0.5_max36_min10.json").write_text(json.dumps(plain.nbb()))
    db = FeatureDB(path)
    assert not db.memo_built and sorted(db.keys()) == sorted(keys)
    for key in keys:
        for name, arr in plain[key].items():
            np.testing.assert_array_equal(db[key][name], arr)
    report = ok([path])
    assert [w.code for w in report.databases[0].warnings] == ["no_manifest"]
    ds = MemoDataset(corpus["txt"], path, max_text_len=30)
    item = ds[0]
    np.testing.assert_array_equal(item["faces"],
                                  plain[ds.segment_key(0)]["features"].astype(np.float32))


def test_msgpack_values_under_a_compressed_name_are_a_warning(corpus, tmp_path):
    path = tmp_path / ORIGINAL_NAME
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"a_1.npz", msgpack.dumps({"features": np.ones((2, 4), np.float16)},
                                          default=msgpack_numpy.encode, use_bin_type=True))
        txn.put(b"__keys__", b'["a_1.npz"]')
    env.close()
    (tmp_path / "nbb_th0.5_max36_min10.json").write_text('{"a_1.npz": 2}')
    assert FeatureDB(path)["a_1"]["features"].shape == (2, 4)  # memo reads it
    warnings = {w.code: w.message for w in check([path]).databases[0].warnings}
    assert "the original readers decode by the folder name" in warnings["variant_mismatch"]


# ----------------------------------------------------------------------------- whole-word text

def test_wwm_layout_written_checked_and_read_like_the_flat_one(corpus):
    wwm, flat = TextDB(corpus["wwm"]), TextDB(corpus["txt"])
    assert wwm.ids() == flat.ids() and wwm.id2len == flat.id2len  # lengths over pieces
    assert wwm.manifest["options"]["layout"] == "wwm" and wwm.meta["layout"] == "wwm"
    for t in flat.ids():
        a, b = wwm[t], flat[t]
        assert "word_ids" not in a and all(isinstance(w, list) for w in a["input_ids"])
        assert [i for w in a["input_ids"] for i in w] == b["input_ids"]
        assert [k for k, w in enumerate(a["input_ids"]) for _ in w] == b["word_ids"]
        assert [p for w in a["toked_caption"] for p in w] == b["toked_caption"]
    ok([corpus["wwm"]])
    d_wwm = MemoDataset(corpus["wwm"], corpus["plain"], max_text_len=30)
    d_flat = MemoDataset(corpus["txt"], corpus["plain"], max_text_len=30)
    for i in range(len(d_flat)):
        x, y = d_wwm[i], d_flat[i]
        for k in ("input_ids", "word_ids", "faces"):
            np.testing.assert_array_equal(x[k], y[k])
    assert stats(corpus["wwm"])["texts"] == len(flat.ids())


def test_cli_create_txtdb_layout_wwm(corpus, tmp_path):
    make_lexicon(tmp_path / "lex.tsv")
    res = CliRunner().invoke(main, ["db", "create-txtdb", str(corpus["root"] / "caps.json"),
                                    str(tmp_path / "t"), "--layout", "wwm", "--lexicon",
                                    str(tmp_path / "lex.tsv"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    ex = TextDB(tmp_path / "t")[corpus["ids"][0]]
    assert isinstance(ex["input_ids"][0], list)
    assert len(ex["emo_type_ids"]) == sum(map(len, ex["input_ids"]))  # per piece, as in flat
    res = CliRunner().invoke(main, ["db", "check", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    flat = create_txtdb(corpus["root"] / "caps.json", tmp_path / "f",
                        lexicon=tmp_path / "lex.tsv", workers=1).out_dir
    got, want = stats(tmp_path / "t"), stats(flat)
    assert got["lexicon"] == want["lexicon"] and got["lexicon"]["emotion_pieces"] > 0
    assert got["length"] == want["length"]
    with pytest.raises(BadInputError, match="unknown text layout 'nested'"):
        create_txtdb(corpus["root"] / "caps.json", tmp_path / "u", layout="nested")
    assert not (tmp_path / "u").exists()


def test_original_wwm_text_db_is_checked_and_trained_on(corpus, tmp_path):
    split = set(corpus["ids"][:2])  # two texts each, one per sentence, as the original keeps
    path = original_wwm(corpus, tmp_path / "orig", sentences_of=split)
    report = ok([path])
    assert [w.code for w in report.databases[0].warnings] == ["no_manifest"]
    ds = MemoDataset(path, corpus["plain"], max_text_len=30)
    assert len(ds) == len(corpus["ids"]) + 2
    txt2img = json.loads((path / "txt2img.json").read_text())
    flat = MemoDataset(corpus["txt"], corpus["plain"], max_text_len=30)
    by_seg = {flat.segment_key(i): flat[i] for i in range(len(flat))}
    for i in range(len(ds)):
        item = ds[i]
        assert ds.segment_key(i) == txt2img[item["id"]]
        np.testing.assert_array_equal(item["faces"], by_seg[txt2img[item["id"]]]["faces"])
        if txt2img[item["id"]][:-4] not in split:
            np.testing.assert_array_equal(item["input_ids"],
                                          by_seg[txt2img[item["id"]]]["input_ids"])
            np.testing.assert_array_equal(item["word_ids"],
                                          by_seg[txt2img[item["id"]]]["word_ids"])
    summary = pretrain(train_config(path, corpus["plain"], tmp_path / "run"))
    assert summary["steps"] == 3 and all(np.isfinite(x) for _, _, x in summary["losses"])


def test_malformed_word_is_a_named_error(corpus, tmp_path):
    path = original_wwm(corpus, tmp_path / "orig")
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        ex = msgpack.unpackb(lz4.frame.decompress(txn.get(b"3")))
        n = sum(map(len, ex["input_ids"]))
        ex["input_ids"] = ex["input_ids"][:1] + [[]] + ex["input_ids"][1:]
        txn.put(b"3", lz4.frame.compress(msgpack.packb(ex, use_bin_type=True)))
    env.close()
    assert json.loads((path / "id2len.json").read_text())["3"] == n
    problems = [p for d in check([path]).databases for p in d.problems]
    assert [(p.code, p.segment) for p in problems] == [("bad_field", "3")]
    assert "word 1 is [], not a non-empty list of integers" in problems[0].message
    ds = MemoDataset(path, corpus["plain"], max_text_len=30)
    with pytest.raises(DatabaseError, match=r"orig: text '3': 'input_ids' is nested per word "
                       r"\(whole-word layout\) but word 1 is \[\]"):
        ds[list(ds.ids).index("3")]
    with pytest.raises(DatabaseError, match="text '3': .*word 1 is"):
        stats(path)


# ----------------------------------------------------------------------------- extract

def test_extract_names_outputs_by_segment_through_txt2img(corpus, tmp_path):
    path = original_wwm(corpus, tmp_path / "orig")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", MemoBert(preset("tiny")))
    r = extract(ckpt, path, tmp_path / "out", img_db=corpus["plain"], device="cpu")
    want = sorted(f"{i}.npz" for i in corpus["ids"])
    for m in ("pooled", "text", "faces"):
        assert sorted(FeatureDB(r.out / m).keys()) == want
    ok([r.out])
    same = extract(ckpt, corpus["txt"], tmp_path / "memo", img_db=corpus["plain"], device="cpu")
    for key in want:  # the same texts under the same names, whatever the text ids
        np.testing.assert_array_equal(FeatureDB(r.out / "pooled")[key]["features"],
                                      FeatureDB(same.out / "pooled")[key]["features"])
    two = original_wwm(corpus, tmp_path / "two", sentences_of={corpus["ids"][0]})
    with pytest.raises(ExtractError, match=f"texts '0' and '1' both belong to segment "
                       f"'{corpus['ids'][0]}.npz'"):
        extract(ckpt, two, tmp_path / "o2", img_db=corpus["plain"], device="cpu")
    assert not (tmp_path / "o2").exists()


# ----------------------------------------------------------------------------- memo db build

def test_dataset_config_builds_the_original_names_and_layouts(corpus, tmp_path):
    cfg = {"name": "orig",
           "features": {"face": {"source": str(corpus["root"] / "h5"), "compress": True,
                                 "name_min": 10}},
           "text": {"source": str(corpus["root"] / "caps.json"), "faces_from": "face",
                    "layout": "wwm", "splits": ["val=3"]}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    res = build_dataset(tmp_path / "config.json", tmp_path / "ds", workers=1)
    assert res.report.ok, [str(p) for d in res.report.databases for p in d.problems]
    assert (tmp_path / "ds" / "face" / ORIGINAL_NAME / "manifest.json").is_file()
    val = TextDB(tmp_path / "ds" / "txt" / "val")
    assert all(isinstance(val[t]["input_ids"][0], list) for t in val.ids())
    cfg["features"]["face"] = {"source": str(corpus["root"] / "h5"), "compress": True,
                               "min_bb": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError, match=r"config\.json: features\.face\.min_bb 2 drops "
                       r"segments.*pass features\.face\.name_min 2 instead of "
                       r"features\.face\.min_bb"):
        build_dataset(tmp_path / "config.json", tmp_path / "ds2", workers=1)
    assert not (tmp_path / "ds2").exists()


def test_sharded_compressed_build_merges_to_the_same_bytes(corpus, tmp_path):
    cfg = {"features": {"face": {"source": str(corpus["root"] / "h5"), "compress": True,
                                 "name_min": 10}}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    build_dataset(tmp_path / "c.json", tmp_path / "one", workers=1)
    for i in range(2):
        build_dataset(tmp_path / "c.json", tmp_path / f"s{i}", workers=1, shard=f"{i}/2")
    assert merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m", workers=1).report.ok
    assert values(tmp_path / "m" / "face" / ORIGINAL_NAME) == \
        values(tmp_path / "one" / "face" / ORIGINAL_NAME)


@pytest.mark.parametrize("n", [0, 1, 7])
def test_compressed_decoder_equals_np_load(n):
    rng = np.random.default_rng(n)
    arrays = {"features": rng.normal(size=(n, 342)).astype(np.float16),
              "confidence": rng.uniform(size=n).astype(np.float16),
              "frame_idxs": np.arange(n, dtype=np.int32)}
    ours = encode_compressed(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    fortran = io.BytesIO()  # not the fast path's: np.load decodes it
    np.savez_compressed(fortran, features=np.asfortranarray(np.ones((n, 3), np.float16)))
    for value in (ours, buf.getvalue(), fortran.getvalue()):
        with np.load(io.BytesIO(value)) as npz:
            want = {k: npz[k] for k in npz.files}
        got = decode_compressed(value)
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == want[k].dtype
            np.testing.assert_array_equal(got[k], want[k])
    for damaged in (ours[:70] + bytes([ours[70] ^ 0xFF]) + ours[71:], ours[:len(ours) // 2]):
        with pytest.raises(DatabaseError, match="does not decode as a compressed npz"):
            decode_compressed(damaged)
