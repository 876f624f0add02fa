import json

import lmdb
import numpy as np
import pyarrow.parquet as pq

from memodb.checks.run import check
from memodb.describe import feature_stats
from memodb.feature.imgdb import create_imgdb
from memodb.store.codec import encode_value
from memodb.store.reader import close_all


def test_clean_database_passes(h5_root, tmp_path):
    r = create_imgdb(h5_root, tmp_path / "out", workers=2)
    report = check([tmp_path / "out"], workers=2)  # a folder of databases works too
    assert report.ok and report.exit_code == 0
    (db,) = report.databases
    assert db.counts["segments"] == 20 and db.counts["empty"] == r.counts["empty"] == 2
    assert json.loads(report.to_json())["ok"] is True


def test_every_problem_is_named_by_segment(h5_root, tmp_path):
    r = create_imgdb(h5_root, tmp_path / "out", workers=1)
    close_all()
    env = lmdb.open(str(r.path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(b"No0000.Movie_0_1.npz", b"\x93garbage")
        txn.put(b"No0000.Movie_0_2.npz", encode_value(
            {"features": np.full((2, 342), np.inf, np.float16), "confidence": np.ones(3, np.float16)}))
        txn.put(b"No0000.Movie_0_3.npz", encode_value({"features": np.ones((1, 300), np.float16)}))
        txn.put(b"zz_unlisted.npz", encode_value({"features": np.ones((1, 342), np.float16)}))
    env.close()
    report = check([r.path], workers=2)
    assert report.exit_code == 1
    found = {(p.code, p.segment) for p in report.databases[0].problems}
    for expected in [("undecodable", "No0000.Movie_0_1.npz"),
                     ("not_finite", "No0000.Movie_0_2.npz"),
                     ("length_mismatch", "No0000.Movie_0_2.npz"),
                     ("nbb_mismatch", "No0000.Movie_0_3.npz"),
                     ("layout_mismatch", "No0000.Movie_0_3.npz"),
                     ("keys_unlisted", "zz_unlisted.npz"),
                     ("nbb_unlisted", "zz_unlisted.npz"),
                     ("checksum_mismatch", None), ("count_mismatch", None)]:
        assert expected in found, expected


def test_missing_path_and_partial_build(tmp_path):
    (tmp_path / ".feat_th0.5_max36_min0.partial").mkdir()
    report = check([tmp_path])
    kinds = [d.kind for d in report.databases]
    assert "missing" in kinds and "partial" in kinds and report.exit_code == 1


def test_stats_and_parquet(npz_dir, tmp_path):
    r = create_imgdb(npz_dir, tmp_path / "out", workers=1)
    s = feature_stats(r.path, parquet=tmp_path / "rows.parquet")
    # frame counts of the six segments: 4, 5, 6, 0, 8, 9
    assert s["segments"] == 6 and s["empty"] == 1 and s["nbb"]["max"] == 9
    assert s["nbb"]["median"] == 5.5 and abs(s["nbb"]["mean"] - 32 / 6) < 1e-9
    assert s["arrays"]["features"] == {"dtype": "<f2", "dims": [342]}
    rows = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert rows[0] == {"key": "movieA_1.npz", "segment_id": "movieA_1", "faces": 4}
    assert len(rows) == 6
