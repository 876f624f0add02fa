import json
import multiprocessing as mp
import pickle

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from memodb.checks.run import check
from memodb.feature.imgdb import create_imgdb
from memodb.store.reader import FeatureDB


def make_foreign_db(root, segments: dict, nbb: dict | None = None, compressed=False):
    """A database as the original tools wrote it: no manifest, arbitrary put order."""
    import io

    path = root / "feat_th0.5_max36_min10"
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for key, arrays in segments.items():
            if compressed:
                buf = io.BytesIO()
                np.savez_compressed(buf, **arrays)
                value = buf.getvalue()
            else:
                value = msgpack.dumps(arrays, default=msgpack_numpy.encode, use_bin_type=True)
            txn.put(key.encode(), value)
        txn.put(b"__keys__", json.dumps(list(segments)).encode())
    env.close()
    if nbb is not None:
        (root / "nbb_th0.5_max36_min10.json").write_text(json.dumps(nbb))
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_reads_foreign_databases_and_applies_nbb(tmp_path, compressed):
    feats = np.arange(5 * 4, dtype=np.float16).reshape(5, 4)
    path = make_foreign_db(tmp_path, {"b_2.npz": {"features": feats, "conf": np.ones(5, np.float16)},
                                      "a_1.npz": {"features": feats[:2], "conf": np.ones(2, np.float16)}},
                           nbb={"b_2.npz": 3, "a_1.npz": 2}, compressed=compressed)
    db = FeatureDB(path)
    assert not db.memo_built and len(db) == 2 and "a_1" in db and "zz_1" not in db
    got = db["b_2"]
    assert got["features"].shape == (3, 4) and got["features"].dtype == np.float16
    np.testing.assert_array_equal(got["features"], feats[:3])


def test_lookup_by_id_key_or_raw_id_with_slash(tmp_path):
    path = make_foreign_db(tmp_path, {"val-dia0_utt0.npz": {"features": np.ones((1, 2), np.float16)}})
    db = FeatureDB(path)
    assert db["val/dia0_utt0"]["features"].shape == (1, 2)
    assert db["val-dia0_utt0.npz"]["features"].shape == (1, 2)


def _read_in_child(db, keys, q):
    q.put({k: float(db[k]["features"].astype(np.float32).sum()) for k in keys})


def test_safe_in_forked_workers_and_picklable(h5_root, tmp_path):
    r = create_imgdb(h5_root, tmp_path / "out", workers=1)
    db = FeatureDB(r.path)
    keys = db.keys()
    expect = {k: float(db[k]["features"].astype(np.float32).sum()) for k in keys}  # env open
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_read_in_child, args=(db, keys, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(res == expect for res in results)
    clone = pickle.loads(pickle.dumps(db))
    assert clone.path == db.path and len(clone) == len(db)
    assert check([r.path]).ok  # the parent's environment still works after the children
