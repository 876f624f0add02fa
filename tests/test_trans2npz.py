import numpy as np

from memodb.feature.trans2npz import trans2npz


def test_converts_every_segment_with_memo_dtypes(h5_root, h5_ids, tmp_path):
    r = trans2npz(h5_root, tmp_path / "npz", workers=2)
    assert r.written == len(h5_ids) and r.skipped == 0
    files = sorted(p.name for p in (tmp_path / "npz").glob("*.npz"))
    assert files == sorted(i + ".npz" for i in h5_ids)
    with np.load(tmp_path / "npz" / f"{h5_ids[0]}.npz") as z:
        assert z["features"].dtype == np.float16 and z["features"].shape[1] == 342
        assert z["soft_labels"].dtype == np.float16 and z["confidence"].dtype == np.float16
        assert z["frame_idxs"].dtype == np.int32  # float16 corrupts frames above 2048
        assert len(z["features"]) == len(z["confidence"])


def test_rerun_skips_and_finishes(h5_root, h5_ids, tmp_path):
    out = tmp_path / "npz"
    trans2npz(h5_root, out, workers=1)
    for p in sorted(out.glob("*.npz"))[:5]:
        p.unlink()
    r = trans2npz(h5_root, out, workers=1)
    assert (r.written, r.skipped) == (5, len(h5_ids) - 5)


def test_reports_list_mismatches(h5_root, tmp_path):
    meta = tmp_path / "meta"
    lst = meta / "No0000.Movie_0" / "has_active_spk.txt"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join(lines[1:] + ["No0000.Movie_0/77"]) + "\n")
    r = trans2npz(h5_root, tmp_path / "npz", meta_dir=meta, workers=1)
    assert r.missing_in_h5 == ["No0000.Movie_0_77"]
    assert r.missing_in_list == ["No0000.Movie_0_1"]


def test_feature_choice(h5_root, h5_ids, tmp_path):
    trans2npz(h5_root, tmp_path / "npz", feature="trans2", workers=1)
    with np.load(tmp_path / "npz" / f"{h5_ids[0]}.npz") as z:
        assert z["features"].shape[1] == 300
