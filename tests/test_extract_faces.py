"""Face features from the raw-crop database with a face CNN (memotrain.recipes.extract_faces)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memo.cli import main
from memodb.checks.run import check
from memodb.errors import BadInputError, OutputExistsError
from memodb.feature.rawimg import rawimg_db
from memodb.store.reader import FeatureDB
from memodb.synth import make_openface
from memotrain.checkpoint import CheckpointError, load_face_cnn, save_face_cnn
from memotrain.config import ConfigError
from memotrain.facecnn import DenseNetBC
from memotrain.recipes.extract_faces import extract_face_features

TINY = {"growth": 4, "blocks": [2, 2, 2], "init_features": 8}
EMPTY_CLIP = "No0000.Movie_0_9"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def raw_db(tmp_path):
    """Raw 64x64 crops of 3 OpenFace clips plus one clip whose faces all fail --conf-th."""
    src = tmp_path / "openface"
    make_openface(src, clips=3, frames=9, size=48, seed=4)
    (src / f"{EMPTY_CLIP}_aligned").mkdir()
    (src / f"{EMPTY_CLIP}.csv").write_text("frame, face_id, timestamp, confidence, success\n"
                                           "1, 0, 0.1, 0.2, 1\n2, 0, 0.2, 0.1, 1\n")
    return rawimg_db(src, tmp_path / "raw", size=64, workers=1).path


def make_cnn(path, seed=0, with_norm=True, **kw):
    torch.manual_seed(seed)
    m = DenseNetBC(**{**TINY, **kw})
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    if with_norm:
        m.normalization = {"mean": 90.0, "std": 60.0}
    m.classes = [f"c{i}" for i in range(m.config["n_classes"])]
    return save_face_cnn(path, m)


@pytest.fixture
def cnn(tmp_path):
    return make_cnn(tmp_path / "cnn.pt")


def test_features_are_the_cnn_on_each_crop_alone(raw_db, cnn, tmp_path):
    r = extract_face_features(cnn, raw_db, tmp_path / "faces", batch_size=5, device="cpu")
    assert r.path == tmp_path / "faces" / raw_db.name  # the raw db's frame selection
    assert r.nbb_path == tmp_path / "faces" / "nbb_th0.5_max36_min0.json"
    raw, out = FeatureDB(raw_db), FeatureDB(r.path)
    model = load_face_cnn(cnn).eval()
    assert out.keys() == raw.keys() and EMPTY_CLIP + ".npz" in out.keys()
    nbb = json.loads(r.nbb_path.read_text())
    for key in raw.keys():
        crops, got = raw[key], out[key]
        assert list(got) == ["features", "soft_labels", "confidence", "frame_idxs"]
        assert nbb[key] == len(crops["features"]) == len(got["features"])
        np.testing.assert_array_equal(got["confidence"], crops["confidence"])
        np.testing.assert_array_equal(got["frame_idxs"], crops["frame_idxs"])
        assert got["features"].dtype == np.float16 and got["features"].shape[1:] == (16,)
        assert got["soft_labels"].dtype == np.float16 and got["soft_labels"].shape[1:] == (8,)
        for i, crop in enumerate(crops["features"]):
            with torch.no_grad():
                x = torch.from_numpy(crop.astype(np.float32))[None]
                f = model.features_of(x)
                p = torch.softmax(model(x), -1)
            np.testing.assert_allclose(got["features"][i].astype(np.float32), f[0].numpy(),
                                       rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(got["soft_labels"][i].astype(np.float32), p[0].numpy(),
                                       rtol=2e-3, atol=1e-3)
    assert nbb[EMPTY_CLIP + ".npz"] == 0
    assert out[EMPTY_CLIP]["features"].shape == (0, 16)
    assert out[EMPTY_CLIP]["soft_labels"].shape == (0, 8)
    m = r.manifest
    assert m["kind"] == "feature" and m["counts"]["segments"] == 4 and m["counts"]["empty"] == 1
    assert m["options"] == {"conf_th": 0.5, "max_bb": 36, "min_bb": 0, "modality": "face",
                            "feature": "feat", "normalization": "corpus"}
    assert m["cnn"]["config"]["blocks"] == [2, 2, 2] and m["cnn"]["classes"][0] == "c0"
    assert m["arrays"]["features"] == {"dtype": "<f2", "shape": [None, 16]}
    assert check([r.path]).ok
    # the batching does not change the values
    one = extract_face_features(cnn, raw_db, tmp_path / "one", batch_size=1, device="cpu")
    for key in raw.keys():
        np.testing.assert_allclose(FeatureDB(one.path)[key]["features"].astype(np.float32),
                                   out[key]["features"].astype(np.float32), atol=2e-3)


def test_earlier_block_features(raw_db, cnn, tmp_path):
    r = extract_face_features(cnn, raw_db, tmp_path / "t1", feature="trans1", device="cpu")
    db = FeatureDB(r.path)
    key = db.keys()[0]
    got = db[key]
    assert list(got) == ["features", "confidence", "frame_idxs"]  # no soft labels
    model = load_face_cnn(cnn).eval()
    x = torch.from_numpy(FeatureDB(raw_db)[key]["features"].astype(np.float32))
    with torch.no_grad():
        expect = model.features_of(x, 1).numpy()
    assert got["features"].shape == (len(x), model.block_channels[0])
    np.testing.assert_allclose(got["features"].astype(np.float32), expect, rtol=2e-3,
                               atol=2e-3)
    assert r.manifest["options"]["feature"] == "trans1" and check([r.path]).ok
    with pytest.raises(ConfigError, match="unknown face feature 'trans3'"):
        extract_face_features(cnn, raw_db, tmp_path / "t3", feature="trans3", device="cpu")


def test_renormalised_to_the_cnn_statistics(raw_db, cnn, tmp_path):
    r = extract_face_features(cnn, raw_db, tmp_path / "f", normalization="cnn", device="cpu")
    raw = FeatureDB(raw_db)
    norm = raw.manifest["normalization"]
    key = raw.keys()[0]
    gray = raw[key]["features"].astype(np.float64) * norm["std"] + norm["mean"]
    x = torch.from_numpy(((gray - 90.0) / 60.0).astype(np.float32))
    with torch.no_grad():
        expect = load_face_cnn(cnn).eval().features_of(x).numpy()
    np.testing.assert_allclose(FeatureDB(r.path)[key]["features"].astype(np.float32), expect,
                               rtol=2e-3, atol=2e-3)
    assert r.manifest["input_normalization"]["mode"] == "cnn"
    bare = make_cnn(tmp_path / "bare.pt", with_norm=False)
    with pytest.raises(BadInputError, match="bare.pt: the checkpoint records no training mean"):
        extract_face_features(bare, raw_db, tmp_path / "g", normalization="cnn", device="cpu")


def test_rerun_is_up_to_date_and_another_cnn_is_refused(raw_db, cnn, tmp_path):
    first = extract_face_features(cnn, raw_db, tmp_path / "f", device="cpu")
    again = extract_face_features(cnn, raw_db, tmp_path / "f", device="cpu")
    assert again.skipped and again.manifest["checksum"] == first.manifest["checksum"]
    other = make_cnn(tmp_path / "other.pt", seed=9)
    with pytest.raises(OutputExistsError, match="already holds a different feature database"):
        extract_face_features(other, raw_db, tmp_path / "f", device="cpu")
    replaced = extract_face_features(other, raw_db, tmp_path / "f", device="cpu", replace=True)
    assert not replaced.skipped and replaced.manifest["checksum"] != first.manifest["checksum"]
    assert check([replaced.path]).ok


def test_bad_input_is_named(raw_db, cnn, tmp_path, feature_db):
    with pytest.raises(BadInputError, match=r"is a feature database, not a raw face-crop"):
        extract_face_features(cnn, feature_db, tmp_path / "o", device="cpu")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(BadInputError, match=r"nothing: not a readable database"):
        extract_face_features(cnn, tmp_path / "nothing", tmp_path / "o", device="cpu")
    big = make_cnn(tmp_path / "big.pt", image_size=96)
    with pytest.raises(BadInputError, match=r"crops are 64x64 but the face CNN of .*big.pt "
                       r"takes 96x96 .*--size 96"):
        extract_face_features(big, raw_db, tmp_path / "o", device="cpu")
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        extract_face_features(tmp_path / "missing.pt", raw_db, tmp_path / "o", device="cpu")
    torch.save(load_face_cnn(cnn).state_dict(), tmp_path / "bare_sd.pt")
    with pytest.raises(CheckpointError, match="not a memo face CNN checkpoint"):
        extract_face_features(tmp_path / "bare_sd.pt", raw_db, tmp_path / "o", device="cpu")
    with pytest.raises(BadInputError, match="would replace the raw-crop database itself"):
        extract_face_features(cnn, raw_db, raw_db.parent, device="cpu")
    with pytest.raises(BadInputError, match="unknown normalization"):
        extract_face_features(cnn, raw_db, tmp_path / "o", normalization="imagenet")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_extract_faces_through_the_cli(raw_db, cnn, tmp_path):
    out = tmp_path / "faces"
    run = CliRunner().invoke
    res = run(main, ["extract-faces", str(cnn), str(raw_db), str(out), "--batch-size", "4",
                     "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "4 segments, 1 without frames" in res.output
    res = run(main, ["db", "check", str(out)])
    assert res.exit_code == 0 and "OK" in res.output
    res = run(main, ["extract-faces", str(cnn), str(raw_db), str(out)])
    assert res.exit_code == 0 and "up to date" in res.output
    res = run(main, ["extract-faces", str(cnn), str(out / raw_db.name), str(tmp_path / "x")])
    assert res.exit_code == 1 and res.output.startswith("Error: ")
    assert "not a raw face-crop database" in res.output
