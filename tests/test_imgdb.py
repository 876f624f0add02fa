import json

import lmdb
import msgpack
import msgpack_numpy
import numpy as np

from conftest import write_npz
from memodb.feature.imgdb import create_imgdb
from memodb.feature.sources import open_source
from memodb.store.manifest import read_manifest
from memodb.store.reader import FeatureDB, close_all


def read_like_original(db_dir, key):
    """What the UNITER / MEmoBERT readers do: msgpack-numpy patched loads of txn.get(key)."""
    env = lmdb.open(str(db_dir), readonly=True, create=False, lock=False)
    with env.begin() as txn:
        keys = json.loads(txn.get(b"__keys__"))
        value = msgpack.loads(txn.get(key.encode()), raw=False, object_hook=msgpack_numpy.decode)
    env.close()
    return keys, value


def test_compatible_layout(h5_root, h5_ids, tmp_path):
    r = create_imgdb(h5_root, tmp_path / "out", conf_th=0.5, max_bb=36, workers=1)
    assert r.path == tmp_path / "out" / "feat_th0.5_max36_min0"
    nbb = json.loads((tmp_path / "out" / "nbb_th0.5_max36_min0.json").read_text())
    assert sorted(nbb) == sorted(i + ".npz" for i in h5_ids)
    keys, value = read_like_original(r.path, h5_ids[0] + ".npz")
    assert keys == sorted(keys) and len(keys) == len(h5_ids)
    assert set(value) == {"features", "soft_labels", "confidence", "frame_idxs"}
    assert value["features"].dtype == np.float16 and value["features"].shape[1] == 342
    assert value["frame_idxs"].dtype == np.int32
    assert len(value["features"]) == nbb[h5_ids[0] + ".npz"]
    m = read_manifest(r.path)
    assert m["kind"] == "feature" and m["counts"]["segments"] == len(h5_ids)
    assert m["arrays"]["features"] == {"dtype": "<f2", "shape": [None, 342]}


def test_frame_selection_strict_threshold_time_order_then_max_bb(tmp_path):
    conf = np.array([0.5, 0.9, 0.2, 0.51, 0.7, 0.95, 0.8], np.float16)
    src = write_npz(tmp_path / "npz" / "m_1.npz", n=7, conf=conf)
    r = create_imgdb(tmp_path / "npz", tmp_path / "out", conf_th=0.5, max_bb=3, workers=1)
    got = FeatureDB(r.path)["m_1"]
    assert got["frame_idxs"].tolist() == [1, 3, 4]  # 0.5 is not > 0.5; first 3 in time order
    np.testing.assert_array_equal(got["features"], src["features"][[1, 3, 4]])


def test_no_confidence_takes_first_max_bb(tmp_path):
    write_npz(tmp_path / "npz" / "s_1.npz", n=80, dim=130, confidence=None)
    r = create_imgdb(tmp_path / "npz", tmp_path / "out", modality="speech", workers=1)
    assert r.path.name == "feat_th1.0_max64_min0"
    assert len(FeatureDB(r.path)["s_1"]["features"]) == 64


def test_threshold_zero_names_normalised(npz_dir, tmp_path):
    assert create_imgdb(npz_dir, tmp_path / "o", conf_th=0, workers=1).path.name == \
        "feat_th0.0_max36_min0"


def test_min_bb_really_filters(npz_dir, tmp_path):
    r = create_imgdb(npz_dir, tmp_path / "out", min_bb=6, workers=1)
    kept = FeatureDB(r.path).keys()
    assert kept == ["movieA_3.npz", "movieA_5.npz", "movieA_6.npz"]  # 6, 8, 9 frames
    assert r.counts["dropped_below_min_bb"] == 3


def test_deterministic_whatever_the_workers_and_h5_equals_npz(h5_root, tmp_path):
    from memodb.feature.trans2npz import trans2npz

    a = create_imgdb(h5_root, tmp_path / "a", workers=1)
    b = create_imgdb(h5_root, tmp_path / "b", workers=2)
    trans2npz(h5_root, tmp_path / "npz", workers=2)
    c = create_imgdb(tmp_path / "npz", tmp_path / "c", workers=2)
    data = [(x.path / "data.mdb").read_bytes() for x in (a, b, c)]
    assert data[0] == data[1] == data[2]
    assert a.manifest["checksum"] == b.manifest["checksum"] == c.manifest["checksum"]
    assert a.nbb_path.read_bytes() == c.nbb_path.read_bytes()


def test_trans_features_from_h5(h5_root, tmp_path):
    r = create_imgdb(h5_root, tmp_path / "out", feature="trans1", workers=1)
    assert r.manifest["arrays"]["features"]["shape"] == [None, 216]


def test_segment_layout_h5(tmp_path):
    import h5py

    from memodb.synth import segment_arrays

    rng = np.random.default_rng(0)
    for spk, vid, seg, n in [("Ses01F", "imp01", "F000", 5), ("Ses01F", "imp01", "M001", 0)]:
        p = tmp_path / "h5" / spk / vid / f"{seg}.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(p, "w") as f:
            if n:  # a segment without faces has no datasets at all
                for k, v in segment_arrays(rng, n).items():
                    f.create_dataset(k, data=v)
    assert open_source(tmp_path / "h5").kind == "h5-segment"
    r = create_imgdb(tmp_path / "h5", tmp_path / "out", conf_th=0.0, workers=1)
    db = FeatureDB(r.path)
    assert db.keys() == ["Ses01F#imp01#F000.npz", "Ses01F#imp01#M001.npz"]
    empty = db["Ses01F#imp01#M001"]
    assert empty["features"].shape == (0, 342) and empty["soft_labels"].shape == (0, 8)
    assert r.counts["empty"] == 1


def test_h5_storage_forms_read_as_h5py_reads_them(tmp_path):
    """Every way a dataset can be stored (byte order, float64, chunked + gzip, compact, a
    fill value never written, a dtype that changes between segments of one file) loads the
    values h5py's own read gives (the reader reads plain datasets' bytes directly)."""
    import h5py

    from memodb.feature.sources import MOVIE_H5, close_h5_files
    from memodb.synth import segment_arrays

    rng = np.random.default_rng(3)
    movie = "No0001.Movie_1"
    (tmp_path / "h5" / movie).mkdir(parents=True)
    forms = [{}, {"dtype": ">f4"}, {"dtype": "<f8"}, {"chunks": True, "compression": "gzip"},
             {}, {"dtype": ">f4", "chunks": True}, {"compact": True}, {}]
    with h5py.File(tmp_path / "h5" / movie / MOVIE_H5, "w") as f:
        for s, form in enumerate(forms, 1):
            g = f.create_group(f"{movie}/{s}")
            for k, v in segment_arrays(rng, 3 + s).items():
                if k.startswith("trans"):
                    continue
                if form.get("compact") and k != "feat":  # feat is too big for compact
                    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                    dcpl.set_layout(h5py.h5d.COMPACT)
                    space = h5py.h5s.create_simple(v.shape)
                    ds = h5py.h5d.create(g.id, k.encode(), h5py.h5t.py_create(v.dtype), space,
                                         dcpl=dcpl)
                    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(v))
                elif k == "frame_idx" and s == 5:  # big-endian integers
                    g.create_dataset(k, data=v.astype(">i8"))
                elif k == "pred" and s == 8:  # allocated late, never written: fill values
                    g.create_dataset(k, shape=v.shape, dtype="f4", fillvalue=0.125)
                else:
                    opts = {o: x for o, x in form.items() if o != "compact"}
                    g.create_dataset(k, data=v, **opts)
    src = open_source(tmp_path / "h5")
    with h5py.File(tmp_path / "h5" / movie / MOVIE_H5, "r") as f:
        for seg in src.list_segments():
            got = src.load(seg)
            names = {"feat": "features", "pred": "soft_labels", "confidence": "confidence",
                     "frame_idx": "frame_idxs"}
            want = {names[k]: d[()] for k, d in f[seg.group].items()}
            assert got.keys() == want.keys()
            for k, a in want.items():
                assert got[k].dtype == a.dtype and got[k].shape == a.shape, (seg.key, k)
                assert got[k].tobytes() == a.tobytes(), (seg.key, k)
    close_h5_files()
    r = create_imgdb(tmp_path / "h5", tmp_path / "out", conf_th=0.0, workers=1)
    assert r.counts["segments"] == len(forms)


def test_map_grows_from_small_start(tmp_path, monkeypatch):
    import memodb.store.writer as w

    monkeypatch.setattr(w, "INITIAL_MAP", 64 << 10)
    monkeypatch.setattr(w, "TXN_BYTES", 16 << 10)
    for i in range(30):
        write_npz(tmp_path / "npz" / f"m_{i}.npz", n=30, seed=i)
    r = create_imgdb(tmp_path / "npz", tmp_path / "out", workers=1)
    assert len(FeatureDB(r.path)) == 30
    close_all()
    assert (r.path / "data.mdb").stat().st_size < 4 << 20  # no huge sparse file
    from memodb.checks.run import check

    assert check([r.path]).ok
