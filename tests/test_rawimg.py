import numpy as np
from PIL import Image

from memodb.checks.run import check
from memodb.feature.rawimg import rawimg_db, read_openface_csv
from memodb.store.reader import FeatureDB


def test_crops_gray_resized_normalised_and_recorded(openface_dir, tmp_path):
    r = rawimg_db(openface_dir, tmp_path / "raw", size=32, mean=100.0, std=50.0, workers=1)
    norm = r.manifest["normalization"]
    assert norm == {"mean": 100.0, "std": 50.0, "computed": False,
                    "formula": "(gray - mean) / std"}
    db = FeatureDB(r.path)
    clip = "No0000.Movie_0_1"
    got = db[clip]
    frames, faces, conf = read_openface_csv(openface_dir / f"{clip}.csv")
    kept = frames[conf.astype(np.float16).astype(np.float64) > 0.5][:36]
    assert got["frame_idxs"].tolist() == kept.tolist()
    assert got["features"].shape == (len(kept), 32, 32) and got["features"].dtype == np.float16
    img = Image.open(openface_dir / f"{clip}_aligned" / f"frame_det_00_{kept[0]:06d}.bmp")
    expect = (np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), np.float32) - 100) / 50
    np.testing.assert_allclose(got["features"][0].astype(np.float32), expect, atol=2e-3)
    assert check([r.path]).ok


def test_mean_std_computed_over_kept_crops(openface_dir, tmp_path):
    r = rawimg_db(openface_dir, tmp_path / "raw", size=16, workers=2)
    norm = r.manifest["normalization"]
    assert norm["computed"] and 0 < norm["mean"] < 255 and norm["std"] > 0
    db = FeatureDB(r.path)
    allpix = np.concatenate([db[k]["features"].astype(np.float64).ravel() for k in db.keys()])
    assert abs(allpix.mean()) < 1e-2 and abs(allpix.std() - 1) < 1e-2
    again = rawimg_db(openface_dir, tmp_path / "raw", size=16, workers=1)
    assert again.skipped
