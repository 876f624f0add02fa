"""memo extract over a tiny labelled corpus (faces and speech of varied lengths, one segment
without a face, one without speech) and a tiny model with large random weights: the output
layout (feature databases that FeatureDB reads, memo db check passes and another training
takes as its img_db; Parquet), states independent of batching and equal to the model run on
each example alone, layers, labels, dropped texts, the CLI, and every kind of bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from conftest import write_npz
from memo.cli import main
from memodb.checks.run import check
from memodb.errors import OutputExistsError
from memodb.feature.imgdb import create_imgdb
from memodb.store.ids import id_to_key
from memodb.store.reader import FeatureDB
from memodb.store.textdb import TextDB
from memodb.synth import WORDS, make_captions, make_h5_corpus
from memodb.text.txtdb import create_txtdb
from memotrain.checkpoint import CheckpointError, load_model, save_checkpoint
from memotrain.config import preset
from memotrain.data import MemoDataset, collate
from memotrain.model import MemoBert
from memotrain.recipes import extract as extract_mod
from memotrain.recipes.extract import ExtractError, extract
from memotrain.sampler import BatchLimitError

SPEECH_DIM = 16
TOL = dict(rtol=0, atol=1e-5)  # float32 output; the differences measured on CPU are ~2e-6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """18 segments: 2..11 faces (two with none), speech of 3..7 frames for all but the last,
    labelled texts of 1..14 words; a tiny face + speech model (weights std 0.2, so attention
    is far from uniform), a text-only model and one taking 100-d faces."""
    root = tmp_path_factory.mktemp("extract")
    ids = make_h5_corpus(root / "h5", movies=2, segments=9, faces=6, seed=5)
    img = create_imgdb(root / "h5", root / "img", workers=1).path
    for n, i in enumerate(ids[:-1]):
        write_npz(root / "speech_npz" / f"{i}.npz", n=3 + n % 5, dim=SPEECH_DIM, seed=n,
                  confidence=None, soft_labels=None)
    speech = create_imgdb(root / "speech_npz", root / "speech", modality="speech",
                          workers=1).path
    rng = np.random.default_rng(5)
    refs = {i: {"txt": [" ".join(rng.choice(WORDS, size=1 + n % 14))], "label": n % 4}
            for n, i in enumerate(ids)}
    (root / "refs.json").write_text(json.dumps(refs))
    create_txtdb(root / "refs.json", root / "txt", img_db=img, min_faces=0,
                 labels=["anger", "happy", "neutral", "sad"], workers=1)
    make_captions(ids, root / "caps.json", seed=5)  # no labels
    create_txtdb(root / "caps.json", root / "caps", workers=1)
    ckpts = {}
    for name, cfg in (("av", preset("tiny", speech_dim=SPEECH_DIM, initializer_range=0.2)),
                      ("text", preset("tiny", face_dim=0)),
                      ("face100", preset("tiny", face_dim=100))):
        torch.manual_seed(0)
        ckpts[name] = save_checkpoint(root / f"{name}.pt", MemoBert(cfg))
    return {"root": root, "ids": ids, "img": img, "speech": speech, "txt": root / "txt",
            "caps": root / "caps", "refs": refs, "ckpt": ckpts["av"], **ckpts}


def run(corpus, out, **kw):
    kw = {"img_db": corpus["img"], "speech_db": corpus["speech"], "device": "cpu", **kw}
    return extract(corpus["ckpt"], corpus["txt"], out, **kw)


def read_lmdb(out, modalities=("pooled", "text", "faces", "speech")) -> dict:
    """{id: {modality: array}} of an lmdb extraction."""
    dbs = {m: FeatureDB(out / m) for m in modalities}
    keys = dbs["pooled"].keys()
    return {k[:-4]: {m: np.asarray(db[k]["features"]) for m, db in dbs.items()} for k in keys}


def read_parquet(path) -> dict:
    t = pq.read_table(path).to_pylist()
    return {r["id"]: r for r in t}


@torch.no_grad()
def alone(model, item, layer=None):
    """The states of one example run on its own (no padding), sliced by direct indexing."""
    b = collate([item])
    out = model(b["input_ids"], b["text_lens"], faces=b.get("faces"),
                face_lens=b.get("face_lens"), speech=b.get("speech"),
                speech_lens=b.get("speech_lens"), output_hidden_states=True)
    h = out.hidden_states[-1 if layer is None else layer][0]
    tl = len(item["input_ids"])
    fl = len(item["faces"]) if "faces" in item else 0
    sl = len(item["speech"]) if "speech" in item else 0
    got = {"pooled": out.pooled.numpy(), "text": h[:tl].numpy()}
    if "faces" in item:
        got["faces"] = h[tl:tl + fl].numpy()
    if "speech" in item:
        got["speech"] = h[tl + fl:tl + fl + sl].numpy()
    return got


@pytest.fixture(scope="module")
def by5(corpus, tmp_path_factory):
    """The reference extraction: float32, batches of 5."""
    out = tmp_path_factory.mktemp("by5") / "feats"
    return run(corpus, out, dtype="float32", batch_size=5), read_lmdb(out)


# ----------------------------------------------------------------------------- layout

def test_lmdb_output_is_feature_databases_with_labels_and_a_record(corpus, tmp_path):
    out = tmp_path / "feats"
    r = run(corpus, out)  # float16, the default
    kept = [i for i in corpus["ids"] if i != corpus["ids"][-1]]  # the last has no speech
    assert r.counts["texts"] == 18 and r.extracted == 17 and r.counts["no_speech"] == 1
    assert r.dropped == 1 and corpus["ids"][-1] in r.report and r.labelled == 17
    assert r.modalities == ["pooled", "text", "faces", "speech"] and r.layer == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "extract.json", "faces", "labels.json", "nbb_faces.json", "nbb_pooled.json",
        "nbb_speech.json", "nbb_text.json", "pooled", "speech", "text"]
    assert not list(tmp_path.glob(".*"))  # no partial, no lock left
    assert check([out]).ok and len(check([out]).databases) == 4
    img, txt, spk = FeatureDB(corpus["img"]), TextDB(corpus["txt"]), FeatureDB(corpus["speech"])
    feats = read_lmdb(out)
    assert list(feats) == sorted(kept, key=lambda i: id_to_key(i).encode())
    for i in kept:
        f = feats[i]
        assert {a.dtype for a in f.values()} == {np.dtype(np.float16)}
        assert f["pooled"].shape == (1, 32)
        assert f["text"].shape == (len(txt[i]["input_ids"]) + 2, 32)  # [CLS] .. [SEP]
        assert f["faces"].shape == (len(img[i]["features"]), 32)
        assert f["speech"].shape == (len(spk[i]["features"]), 32)
    assert any(len(f["faces"]) == 0 for f in feats.values())
    assert json.loads((out / "nbb_faces.json").read_text()) == {
        id_to_key(i): len(img[i]["features"]) for i in kept}
    labels = json.loads((out / "labels.json").read_text())
    assert labels == {i: corpus["refs"][i]["label"] for i in kept}
    info = json.loads((out / "extract.json").read_text())
    assert info["checkpoint"]["path"] == str(corpus["ckpt"].resolve())
    assert len(info["checkpoint"]["sha256"]) == 64 and info["layer"] == 2
    assert info["counts"]["extracted"] == 17 and info["dropped"] == {"no_speech": [
        corpus["ids"][-1]]}
    assert info["label_names"] == ["anger", "happy", "neutral", "sad"]
    assert info["limits"] == {"max_text_len": 510, "max_faces": 36, "max_speech": 64}
    manifest = FeatureDB(out / "faces").manifest
    assert manifest["options"]["max_bb"] == 36 and manifest["arrays"]["features"] == {
        "dtype": "<f2", "shape": [None, 32]}


def test_extracted_faces_are_the_img_db_of_another_training(corpus, by5, tmp_path):
    result, feats = by5
    ds = MemoDataset(corpus["txt"], result.out / "faces", max_text_len=100)
    assert ds.face_dim == 32 and ds.max_faces == 36 and len(ds) == 17
    item = ds[0]
    np.testing.assert_array_equal(item["faces"], feats[item["id"]]["faces"])
    batch = collate([ds[0], ds[1]])
    out = MemoBert(preset("tiny", face_dim=32)).eval()(
        batch["input_ids"], batch["text_lens"], faces=batch["faces"],
        face_lens=batch["face_lens"])  # a model with face_dim = H takes them
    assert out.pooled.shape == (2, 32)
    assert out.layout.lens["faces"].tolist() == [len(ds[0]["faces"]), len(ds[1]["faces"])]


# ----------------------------------------------------------------------------- the states

def test_states_do_not_depend_on_batching(corpus, by5, tmp_path, monkeypatch):
    _, ref = by5
    one = read_lmdb(run(corpus, tmp_path / "one", dtype="float32", batch_size=1).out)
    monkeypatch.setattr(extract_mod, "CHUNK", 4)  # several pools, each written in key order
    budget = run(corpus, tmp_path / "budget", dtype="float32", batch_size=None, max_tokens=90)
    assert budget.extracted == 17
    for other in (one, read_lmdb(budget.out)):
        assert list(other) == list(ref)
        for i, f in ref.items():
            for m, a in f.items():
                np.testing.assert_allclose(other[i][m], a, **TOL, err_msg=f"{i} {m}")


def test_states_equal_the_model_run_on_each_example_alone(corpus, by5):
    _, feats = by5
    model = load_model(corpus["ckpt"]).eval()
    ds = MemoDataset(corpus["txt"], corpus["img"], corpus["speech"], max_text_len=510)
    lengths = set()
    for n in range(len(ds)):
        item = ds[n]
        want, got = alone(model, item), feats[item["id"]]
        assert set(got) == set(want)
        for m in want:
            np.testing.assert_allclose(got[m], want[m], **TOL, err_msg=f"{item['id']} {m}")
        lengths.add((len(item["input_ids"]), len(item["faces"])))
    assert len(lengths) > 10  # the batches of 5 mixed many lengths (padding everywhere)


@pytest.mark.parametrize("layer, index", [(0, 0), (1, 1), (-2, 1), (-3, 0)])
def test_layer_picks_the_hidden_state_and_pooled_stays_final(corpus, by5, tmp_path, layer,
                                                             index):
    _, last = by5
    r = run(corpus, tmp_path / "l", dtype="float32", batch_size=4, layer=layer)
    assert r.layer == index and FeatureDB(r.out / "text").manifest["options"]["layer"] == index
    assert FeatureDB(r.out / "pooled").manifest["options"]["layer"] == 2
    feats = read_lmdb(r.out)
    model = load_model(corpus["ckpt"]).eval()
    ds = MemoDataset(corpus["txt"], corpus["img"], corpus["speech"], max_text_len=510)
    for n in (0, 7):
        item = ds[n]
        want, got = alone(model, item, layer=index), feats[item["id"]]
        for m in ("text", "faces", "speech"):
            np.testing.assert_allclose(got[m], want[m], **TOL)
        np.testing.assert_allclose(got["pooled"], last[item["id"]]["pooled"], **TOL)
        assert not np.allclose(got["text"], last[item["id"]]["text"], atol=1e-3)


# ----------------------------------------------------------------------------- parquet

def test_parquet_holds_the_same_states_ids_labels_and_counts(corpus, by5, tmp_path):
    _, ref = by5
    path = tmp_path / "feats.parquet"
    r = run(corpus, path, fmt="parquet", dtype="float32", batch_size=5)
    assert r.format == "parquet" and path.is_file() and not list(tmp_path.glob(".*"))
    table = pq.read_table(path)
    assert table.column_names == ["id", "label", "pooled", "text", "faces", "speech", "n_text",
                                  "n_faces", "n_speech"]
    info = json.loads(table.schema.metadata[b"memo.extract"])
    assert info["format"] == "parquet" and info["counts"]["extracted"] == 17
    rows = read_parquet(path)
    assert list(rows) == list(ref)
    for i, f in ref.items():
        row = rows[i]
        assert row["label"] == corpus["refs"][i]["label"]
        np.testing.assert_array_equal(np.array(row["pooled"], np.float32), f["pooled"][0])
        for m in ("text", "faces", "speech"):
            got = np.array(row[m], np.float32).reshape(-1, 32)
            np.testing.assert_array_equal(got, f[m])
            assert row[f"n_{m}"] == len(f[m])


def test_text_only_extraction_unlabelled_float16_parquet(corpus, tmp_path):
    """No img_db for a model with faces: text only. Captions carry no label: nulls, and no
    labels.json in the lmdb layout."""
    path = tmp_path / "t.parquet"
    r = extract(corpus["ckpt"], corpus["caps"], path, fmt="parquet", batch_size=8,
                device="cpu")
    assert r.modalities == ["pooled", "text"] and r.labelled == 0 and r.extracted == 18
    table = pq.read_table(path)
    assert table.column_names == ["id", "label", "pooled", "text", "n_text"]
    assert str(table.schema.field("pooled").type) == "list<element: halffloat>"
    assert table.column("label").null_count == 18
    r = extract(corpus["ckpt"], corpus["caps"], tmp_path / "t", batch_size=8, device="cpu")
    assert sorted(p.name for p in r.out.iterdir()) == [
        "extract.json", "nbb_pooled.json", "nbb_text.json", "pooled", "text"]
    rows, feats = read_parquet(path), read_lmdb(r.out, ("pooled", "text"))
    for i, f in feats.items():
        np.testing.assert_array_equal(np.array(rows[i]["text"], np.float16), f["text"])


def test_dropped_and_truncated_texts_are_counted_and_named(corpus, tmp_path):
    txt = TextDB(corpus["txt"])
    long = sorted(i for i in corpus["ids"] if len(txt[i]["input_ids"]) > 6)
    r = run(corpus, tmp_path / "f", max_text_len=6, max_faces=4)
    assert r.counts["too_long"] == len(long) > 0 and r.counts["faces_truncated"] > 0
    assert "longer than max_text_len 6" in r.report and "truncated" in r.report
    feats = read_lmdb(r.out)
    assert not set(long) & set(feats) and len(feats) == r.extracted == 17 - len(long) + (
        corpus["ids"][-1] in long)
    assert max(len(f["faces"]) for f in feats.values()) == 4
    assert max(len(f["text"]) for f in feats.values()) <= 8
    info = json.loads((r.out / "extract.json").read_text())
    assert info["limits"]["max_text_len"] == 6 and info["dropped"]["too_long"]
    assert FeatureDB(r.out / "faces").manifest["options"]["max_bb"] == 4


# ----------------------------------------------------------------------------- the CLI

def test_cli_extract(corpus, tmp_path):
    out = tmp_path / "feats"
    res = CliRunner().invoke(main, [
        "extract", "--checkpoint", str(corpus["ckpt"]), "--txt-db", str(corpus["txt"]),
        "--img-db", str(corpus["img"]), "--speech-db", str(corpus["speech"]), str(out),
        "--layer", "-1", "--batch-size", "4", "--dtype", "float32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "17 segments" in res.output and "pooled, text, faces, speech" in res.output
    assert "layer 2 of 2" in res.output and corpus["ids"][-1] in res.output
    assert check([out]).ok
    res = CliRunner().invoke(main, [
        "extract", "--checkpoint", str(corpus["ckpt"]), "--txt-db", str(corpus["caps"]),
        str(tmp_path / "f.parquet"), "--format", "parquet"])
    assert res.exit_code == 0 and (tmp_path / "f.parquet").is_file(), res.output
    res = CliRunner().invoke(main, [
        "extract", "--checkpoint", str(corpus["ckpt"]), "--txt-db", str(corpus["txt"]),
        str(out)])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "already exists" in \
        res.output


# ----------------------------------------------------------------------------- bad input

def test_missing_or_corrupt_checkpoint_names_the_file(corpus, tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint"):
        extract(tmp_path / "nope.pt", corpus["txt"], tmp_path / "o", device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(corpus["ckpt"].read_bytes()[:500])
    with pytest.raises(CheckpointError, match="bad.pt: cannot read the checkpoint"):
        extract(bad, corpus["txt"], tmp_path / "o", device="cpu")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("layer", [3, -4, 1.5, "last"])
def test_layer_out_of_range(corpus, tmp_path, layer):
    with pytest.raises(ExtractError, match="layer"):
        run(corpus, tmp_path / "o", layer=layer)
    assert not list(tmp_path.iterdir())


def test_existing_output_is_refused_and_left_alone(corpus, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    (tmp_path / "p.parquet").write_text("keep")
    for out, fmt in (("o", "lmdb"), ("p.parquet", "parquet")):
        with pytest.raises(OutputExistsError, match="already exists; delete it or choose"):
            run(corpus, tmp_path / out, fmt=fmt)
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep"
    assert (tmp_path / "p.parquet").read_text() == "keep"


def test_feature_dbs_the_model_cannot_take(corpus, tmp_path):
    with pytest.raises(ExtractError, match="has no faces modality .face_dim is 0.; extract "
                       "without --img-db"):
        extract(corpus["text"], corpus["txt"], tmp_path / "o", img_db=corpus["img"])
    with pytest.raises(ExtractError, match="no speech modality .speech_dim is 0."):
        extract(corpus["face100"], corpus["txt"], tmp_path / "o", speech_db=corpus["speech"])
    with pytest.raises(ExtractError, match=r"342-d, the model of .*face100.pt takes 100-d"):
        extract(corpus["face100"], corpus["txt"], tmp_path / "o", img_db=corpus["img"])
    with pytest.raises(ExtractError, match="max_faces 3 given without its feature database"):
        extract(corpus["ckpt"], corpus["txt"], tmp_path / "o", max_faces=3)
    assert not list(tmp_path.iterdir())


def test_limits_beyond_the_position_tables_and_unknown_settings(corpus, tmp_path):
    o = tmp_path / "o"
    with pytest.raises(ExtractError, match="max_text_len 600 is more than the model takes "
                       r"\(max_text_positions 512"):
        run(corpus, o, max_text_len=600)
    with pytest.raises(ExtractError, match="max_faces 65 .*max_face_positions 64"):
        run(corpus, o, max_faces=65)
    with pytest.raises(ExtractError, match="max_speech must be a count"):
        run(corpus, o, max_speech=-1)
    with pytest.raises(ExtractError, match="unknown format 'csv'"):
        run(corpus, o, fmt="csv")
    with pytest.raises(ExtractError, match="unknown dtype 'float64'"):
        run(corpus, o, dtype="float64")
    with pytest.raises(ExtractError, match="unknown device 'gpu0'"):
        run(corpus, o, device="gpu0")
    with pytest.raises(BatchLimitError, match="max_tokens .* 10 is smaller than example"):
        run(corpus, o, max_tokens=10)
    assert not list(tmp_path.iterdir())


def test_a_failure_midway_publishes_nothing_and_a_stale_partial_is_replaced(
        corpus, tmp_path, monkeypatch):
    calls = []
    real = extract_mod._forward

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real(*args)

    monkeypatch.setattr(extract_mod, "_forward", failing)
    monkeypatch.setattr(extract_mod, "CHUNK", 4)  # the first pool is written before the failure
    for out, fmt in (("o", "lmdb"), ("o.parquet", "parquet")):
        calls.clear()
        with pytest.raises(RuntimeError, match="out of memory"):
            run(corpus, tmp_path / out, fmt=fmt, batch_size=2)
        assert not list(tmp_path.iterdir())
    monkeypatch.setattr(extract_mod, "_forward", real)
    (tmp_path / ".o.partial" / "text").mkdir(parents=True)  # as a killed run leaves it
    r = run(corpus, tmp_path / "o")
    assert r.extracted == 17 and check([r.out]).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_two_texts_with_one_key(corpus, tmp_path):
    """Text databases of other tools may hold ids that differ only by '/' and '-'."""
    txt = shutil.copytree(corpus["caps"], tmp_path / "caps")
    id2len = json.loads((txt / "id2len.json").read_text())
    (txt / "id2len.json").write_text(json.dumps({**id2len, "a/b_1": 3, "a-b_1": 4}))
    with pytest.raises(ExtractError, match="texts 'a/b_1' and 'a-b_1' both belong to segment "
                       "'a-b_1.npz'"):
        extract(corpus["ckpt"], txt, tmp_path / "o", device="cpu")
    assert not (tmp_path / "o").exists()


def test_non_finite_states_are_never_written(corpus, tmp_path):
    model = load_model(corpus["ckpt"])
    with torch.no_grad():
        model.pooler.dense.weight[0, 0] = float("nan")
    broken = save_checkpoint(tmp_path / "nan.pt", model)
    with pytest.raises(ExtractError, match=r"segment '.*': the model of .*nan.pt gives NaN or Inf "
                       "pooled states; its weights are broken"):
        extract(broken, corpus["caps"], tmp_path / "o", device="cpu")
    model = load_model(corpus["ckpt"])
    with torch.no_grad():
        model.embeddings.LayerNorm.weight.mul_(1e6)  # layer 0 states of ~1e6
    big = save_checkpoint(tmp_path / "big.pt", model)
    for fmt, out in (("lmdb", "o"), ("parquet", "o.parquet")):
        with pytest.raises(ExtractError, match="text states exceed the float16 range .*; "
                           "extract with dtype float32"):
            extract(big, corpus["caps"], tmp_path / out, layer=0, fmt=fmt, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt", "nan.pt"]
    r = extract(big, corpus["caps"], tmp_path / "o", layer=0, dtype="float32", device="cpu")
    assert np.abs(read_lmdb(r.out, ("pooled", "text"))[corpus["ids"][0]]["text"]).max() > 1e5


def test_a_second_run_into_the_same_output_is_refused(corpus, tmp_path, monkeypatch):
    import fcntl

    with open(tmp_path / ".o.lock", "w") as held:  # a run in progress holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputExistsError, match="another extraction into .*o is running"):
            run(corpus, tmp_path / "o")
    real = extract_mod._pools

    def meanwhile(*args):
        yield from real(*args)
        (tmp_path / "o").mkdir()  # another process publishes first

    monkeypatch.setattr(extract_mod, "_pools", meanwhile)
    with pytest.raises(OutputExistsError, match="o appeared while extracting .* left alone"):
        run(corpus, tmp_path / "o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no partial, no lock left
    assert not any((tmp_path / "o").iterdir())  # left alone
