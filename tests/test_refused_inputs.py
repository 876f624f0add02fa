"""Inputs the builders used to accept silently (issue 16, items 2 and 6): NaN confidences,
out-of-range options (command line, Python and dataset config alike), an OpenFace clip
without its crop folder, ids that differ only in case; and option errors of a dataset build
naming the config file and key instead of a command-line flag."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import rewrite_csv, write_npz
from memo.cli import main
from memodb.dataset.build import build_dataset
from memodb.dataset.config import load_config
from memodb.errors import BadInputError, BadInputsError
from memodb.feature.imgdb import create_imgdb
from memodb.feature.rawimg import rawimg_db
from memodb.feature.trans2npz import trans2npz
from memodb.store.manifest import read_manifest
from memodb.store.reader import FeatureDB
from memodb.synth import make_captions, make_h5_corpus, make_openface, segment_arrays
from memodb.text.txtdb import create_txtdb

MOVIE_H5 = "has_active_spk_denseface_with_trans.h5"
CLIP = "No0000.Movie_0_2"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def cli_fails(*args, names=(), absent=()):
    """The CLI exits 1 with one clean ``Error: ...`` naming ``names`` and not ``absent``."""
    r = cli(*args)
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), f"crashed: {r.exception!r}\n{r.output}"
    assert "Error:" in r.output and "Traceback" not in r.output, r.output
    for n in names:
        assert str(n) in r.output, f"{n!r} not in {r.output}"
    for n in absent:
        assert str(n) not in r.output, f"{n!r} in {r.output}"
    return r


def names(exc, *needles, absent=()) -> str:
    text = str(exc)
    for n in needles:
        assert str(n) in text, f"{n!r} not named in: {text}"
    for n in absent:
        assert str(n) not in text, f"{n!r} named in: {text}"
    return text


def nothing_written(out: Path) -> None:
    assert not out.exists() or not [p for p in out.rglob("*") if p.name != ".lock"], \
        sorted(out.rglob("*"))


@pytest.fixture
def openface(tmp_path):
    make_openface(tmp_path / "openface", clips=3, frames=8, size=48, seed=2)
    return tmp_path / "openface"


# --------------------------------------------------------------------------------------------
# NaN confidence: an error naming the file and the segment (not an empty segment)


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_npz_confidence_not_finite_is_refused(tmp_path, npz_dir, value):
    bad = npz_dir / "movieA_7.npz"
    write_npz(bad, n=5, conf=np.array([0.9, value, 0.8, 0.9, 0.7]))
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(npz_dir, out, workers=2)
    names(ei.value, bad, "movieA_7.npz", "'confidence' is NaN or infinite", "[1]",
          "re-extract")
    nothing_written(out)
    cli_fails("db", "create-imgdb", npz_dir, out, names=(bad, "movieA_7.npz", "NaN"))
    nothing_written(out)


def test_h5_confidence_nan_is_refused(tmp_path):
    root = tmp_path / "h5"
    make_h5_corpus(root, movies=1, segments=4, faces=6, seed=1)
    movie = "No0000.Movie_0"
    with h5py.File(root / movie / MOVIE_H5, "a") as f:
        conf = f[f"{movie}/2/confidence"]
        conf[...] = np.full(conf.shape, np.nan, np.float32)  # every frame: the segment is gone
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(root, out, workers=1)
    names(ei.value, root / movie / MOVIE_H5, f"{movie}_2.npz", "'confidence' is NaN")
    nothing_written(out)


def test_openface_confidence_nan_is_refused(tmp_path, openface):
    csv_path = rewrite_csv(openface, CLIP, ["0.9", "nan", "0.9", "0.9", "0.9", "0.9", "0.9",
                                            "0.9"])
    out = tmp_path / "out"
    for mean, std in ((64.0, 43.0), (None, None)):  # the statistics pass reads it first
        with pytest.raises((BadInputError, BadInputsError)) as ei:
            rawimg_db(openface, out, mean=mean, std=std, workers=1)
        names(ei.value, csv_path, f"{CLIP}.npz", "line 3", "frame 2", "'nan'",
              "not a finite number")
        nothing_written(out)
    cli_fails("db", "rawimg-db", openface, out, names=(csv_path, "frame 2"))


def test_nan_features_in_a_dropped_frame_still_build(tmp_path, npz_dir):
    """Only the confidence must be finite everywhere; features only in kept frames."""
    arrays = write_npz(npz_dir / "movieA_7.npz", n=3, conf=np.array([0.9, 0.1, 0.9]))
    feats = arrays["features"].copy()
    feats[1] = np.nan
    write_npz(npz_dir / "movieA_7.npz", n=3, conf=np.array([0.9, 0.1, 0.9]), features=feats)
    r = create_imgdb(npz_dir, tmp_path / "out", workers=1)
    assert len(FeatureDB(r.path)["movieA_7"]["features"]) == 2


# --------------------------------------------------------------------------------------------
# conf_th / max_bb / min_bb / size / mean / std: the same rule from the CLI, Python and configs


BAD_CONF_TH = ["nan", "1.5", "-0.5", "inf"]


@pytest.mark.parametrize("conf_th", BAD_CONF_TH)
def test_bad_conf_th_is_refused_everywhere(tmp_path, npz_dir, openface, conf_th):
    out = tmp_path / "out"
    with pytest.raises(BadInputError) as ei:
        create_imgdb(npz_dir, out, conf_th=float(conf_th))
    names(ei.value, "--conf-th must be a number from 0 to 1", f"got {float(conf_th)!r}")
    with pytest.raises(BadInputError) as ei:
        rawimg_db(openface, out, conf_th=float(conf_th))
    names(ei.value, "--conf-th must be a number from 0 to 1")
    cli_fails("db", "create-imgdb", npz_dir, out, "--conf-th", conf_th,
              names=("--conf-th", "from 0 to 1"))
    cli_fails("db", "rawimg-db", openface, out, "--conf-th", conf_th,
              names=("--conf-th", "from 0 to 1"))
    nothing_written(out)


@pytest.mark.parametrize("kw, needle", [
    ({"conf_th": "0.5"}, "--conf-th must be a number"),
    ({"conf_th": True}, "--conf-th must be a number"),
    ({"max_bb": 36.7}, "--max-bb must be an integer >= 1 (got 36.7)"),
    ({"max_bb": 36.0}, "--max-bb must be an integer"),
    ({"max_bb": 0}, "--max-bb must be an integer >= 1"),
    ({"min_bb": -1}, "--min-bb must be an integer >= 0"),
    ({"min_bb": 5, "max_bb": 4}, "--min-bb 5 is above --max-bb 4"),
    ({"modality": "video"}, "unknown modality 'video'"),
])
def test_python_callers_get_the_same_checks(tmp_path, npz_dir, kw, needle):
    out = tmp_path / "out"
    with pytest.raises(BadInputError) as ei:
        create_imgdb(npz_dir, out, **kw)
    names(ei.value, needle)
    nothing_written(out)


@pytest.mark.parametrize("kw, needle", [
    ({"size": 4}, "--size must be an integer >= 8"),
    ({"size": 64.5}, "--size must be an integer"),
    ({"mean": float("nan"), "std": 40.0}, "--mean must be a finite number"),
    ({"mean": 60.0, "std": float("inf")}, "--std must be a finite number"),
    ({"mean": 60.0, "std": -1.0}, "--std must be positive"),
    ({"max_bb": 2, "min_bb": 3}, "--min-bb 3 is above --max-bb 2"),
])
def test_rawimg_options_are_checked(tmp_path, openface, kw, needle):
    out = tmp_path / "out"
    with pytest.raises(BadInputError) as ei:
        rawimg_db(openface, out, **kw)
    names(ei.value, needle)
    nothing_written(out)


def test_documented_defaults_and_bounds_stay_valid(tmp_path, npz_dir):
    """0 and 1 are allowed (downstream faces 0.0; speech 1.0, whose features have no
    confidence: the first max_bb frames are kept)."""
    speech = tmp_path / "speech"
    for i in range(3):
        write_npz(speech / f"s_{i}.npz", n=70, dim=16, seed=i, confidence=None,
                  soft_labels=None)
    r = create_imgdb(speech, tmp_path / "sp", modality="speech", workers=1)
    assert r.path.name == "feat_th1.0_max64_min0" and r.counts["frames_kept"] == 3 * 64
    r = create_imgdb(npz_dir, tmp_path / "f0", conf_th=0, workers=1)
    assert r.path.name == "feat_th0.0_max36_min0"
    r = create_imgdb(npz_dir, tmp_path / "f1", conf_th=np.float32(1.0), max_bb=np.int64(4),
                     workers=1)
    assert r.counts["frames_kept"] == 0  # every confidence is <= 1


BAD_FEATURE_VALUES = [
    ({"conf_th": float("nan")}, "features.face.conf_th must be a number from 0 to 1 (got nan)"),
    ({"conf_th": 1.5}, "features.face.conf_th must be a number from 0 to 1 (got 1.5)"),
    ({"conf_th": -0.5}, "features.face.conf_th must be a number from 0 to 1"),
    ({"max_bb": -3}, "features.face.max_bb must be an integer >= 1 (got -3)"),
    ({"min_bb": -1}, "features.face.min_bb must be an integer >= 0"),
    ({"min_bb": 40}, "features.face.min_bb 40 is above features.face.max_bb 36"),
    ({"modality": "speech", "min_bb": 65}, "features.face.max_bb 64"),
    ({"modality": "video"}, "set features.face.modality to face or speech"),
    # already refused by the config's types (kept here with the range checks)
    ({"conf_th": "0.5"}, "config key features.face.conf_th: expected float or null, got '0.5'"),
    ({"max_bb": 36.7}, "config key features.face.max_bb: expected int or null, got 36.7"),
]


@pytest.mark.parametrize("spec, message", BAD_FEATURE_VALUES)
def test_config_refuses_bad_feature_values_naming_the_key(tmp_path, spec, message):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"features": {"face": {"source": "h5", **spec}}}))
    with pytest.raises(BadInputError) as ei:
        load_config(cfg)
    names(ei.value, cfg, message, absent=("--",))


@pytest.mark.parametrize("spec, message", [
    ({"size": 4}, "features.crops.size must be an integer >= 8 (got 4)"),
    ({"conf_th": 2.0}, "features.crops.conf_th must be a number from 0 to 1"),
    ({"max_bb": 0}, "features.crops.max_bb must be an integer >= 1"),
    ({"mean": 60.0}, "give both features.crops.mean and features.crops.std"),
    ({"mean": float("nan"), "std": 40.0}, "features.crops.mean must be a finite number"),
    ({"mean": 60.0, "std": 0.0}, "features.crops.std must be positive"),
])
def test_config_refuses_bad_rawimg_values_naming_the_key(tmp_path, spec, message):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"features": {"crops": {"source": "of", "type": "rawimg",
                                                      **spec}}}))
    with pytest.raises(BadInputError) as ei:
        load_config(cfg)
    names(ei.value, cfg, message, absent=("--",))


@pytest.mark.parametrize("spec, message", [
    ({"max_len": 0}, "text.max_len must be an integer >= 1 (got 0)"),
    ({"min_faces": -1}, "text.min_faces must be an integer >= 0 (got -1)"),
    ({"long": "cut"}, "set text.long to truncate or drop"),
])
def test_config_refuses_bad_text_values_naming_the_key(tmp_path, spec, message):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"text": {"source": "c.json", **spec}}))
    with pytest.raises(BadInputError) as ei:
        load_config(cfg)
    names(ei.value, cfg, message, absent=("--",))


def test_cli_build_refuses_a_bad_config_before_building(tmp_path):
    root = tmp_path / "corpus"
    make_h5_corpus(root / "h5", movies=1, segments=3, faces=4, seed=1)
    cfg = root / "config.json"
    cfg.write_text(json.dumps({"features": {"face": {"source": "h5", "conf_th": 1.5}}}))
    out = tmp_path / "out"
    cli_fails("db", "build", cfg, out, names=(cfg, "features.face.conf_th", "from 0 to 1"),
              absent=("--conf-th",))
    nothing_written(out)


# --------------------------------------------------------------------------------------------
# option errors raised while a dataset builds name the config file and key (item 6)


def _config(root: Path, cfg: dict) -> Path:
    path = root / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_build_error_from_a_worker_names_the_config_key(tmp_path):
    """The h5 lacks the asked dataset: found per segment in worker processes."""
    root = tmp_path / "corpus"
    make_h5_corpus(root / "h5", movies=1, segments=3, faces=4, seed=1, with_trans=False)
    cfg = _config(root, {"features": {"face": {"source": "h5", "feature": "trans1"}}})
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        build_dataset(cfg, out, workers=2)
    names(ei.value, "no 'trans1' dataset", f"choose another features.face.feature in {cfg}",
          absent=("--feature",))
    cli_fails("db", "build", cfg, out, "--workers", "2",
              names=("features.face.feature", cfg), absent=("--feature",))
    # the same error from the command that has the flag names the flag
    cli_fails("db", "create-imgdb", root / "h5", tmp_path / "img", "--feature", "trans1",
              names=("choose another --feature",))


def test_build_error_without_a_file_names_the_config_file(tmp_path, openface):
    """No crop passes conf_th, so no mean / std: an error about options only."""
    cfg = _config(tmp_path, {"features": {"crops": {"source": "openface", "type": "rawimg",
                                                     "conf_th": 1.0}}})
    with pytest.raises(BadInputError) as ei:
        build_dataset(cfg, tmp_path / "out", workers=1)
    text = names(ei.value, "no face crop passes", "lower features.crops.conf_th or give "
                 "features.crops.mean and features.crops.std", absent=("--",))
    assert text.startswith(f"{cfg}: ")
    with pytest.raises(BadInputError) as ei:  # the library and the CLI name the flags
        rawimg_db(openface, tmp_path / "raw", conf_th=1.0)
    names(ei.value, "lower --conf-th or give --mean and --std")


def test_build_error_of_the_text_stage_names_the_config_key(tmp_path):
    root = tmp_path / "corpus"
    make_h5_corpus(root / "h5", movies=1, segments=4, faces=4, seed=1)
    (root / "caps.json").write_text(json.dumps({"Other_1": ["hello there"],
                                                "Other_2": ["good day"]}))
    cfg = _config(root, {"features": {"face": {"source": "h5"}},
                         "text": {"source": "caps.json", "faces_from": "face"}})
    with pytest.raises(BadInputError) as ei:
        build_dataset(cfg, tmp_path / "out", workers=1)
    names(ei.value, root / "caps.json", "none of the 2 transcripts has a segment",
          f"check that text.faces_from in {cfg} belongs to this corpus", absent=("--img-db",))


def test_build_from_a_dict_names_the_key(tmp_path):
    """A config given as a dict has no file: the key alone."""
    root = tmp_path / "corpus"
    make_h5_corpus(root / "h5", movies=1, segments=3, faces=4, seed=1, with_trans=False)
    cfg = {"name": "x", "vocab": None, "lexicon": None, "text": None,
           "features": {"face": {"type": "feature", "source": str(root / "h5"),
                                 "feature": "trans2"}}}
    with pytest.raises(BadInputsError) as ei:
        build_dataset(cfg, tmp_path / "out", workers=1)
    names(ei.value, "choose another features.face.feature or re-extract", absent=("--",))


def test_option_errors_survive_pickling():
    """Worker processes send errors back pickled: the option names must travel too."""
    err = BadInputError("bad {feature}", file="f.h5", segment="s.npz", options=("feature",),
                        fix="choose another {feature}")
    back = pickle.loads(pickle.dumps(BadInputsError([err], "the database")))
    assert str(back) == str(BadInputsError([err], "the database"))
    assert "choose another --feature" in str(back)
    renamed = back.naming_options({"feature": "features.f.feature"}, "c.json")
    assert "choose another features.f.feature in c.json" in str(renamed)
    assert "f.h5: segment 's.npz': bad features.f.feature in c.json" in str(renamed)


# --------------------------------------------------------------------------------------------
# an OpenFace clip without its _aligned/ folder


def test_openface_clip_without_crop_folder_is_refused(tmp_path, openface):
    for clip in (CLIP, "No0000.Movie_0_3"):
        for p in (openface / f"{clip}_aligned").iterdir():
            p.unlink()
        (openface / f"{clip}_aligned").rmdir()
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        rawimg_db(openface, out, mean=64.0, std=43.0, workers=1)
    names(ei.value, "2 bad segment(s)", openface / f"{CLIP}.csv", f"{CLIP}.npz",
          f"without its crop folder {CLIP}_aligned/", "No0000.Movie_0_3.npz", "-simalign")
    nothing_written(out)
    cli_fails("db", "rawimg-db", openface, out, names=(f"{CLIP}.csv", "No0000.Movie_0_3.csv"))
    nothing_written(out)


def test_other_csv_files_are_not_clips(tmp_path, openface):
    (openface / "labels.csv").write_text("id,label\nNo0000.Movie_0_1,2\n")
    (openface / "notes.csv").write_bytes(b"\xff\xfe binary")
    r = rawimg_db(openface, tmp_path / "out", mean=64.0, std=43.0, workers=1)
    assert r.counts["segments"] == 3


# --------------------------------------------------------------------------------------------
# ids that differ only in case: built, counted in the manifest, a warning naming both


def test_feature_ids_differing_in_case_are_warned(tmp_path, npz_dir):
    write_npz(npz_dir / "MovieA_1.npz", n=3, seed=9)
    write_npz(npz_dir / "MOVIEA_2.npz", n=3, seed=8)
    out = tmp_path / "out"
    r = create_imgdb(npz_dir, out, workers=1)
    assert r.manifest["id_case_collisions"] == {
        "count": 2, "ids": [["MOVIEA_2", "movieA_2"], ["MovieA_1", "movieA_1"]]}
    assert r.counts["segments"] == 8  # nothing dropped: they are distinct keys in LMDB
    res = cli("db", "create-imgdb", npz_dir, out)  # up to date: still warned
    assert res.exit_code == 0, res.output
    assert "warning: 2 group(s) of segment ids differ only in case" in res.output
    assert "MovieA_1 / movieA_1" in res.output and "MOVIEA_2 / movieA_2" in res.output


def test_no_case_collision_no_manifest_entry(tmp_path, npz_dir):
    r = create_imgdb(npz_dir, tmp_path / "out", workers=1)
    assert "id_case_collisions" not in r.manifest


def test_trans2npz_warns_about_ids_differing_in_case(tmp_path):
    root = tmp_path / "seg"
    (root / "spk").mkdir(parents=True)
    for seg in ("Clip_1", "clip_1"):
        with h5py.File(root / "spk" / f"{seg}.h5", "w") as f:
            for k, v in segment_arrays(np.random.default_rng(2), 4).items():
                f.create_dataset(k, data=v)
    r = trans2npz(root, tmp_path / "npz", workers=1)
    assert r.case_collisions == [["spk#Clip_1", "spk#clip_1"]]
    assert "spk#Clip_1 / spk#clip_1" in r.warnings[0]
    res = cli("db", "trans2npz", root, tmp_path / "npz2")
    assert res.exit_code == 0 and "warning: 1 group(s) of segment ids differ only in case" \
        in res.output


def test_text_ids_differing_in_case_are_warned(tmp_path):
    src = tmp_path / "caps.json"
    src.write_text(json.dumps({"Seg_1": ["hello there"], "seg_1": ["good day"],
                               "seg_2": ["see you"]}))
    r = create_txtdb(src, tmp_path / "txt", workers=1)
    assert any("1 group(s) of transcript ids differ only in case" in w and "Seg_1 / seg_1" in w
               for w in r.warnings)
    assert read_manifest(tmp_path / "txt")["id_case_collisions"] == {
        "count": 1, "ids": [["Seg_1", "seg_1"]]}
    assert r.counts["texts"] == 3
    res = cli("db", "create-txtdb", src, tmp_path / "txt2")
    assert res.exit_code == 0 and "Seg_1 / seg_1" in res.output


def test_dataset_build_lists_case_warnings(tmp_path):
    root = tmp_path / "corpus"
    npz = root / "npz"
    for i, name in enumerate(("Ab_1", "aB_1", "c_1")):
        write_npz(npz / f"{name}.npz", n=3, seed=i)
    make_captions(["Ab_1", "aB_1", "c_1"], root / "caps.json", seed=1)
    cfg = _config(root, {"features": {"face": {"source": "npz", "conf_th": 0.0}},
                         "text": {"source": "caps.json", "faces_from": "face"}})
    res = build_dataset(cfg, tmp_path / "out", workers=1)
    assert res.report.ok
    assert any(w.startswith("face: 1 group(s) of segment ids") and "Ab_1 / aB_1" in w
               for w in res.warnings)
    assert any("transcript ids differ only in case" in w for w in res.warnings)


def test_sharded_build_records_case_collisions_like_a_single_build(tmp_path):
    """Each shard finds the collisions over the whole source (here across shards); the
    merged folder is the single build's, byte for byte."""
    from memodb.dataset.merge import merge_shards

    root = tmp_path / "corpus"
    for i, name in enumerate(("Ab_1", "Ac_1", "ab_1", "b_1")):  # shards: Ab_1 Ac_1 | ab_1 b_1
        write_npz(root / "npz" / f"{name}.npz", n=3, seed=i)
    cfg = _config(root, {"features": {"face": {"source": "npz", "conf_th": 0.0}}})
    single = build_dataset(cfg, tmp_path / "single", workers=1)
    dirs = [tmp_path / f"shard{i}" for i in range(2)]
    for i, d in enumerate(dirs):
        build_dataset(cfg, d, workers=1, shard=f"{i}/2")
    merged = merge_shards(dirs, tmp_path / "merged", workers=1)
    assert merged.report.ok and any("Ab_1 / ab_1" in w for w in merged.warnings)
    db = "face/feat_th0.0_max36_min0/manifest.json"
    want = (tmp_path / "single" / db).read_bytes()
    assert json.loads(want)["id_case_collisions"]["ids"] == [["Ab_1", "ab_1"]]
    assert (tmp_path / "merged" / db).read_bytes() == want
    assert single.report.ok


@pytest.mark.parametrize("top, text, needle", [
    ({"vocab": "no_vocab"}, {}, "point vocab in {cfg} at a bert-base-uncased folder"),
    ({}, {"labels": ["a", "b"]}, "use downstream refs with labels, or drop text.labels in "
                                 "{cfg}"),
])
def test_text_stage_errors_name_top_level_and_text_keys(tmp_path, top, text, needle):
    root = tmp_path / "corpus"
    (root / "no_vocab").mkdir(parents=True)
    make_captions(["s_1", "s_2"], root / "caps.json", seed=1)
    cfg = _config(root, {**top, "text": {"source": "caps.json", **text}})
    with pytest.raises(BadInputError) as ei:
        build_dataset(cfg, tmp_path / "out", workers=1)
    names(ei.value, needle.format(cfg=cfg), absent=("--vocab", "--labels"))
