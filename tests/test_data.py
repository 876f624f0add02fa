"""MemoDataset, ConcatDataset and collate over tiny databases built in code: [CLS]/[SEP] added,
the feature databases' own arrays, long texts dropped and counted, padding and real lengths,
forked DataLoader workers, a compact (small) pickle."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from conftest import write_npz
from memodb.errors import MemoError
from memodb.feature.imgdb import create_imgdb
from memodb.store.reader import FeatureDB
from memodb.store.textdb import TextDB
from memodb.synth import WORDS, make_h5_corpus, make_lexicon
from memodb.text.txtdb import create_txtdb
from memotrain.data import ConcatDataset, ConcatIndex, DataError, MemoDataset, StringArray, collate
from memotrain.sampler import BucketBatchSampler

LONG = 3  # texts of 30 words, over max_text_len 20
SPEECH_DIM = 16


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    """Face db (20 segments, two without a face), speech db (all but the last segment),
    labelled text db with a lexicon: 3 texts of 30 pieces, the rest 3..14."""
    root = tmp_path_factory.mktemp("data")
    ids = make_h5_corpus(root / "h5", movies=2, segments=10, faces=12, seed=7)
    img = create_imgdb(root / "h5", root / "img", workers=1).path
    for n, i in enumerate(ids[:-1]):
        write_npz(root / "speech_npz" / f"{i}.npz", n=3 + n % 5, dim=SPEECH_DIM, seed=n,
                  confidence=None, soft_labels=None)
    speech = create_imgdb(root / "speech_npz", root / "speech", modality="speech",
                          workers=1).path
    rng = np.random.default_rng(7)
    refs = {i: {"txt": [" ".join(rng.choice(WORDS, size=30 if n < LONG else 3 + n % 12))],
                "label": n % 4} for n, i in enumerate(ids)}
    (root / "refs.json").write_text(json.dumps(refs))
    make_lexicon(root / "lex.tsv")
    create_txtdb(root / "refs.json", root / "txt", img_db=img, min_faces=0,
                 lexicon=root / "lex.tsv", workers=1)
    return {"ids": ids, "img": img, "speech": speech, "txt": root / "txt", "long": ids[:LONG]}


def test_items_carry_cls_sep_and_the_feature_dbs_arrays(dbs):
    ds = MemoDataset(dbs["txt"], dbs["img"], max_text_len=20)
    txt, img = TextDB(dbs["txt"]), FeatureDB(dbs["img"])
    assert len(ds) == 20 - LONG and ds.counts["too_long"] == LONG
    assert ds.counts == {**ds.counts, "texts": 20, "kept": 20 - LONG}
    assert set(ds.dropped["too_long"]) == set(dbs["long"])
    assert "3 longer than max_text_len 20" in ds.report()
    assert ds.max_faces == 36 and ds.face_dim == 342
    assert set(ds.ids) == set(dbs["ids"]) - set(dbs["long"])
    assert ds.lengths.dtype == np.int32
    for i in range(len(ds)):
        item = ds[i]
        ex = txt[item["id"]]
        assert item["input_ids"].tolist() == [101, *ex["input_ids"], 102]
        assert item["word_ids"].tolist() == [-1, *ex["word_ids"], -1]
        assert item["emo_type_ids"].tolist() == [0, *ex["emo_type_ids"], 0]
        assert item["target"] == ex["target"]
        stored = img[item["id"]]
        n = img.nbb()[item["id"] + ".npz"]
        # float16 as stored: the same values, half the bytes through the loader's queue
        assert stored["features"].dtype == np.float16
        assert item["faces"].dtype == np.float16 and item["faces"].shape == (n, 342)
        np.testing.assert_array_equal(item["faces"], stored["features"][:n])
        np.testing.assert_array_equal(item["soft_labels"],
                                      stored["soft_labels"][:n].astype(np.float32))
        assert ds.lengths[i] == len(item["input_ids"]) + n
        assert "speech" not in item
    assert min(ds.face_lens) == 0  # segments without a face are kept by default


def test_faces_truncated_to_max_faces_and_min_faces_drops(dbs):
    full = MemoDataset(dbs["txt"], dbs["img"], max_text_len=20)
    cut = MemoDataset(dbs["txt"], dbs["img"], max_text_len=20, max_faces=5)
    assert list(cut.ids) == list(full.ids)
    assert cut.face_lens.max() == 5
    assert cut.counts["faces_truncated"] == int((full.face_lens > 5).sum()) > 0
    assert "more than max_faces 5 faces (truncated)" in cut.report()
    for i in range(len(cut)):
        a, b = cut[i], full[i]
        np.testing.assert_array_equal(a["faces"], b["faces"][:5])
        assert len(a["soft_labels"]) == len(a["faces"]) == min(5, len(b["faces"]))
    some = MemoDataset(dbs["txt"], dbs["img"], max_text_len=20, min_faces=1)
    assert some.counts["too_few_faces"] == int((full.face_lens == 0).sum()) > 0
    assert some.face_lens.min() >= 1


def test_speech_db_adds_speech_and_drops_texts_without_it(dbs):
    ds = MemoDataset(dbs["txt"], dbs["img"], dbs["speech"], max_text_len=100)
    sp = FeatureDB(dbs["speech"])
    assert ds.counts["no_speech"] == 1 and ds.dropped["no_speech"] == [dbs["ids"][-1]]
    assert len(ds) == 19 and ds.max_speech == 64 and ds.speech_dim == SPEECH_DIM
    for i in range(len(ds)):
        item = ds[i]
        assert item["speech"].dtype == np.float16
        np.testing.assert_array_equal(item["speech"], sp[item["id"]]["features"])
        assert ds.lengths[i] == len(item["input_ids"]) + len(item["faces"]) + len(
            item["speech"])
    text_only = MemoDataset(dbs["txt"], speech_db=dbs["speech"], max_text_len=100)
    assert "faces" not in text_only[0] and text_only.face_lens is None
    b = collate([text_only[i] for i in range(3)])
    assert "faces" not in b and "face_lens" not in b and b["speech"].shape[2] == SPEECH_DIM


def test_collate_pads_every_modality_and_keeps_real_lengths(dbs):
    ds = MemoDataset(dbs["txt"], dbs["img"], dbs["speech"], max_text_len=100)
    items = [ds[i] for i in range(6)]
    b = collate(items)
    B = 6
    tl = [len(it["input_ids"]) for it in items]
    fl = [len(it["faces"]) for it in items]
    sl = [len(it["speech"]) for it in items]
    assert b["input_ids"].shape == (B, max(tl)) and b["input_ids"].dtype == torch.long
    assert b["text_lens"].tolist() == tl and b["text_lens"].dtype == torch.long
    assert b["faces"].shape == (B, max(fl), 342) and b["faces"].dtype == torch.float16
    assert b["speech"].dtype == torch.float16 and b["soft_labels"].dtype == torch.float32
    assert b["face_lens"].tolist() == fl and b["soft_labels"].shape == (B, max(fl), 8)
    assert b["speech"].shape == (B, max(sl), SPEECH_DIM) and b["speech_lens"].tolist() == sl
    assert b["word_ids"].shape == b["emo_type_ids"].shape == b["input_ids"].shape
    assert b["targets"].tolist() == [it["target"] for it in items]
    assert b["ids"] == [it["id"] for it in items]
    for k, it in enumerate(items):
        t, f, s = tl[k], fl[k], sl[k]
        assert b["input_ids"][k, :t].tolist() == it["input_ids"].tolist()
        assert not b["input_ids"][k, t:].any() and (b["word_ids"][k, t:] == -1).all()
        assert torch.equal(b["faces"][k, :f], torch.from_numpy(it["faces"]))
        assert not b["faces"][k, f:].any() and not b["soft_labels"][k, f:].any()
        assert torch.equal(b["speech"][k, :s], torch.from_numpy(it["speech"]))
        assert not b["speech"][k, s:].any()


def test_collate_targets_and_errors():
    def item(n, target=None, faces=2, dim=4):
        it = {"id": f"x{n}", "input_ids": np.array([101] + [7] * n + [102]),
              "word_ids": np.array([-1, *range(n), -1]),
              "faces": np.ones((faces, dim), np.float32)}
        if target is not None:
            it["target"] = target
        return it

    assert collate([item(1), item(2)])["targets"] is None
    assert collate([item(1, 3), item(2)])["targets"].tolist() == [3, -100]
    b = collate([item(1, faces=0), item(2, faces=0)])
    assert b["faces"].shape == (2, 0, 4) and b["face_lens"].tolist() == [0, 0]
    assert "soft_labels" not in b
    with pytest.raises(DataError, match="different dimensions"):
        collate([item(1, dim=4), item(2, dim=5)])
    with pytest.raises(DataError, match="empty batch"):
        collate([])


def test_collate_keeps_the_stored_float_dtype():
    """float16 frames stay float16 (half the bytes through the worker queue); a batch mixing
    them with float32 frames (a database written by memo extract --dtype float32) is float32,
    every value exact."""
    def item(n, dtype):
        return {"id": f"x{n}", "input_ids": np.array([101, 7, 102]),
                "word_ids": np.array([-1, 0, -1]),
                "faces": (np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 7).astype(dtype)}

    half = [item(2, np.float16), item(1, np.float16)]
    assert collate(half)["faces"].dtype == torch.float16
    mixed = [item(2, np.float16), item(1, np.float32)]
    b = collate(mixed)
    assert b["faces"].dtype == torch.float32
    for k, it in enumerate(mixed):
        assert torch.equal(b["faces"][k, :len(it["faces"])],
                           torch.from_numpy(it["faces"].astype(np.float32)))


def test_forked_dataloader_workers_read_the_same_batches(dbs):
    ds = MemoDataset(dbs["txt"], dbs["img"], max_text_len=20)
    ds[0]  # readers opened in the parent before the fork must not leak into the workers
    sampler = BucketBatchSampler(ds.lengths, batch_size=4, max_tokens=120, seed=1,
                                 ids=ds.ids.__getitem__)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=2, multiprocessing_context="fork")
    got = list(loader)
    want = [collate([ds[i] for i in idx]) for idx in sampler.batches()]
    assert len(got) == len(want) == len(sampler)
    seen = []
    for g, w in zip(got, want):
        assert g["ids"] == w["ids"]
        seen += g["ids"]
        for k in ("input_ids", "text_lens", "faces", "face_lens", "soft_labels", "targets"):
            assert torch.equal(g[k], w[k]), k
        tokens = (g["text_lens"] + g["face_lens"]).max() * len(g["ids"])
        assert 1 <= len(g["ids"]) <= 4 and tokens <= 120
    assert sorted(seen) == sorted(ds.ids)


def test_dataset_pickles_small_and_reads_after_unpickling(dbs):
    ds = MemoDataset(dbs["txt"], dbs["img"], dbs["speech"], max_text_len=20)
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 3000 + 64 * len(ds), len(blob)
    assert not any(isinstance(v, (dict, list, set)) and len(v) > 10
                   for v in vars(ds).values() if not isinstance(v, np.ndarray))
    assert all(isinstance(v, np.ndarray) for v in (ds.text_lens, ds.face_lens,
                                                   ds.speech_lens))
    again = pickle.loads(blob)
    a, b = again[3], ds[3]
    assert a["id"] == b["id"] and np.array_equal(a["faces"], b["faces"])


def test_index_scales_without_python_objects_per_example():
    ids = [f"No{i // 1000:04d}.Some_Movie_{i}" for i in range(200_000)]
    sa = StringArray(ids)
    assert len(sa) == len(ids) and sa[123_456] == ids[123_456] and sa[-1] == ids[-1]
    assert len(pickle.dumps(sa)) < sum(map(len, ids)) + 8 * len(ids) + 1000


def test_concat_index_and_dataset(dbs):
    a = MemoDataset(dbs["txt"], dbs["img"], max_text_len=20, name="a")
    b = MemoDataset(dbs["txt"], dbs["img"], max_text_len=100, max_faces=4, name="b")
    cat = ConcatDataset([a, b])
    assert len(cat) == len(a) + len(b)
    np.testing.assert_array_equal(cat.lengths, np.concatenate([a.lengths, b.lengths]))
    assert cat.index.locate(0) == (0, 0) and cat.index.locate(len(a)) == (1, 0)
    assert cat.index.locate(-1) == (1, len(b) - 1)
    assert cat[len(a) + 2]["id"] == b[2]["id"]
    assert len(cat[len(a) + 2]["faces"]) <= 4
    d, j = cat.index.locate_many([0, len(a) - 1, len(a), len(cat) - 1])
    assert d.tolist() == [0, 0, 1, 1] and j.tolist() == [0, len(a) - 1, 0, len(b) - 1]
    idx = ConcatIndex([3, 0, 2])
    assert [idx.locate(i) for i in range(5)] == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1)]
    assert idx.global_index(2, 1) == 4
    with pytest.raises(IndexError):
        idx.locate(5)


def test_nothing_left_is_a_clear_error(dbs):
    with pytest.raises(DataError, match="no example is left") as err:
        MemoDataset(dbs["txt"], dbs["img"], max_text_len=1)
    assert isinstance(err.value, MemoError)
    with pytest.raises(DataError, match="max_text_len"):
        MemoDataset(dbs["txt"], max_text_len=0)


@pytest.mark.parametrize("change", [{"v_range": "999-30522"}, {"MASK": None},
                                    {"v_range": [999]}])
def test_meta_json_without_token_ids_is_a_clear_error(dbs, tmp_path, change):
    import shutil
    copy = tmp_path / "txt"
    shutil.copytree(dbs["txt"], copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(DataError, match="meta.json: MASK .* are not token ids; rebuild"):
        MemoDataset(copy, max_text_len=20)
