"""Bad input the product meets in real life (inputs: docs/DATABASES.md, "Inputs").

Every case asserts three things: the named error (or the CLI's ``Error: ...`` and exit code 1),
a message naming the file and / or the segment, and that nothing was published or changed: no
final database, no ``.partial`` directory, and whatever was in OUT_DIR (or the inputs) before
is byte-identical afterwards.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SUBPROCESS_ENV, rewrite_csv, run_and_kill, write_npz
from memo.cli import main
from memodb.checks.run import check
from memodb.errors import BadInputError, BadInputsError, DatabaseError, OutputExistsError
from memodb.feature.imgdb import create_imgdb
from memodb.feature.rawimg import rawimg_db
from memodb.feature.trans2npz import trans2npz
from memodb.store.reader import FeatureDB, close_all
from memodb.synth import make_h5_corpus, segment_arrays

DB = "feat_th0.5_max36_min0"
NBB = "nbb_th0.5_max36_min0.json"
MOVIE_H5 = "has_active_spk_denseface_with_trans.h5"


# --------------------------------------------------------------------------------------------
# helpers


def snapshot(folder) -> dict:
    """Every entry under ``folder`` (hidden ones included): files -> (sha256, mtime_ns),
    directories -> None. {} when the folder does not exist or is empty."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_dir():
            out[rel] = None
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def assert_unpublished(out_dir, before: dict | None = None) -> None:
    """Nothing new in OUT_DIR: no final database, no ``.partial`` / lock left, old files intact."""
    out_dir = Path(out_dir)
    assert not list(out_dir.glob(".*.partial")), "a .partial directory was left behind"
    assert not list(out_dir.glob(".*.lock")), "a lock file was left behind"
    if not before:
        assert not (out_dir / DB).exists(), "a database was published"
        assert not (out_dir / NBB).exists(), "an nbb json was published"
    assert snapshot(out_dir) == (before or {})


def assert_names(exc_or_text, *needles) -> str:
    text = str(exc_or_text)
    for needle in needles:
        assert str(needle) in text, f"{needle!r} not named in: {text}"
    return text


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def cli_fails(*args, names=()):
    """Run the CLI; it must exit 1 with a clean ``Error: ...`` (no traceback)."""
    r = cli(*args)
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), f"crashed: {r.exception!r}\n{r.output}"
    assert "Error:" in r.output and "Traceback" not in r.output, r.output
    assert_names(r.output, *names)
    return r


def build_ok(src, out, **kw):
    r = create_imgdb(src, out, workers=kw.pop("workers", 1), **kw)
    assert not r.skipped and (r.path / "manifest.json").exists()
    return r


def add_h5_group(h5_file, movie: str, index: str, n: int = 3, drop=(), lengths=None):
    """Add segment ``index`` to a movie h5, without the datasets in ``drop``; ``lengths``
    overrides the row count of single datasets."""
    arrays = segment_arrays(np.random.default_rng(7), n)
    with h5py.File(h5_file, "a") as f:
        g = f[movie].create_group(index)
        for name, a in arrays.items():
            if name not in drop:
                m = (lengths or {}).get(name, n)
                g.create_dataset(name, data=np.resize(a, (m, *a.shape[1:])))


def movie_h5(h5_root, m: int = 0) -> tuple[Path, str]:
    movie = f"No{m:04d}.Movie_{m}"
    return Path(h5_root) / movie / MOVIE_H5, movie


def corrupt_deflate(path) -> None:
    """Make the first member of a compressed npz an invalid deflate stream."""
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    raw = bytearray(Path(path).read_bytes())
    off = info.header_offset
    n, m = struct.unpack("<HH", raw[off + 26: off + 30])
    raw[off + 30 + n + m] = 0x07  # BFINAL=1, BTYPE=11: a block type that does not exist
    Path(path).write_bytes(bytes(raw))


def corrupt_npy_header(path) -> None:
    """An npz whose ``features.npy`` header dict is cut off."""
    hdr = b"{'descr': '<f2', 'fortran_order': False, 'shape': (2, 4), \n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("features.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr
                   + bytes(16))


def db_copy(src_out, dst_out) -> Path:
    """Copy a database directory and its nbb json into another OUT_DIR; return the db path."""
    close_all()
    dst_out.mkdir(parents=True)
    shutil.copytree(src_out / DB, dst_out / DB)
    shutil.copy(src_out / NBB, dst_out / NBB)
    return dst_out / DB


def lmdb_edit(db_path, func) -> None:
    close_all()
    env = lmdb.open(str(db_path), map_size=1 << 26)
    try:
        with env.begin(write=True) as txn:
            func(txn)
    finally:
        env.close()


def problems(report, code=None):
    return [p for d in report.databases for p in d.problems if code in (None, p.code)]


def warnings(report):
    return [w for d in report.databases for w in d.warnings]


def wait_unlocked(lock_path, timeout=10.0) -> None:
    """Wait until nobody holds the flock on ``lock_path`` (killed workers release it on exit)."""
    deadline = time.monotonic() + timeout
    while True:
        if not Path(lock_path).exists():
            return
        with open(lock_path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                pass
        assert time.monotonic() < deadline, f"{lock_path} still locked"
        time.sleep(0.01)




def run_py(code: str, *args) -> subprocess.CompletedProcess:
    """Run python code in a child (for inputs that may kill the process, e.g. SIGBUS)."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=SUBPROCESS_ENV, timeout=60)


@pytest.fixture
def good_db(tmp_path, npz_dir):
    """A finished database built from ``npz_dir`` into ``tmp_path/good``."""
    out = tmp_path / "good"
    build_ok(npz_dir, out)
    close_all()
    return out


# --------------------------------------------------------------------------------------------
# 1. truncated or corrupt npz


def test_truncated_npz_names_file_and_publishes_nothing(tmp_path, npz_dir):
    out = tmp_path / "out"
    build_ok(npz_dir, out, max_bb=10)  # an earlier database in the same OUT_DIR
    before = snapshot(out)
    bad = npz_dir / "movieA_2.npz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    inputs = snapshot(npz_dir)
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    assert_names(ei.value, bad, "movieA_2.npz", "unreadable npz", "trans2npz")
    assert [e.segment for e in ei.value.errors] == ["movieA_2.npz"]
    assert_unpublished(out, before)  # no feat_th0.5_max36_min0, the max10 one intact
    assert snapshot(npz_dir) == inputs

    # through the CLI, with worker processes (the error crosses a process boundary)
    cli_fails("db", "create-imgdb", npz_dir, out, "--workers", 2, names=(bad, "movieA_2.npz"))
    assert_unpublished(out, before)


@pytest.mark.parametrize("damage", [corrupt_deflate, corrupt_npy_header])
def test_corrupt_npz_is_a_bad_input(tmp_path, npz_dir, damage):
    bad = npz_dir / "movieA_5.npz"
    np.savez_compressed(bad, features=np.ones((3, 342), np.float16))
    damage(bad)
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    assert_names(ei.value, bad, "movieA_5.npz")
    assert_unpublished(out)


# --------------------------------------------------------------------------------------------
# 2. unreadable h5


def test_unreadable_movie_h5(tmp_path, h5_root):
    bad, _ = movie_h5(h5_root, 1)
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out"
    with pytest.raises((BadInputError, BadInputsError)) as ei:
        create_imgdb(h5_root, out, workers=1)
    assert_names(ei.value, bad, "unreadable h5")
    assert_unpublished(out)
    cli_fails("db", "create-imgdb", h5_root, out, names=(bad,))
    assert_unpublished(out)

    npz_out = tmp_path / "npz"
    with pytest.raises((BadInputError, BadInputsError)) as ei:
        trans2npz(h5_root, npz_out, workers=1)
    assert_names(ei.value, bad, "unreadable h5")
    assert not list(npz_out.glob("*.npz"))
    cli_fails("db", "trans2npz", h5_root, npz_out, names=(bad,))
    assert not list(npz_out.glob("*.npz"))


def test_unreadable_segment_h5(tmp_path):
    """Per-segment layout (``<root>/<speaker>/<video>/<segment>.h5``)."""
    root = tmp_path / "seg"
    for spk, vid, seg in (("spk1", "vid1", "1"), ("spk1", "vid1", "2"), ("spk2", "vid9", "1")):
        (root / spk / vid).mkdir(parents=True, exist_ok=True)
        with h5py.File(root / spk / vid / f"{seg}.h5", "w") as f:
            for k, v in segment_arrays(np.random.default_rng(1), 4).items():
                f.create_dataset(k, data=v)
    bad = root / "spk1" / "vid1" / "2.h5"
    bad.write_bytes(b"not an h5 file at all" * 50)
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(root, out, workers=1)
    assert_names(ei.value, bad, "unreadable h5")
    assert_unpublished(out)


def test_failed_trans2npz_does_not_claim_out_dir(tmp_path, h5_root):
    broken = tmp_path / "broken"
    shutil.copytree(h5_root, broken)
    movie_h5(broken, 0)[0].write_bytes(b"garbage" * 100)
    out = tmp_path / "npz"
    with pytest.raises(BadInputError):
        trans2npz(broken, out, workers=1)
    assert not list(out.glob("*.npz"))
    report = trans2npz(h5_root, out, workers=1)  # the user points at the good copy
    assert report.written == 20


# --------------------------------------------------------------------------------------------
# 3. a segment group without the feature dataset; a group without datasets


def test_h5_group_without_feat(tmp_path, h5_root):
    h5_file, movie = movie_h5(h5_root, 0)
    add_h5_group(h5_file, movie, "11", drop=("feat",))
    add_h5_group(h5_file, movie, "12", drop=tuple(segment_arrays(np.random.default_rng(), 1)))
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(h5_root, out, workers=1)
    assert_names(ei.value, h5_file, f"{movie}_11.npz", "no 'feat' dataset", "--feature")
    assert [e.segment for e in ei.value.errors] == [f"{movie}_11.npz"]
    assert_unpublished(out)
    cli_fails("db", "create-imgdb", h5_root, out, names=(h5_file, f"{movie}_11.npz"))
    assert_unpublished(out)

    # every group has trans1 (group 12 has no dataset at all: a segment without a face)
    r = build_ok(h5_root, out, feature="trans1")
    db = FeatureDB(r.path)
    assert db[f"{movie}_11"]["features"].shape[1] == 216
    assert len(db[f"{movie}_12"]["features"]) == 0
    assert json.loads(r.nbb_path.read_text())[f"{movie}_12.npz"] == 0
    assert check([r.path]).exit_code == 0


# --------------------------------------------------------------------------------------------
# 4. arrays of different lengths


@pytest.mark.parametrize("array, rows", [("soft_labels", 4), ("confidence", 6),
                                         ("frame_idxs", 0)])
def test_npz_lengths_differ(tmp_path, npz_dir, array, rows):
    bad = npz_dir / "movieA_7.npz"
    arrays = write_npz(bad, n=5)
    write_npz(bad, n=5, **{array: np.resize(arrays[array], (rows, *arrays[array].shape[1:]))})
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    assert_names(ei.value, bad, "movieA_7.npz", "different lengths", f"{array} {rows}")
    assert_unpublished(out)


def test_h5_lengths_differ(tmp_path, h5_root):
    h5_file, movie = movie_h5(h5_root, 1)
    add_h5_group(h5_file, movie, "11", n=5, lengths={"confidence": 3})
    out = tmp_path / "out"
    cli_fails("db", "create-imgdb", h5_root, out,
              names=(h5_file, f"{movie}_11.npz", "different lengths", "confidence 3"))
    assert_unpublished(out)
    with pytest.raises(BadInputsError):  # trans2npz refuses it too, and names it
        trans2npz(h5_root, tmp_path / "npz", workers=1)
    assert not (tmp_path / "npz" / f"{movie}_11.npz").exists()
    assert (tmp_path / "npz" / f"{movie}_10.npz").exists()  # the good ones were written


# --------------------------------------------------------------------------------------------
# 5. NaN / Inf


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("array, value", [("features", np.nan), ("soft_labels", np.inf),
                                          ("features", 1e6)])  # beyond float16: inf once stored
def test_non_finite_in_kept_frame(tmp_path, npz_dir, array, value):
    bad = npz_dir / "movieA_7.npz"
    arrays = write_npz(bad, n=5)
    a = arrays[array].astype(np.float32)
    a[2, 1] = value
    write_npz(bad, n=5, **{array: a})
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    assert_names(ei.value, bad, "movieA_7.npz", f"'{array}' has NaN or Inf", "[2]")
    assert_unpublished(out)


def test_nan_only_in_dropped_frame_builds(tmp_path, npz_dir):
    arrays = write_npz(npz_dir / "movieA_7.npz", n=5, conf=np.array([0.9, 0.1, 0.9, 0.9, 0.9]))
    feats = arrays["features"].copy()
    feats[1] = np.nan  # the frame the threshold drops
    write_npz(npz_dir / "movieA_7.npz", n=5, conf=np.array([0.9, 0.1, 0.9, 0.9, 0.9]),
              features=feats)
    r = build_ok(npz_dir, tmp_path / "out")
    got = FeatureDB(r.path)["movieA_7"]
    assert len(got["features"]) == 4 and np.isfinite(got["features"]).all()
    np.testing.assert_array_equal(got["features"], feats[[0, 2, 3, 4]])
    assert check([r.path]).exit_code == 0


# --------------------------------------------------------------------------------------------
# 6. zero faces after filtering


def test_zero_faces_after_filtering(tmp_path, npz_dir):
    write_npz(npz_dir / "movieA_7.npz", n=4, conf=np.full(4, 0.3))
    r = build_ok(npz_dir, tmp_path / "out")
    nbb = json.loads(r.nbb_path.read_text())
    assert nbb["movieA_7.npz"] == 0 and nbb["movieA_4.npz"] == 0
    assert r.counts["empty"] == 2 and r.counts["segments"] == 7
    got = FeatureDB(r.path)["movieA_7"]
    assert got["features"].shape == (0, 342) and got["soft_labels"].shape == (0, 8)
    assert check([r.path]).exit_code == 0

    r1 = build_ok(npz_dir, tmp_path / "out", min_bb=1)
    assert r1.path.name == "feat_th0.5_max36_min1"
    assert r1.counts["dropped_below_min_bb"] == 2 and r1.counts["segments"] == 5
    assert r1.counts["empty"] == 0
    db = FeatureDB(r1.path)
    assert "movieA_7" not in db and "movieA_4" not in db and "movieA_1" in db
    assert "movieA_7.npz" not in json.loads(r1.nbb_path.read_text())
    assert check([r1.path]).exit_code == 0


# --------------------------------------------------------------------------------------------
# 7. odd ids; duplicate ids


ODD_IDS = ["spk 1#vidé#3", "movie#a b_1", "val-dia0_utt0", "电影_7"]


def test_odd_ids_build_and_read_back(tmp_path):
    src = tmp_path / "npz"
    written = {i: write_npz(src / f"{i}.npz", n=3, seed=k) for k, i in enumerate(ODD_IDS)}
    r = build_ok(src, tmp_path / "out")
    db = FeatureDB(r.path)
    assert sorted(db.keys()) == sorted(f"{i}.npz" for i in ODD_IDS)
    assert sorted(json.loads(r.nbb_path.read_text())) == sorted(db.keys())
    for i, arrays in written.items():
        np.testing.assert_array_equal(db[i]["features"], arrays["features"])
        np.testing.assert_array_equal(db[f"{i}.npz"]["features"], arrays["features"])
    # MELD's "val/dia0_utt0" is stored as val-dia0_utt0.npz (docs/FORMAT.md section 1)
    assert "val/dia0_utt0" in db
    np.testing.assert_array_equal(db["val/dia0_utt0"]["features"],
                                  written["val-dia0_utt0"]["features"])
    assert check([r.path]).exit_code == 0


def test_odd_ids_in_segment_h5_layout(tmp_path):
    root = tmp_path / "seg"
    (root / "spk 1" / "vidé").mkdir(parents=True)
    for seg in ("3", "x y"):
        with h5py.File(root / "spk 1" / "vidé" / f"{seg}.h5", "w") as f:
            for k, v in segment_arrays(np.random.default_rng(2), 4).items():
                f.create_dataset(k, data=v)
    r = build_ok(root, tmp_path / "out", conf_th=0.0)
    db = FeatureDB(r.path)
    assert sorted(db.keys()) == ["spk 1#vidé#3.npz", "spk 1#vidé#x y.npz"]
    assert len(db["spk 1#vidé#x y"]["features"]) == 4


def test_duplicate_ids(tmp_path, npz_dir):
    a = npz_dir / "a" / "movieB_1.npz"
    b = npz_dir / "b" / "movieB_1.npz"
    write_npz(a, n=3, seed=1)
    write_npz(b, n=3, seed=2)
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    assert_names(ei.value, a, b, "movieB_1.npz", "duplicate")
    assert_unpublished(out)
    cli_fails("db", "create-imgdb", npz_dir, out, names=(a, b))
    assert_unpublished(out)


def test_non_utf8_file_name(tmp_path, npz_dir):
    name = os.fsencode(npz_dir) + b"/caf\xe9_1.npz"  # a latin-1 name from an old archive
    with open(name, "wb") as f:
        np.savez(f, features=np.ones((2, 342), np.float16))
    out = tmp_path / "out"
    with pytest.raises(BadInputsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    text = assert_names(ei.value, "caf", "_1.npz", "UTF-8")
    text.encode("utf-8")  # the message itself can be printed
    assert_unpublished(out)


# --------------------------------------------------------------------------------------------
# 8. OUT_DIR already holds a database


def test_out_dir_holds_another_database(tmp_path, npz_dir, h5_root):
    out = tmp_path / "out"
    build_ok(npz_dir, out)
    before = snapshot(out)

    other = tmp_path / "other"  # another source, same options, hence the same name
    write_npz(other / "movieZ_1.npz", n=3)
    with pytest.raises(OutputExistsError) as ei:
        create_imgdb(other, out, workers=1)
    assert_names(ei.value, out / DB, "different", "choose another OUT_DIR")
    assert_unpublished(out, before)

    write_npz(npz_dir / "movieA_1.npz", n=2, seed=9)  # the source changed since
    with pytest.raises(OutputExistsError):
        create_imgdb(npz_dir, out, workers=1)
    cli_fails("db", "create-imgdb", h5_root, out, names=(out / DB,))
    assert_unpublished(out, before)


def test_out_dir_holds_another_feature(tmp_path, h5_root):
    out = tmp_path / "out"
    build_ok(h5_root, out)
    before = snapshot(out)
    with pytest.raises(OutputExistsError) as ei:
        create_imgdb(h5_root, out, feature="trans1", workers=1)
    assert_names(ei.value, out / DB, "'feature': 'feat'")
    cli_fails("db", "create-imgdb", h5_root, out, "--feature", "trans2", names=(out / DB,))
    assert_unpublished(out, before)


def test_same_build_again_is_skipped(tmp_path, npz_dir):
    out = tmp_path / "out"
    first = build_ok(npz_dir, out)
    before = snapshot(out)
    again = create_imgdb(npz_dir, out, workers=1)
    assert again.skipped and again.path == first.path and again.manifest == first.manifest
    r = cli("db", "create-imgdb", npz_dir, out)
    assert r.exit_code == 0 and "up to date" in r.output, r.output
    assert snapshot(out) == before  # bytes and mtimes


def test_final_path_without_manifest(tmp_path, npz_dir):
    out = tmp_path / "out"
    (out / DB).mkdir(parents=True)
    (out / DB / "notes.txt").write_text("someone else's files")
    before = snapshot(out)
    with pytest.raises(OutputExistsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    assert_names(ei.value, out / DB, "manifest.json")
    cli_fails("db", "create-imgdb", npz_dir, out, names=(out / DB,))
    assert_unpublished(out, before)


# --------------------------------------------------------------------------------------------
# 9. builds killed with SIGKILL


@pytest.fixture(scope="module")
def big_h5(tmp_path_factory):
    """3 movies x 200 segments, and an uninterrupted database of them."""
    base = tmp_path_factory.mktemp("big")
    make_h5_corpus(base / "h5", movies=3, segments=200, faces=30, seed=3)
    create_imgdb(base / "h5", base / "ref", workers=2)
    return base


IMGDB_CODE = ("import sys; from memodb.feature.imgdb import create_imgdb; "
              "create_imgdb(sys.argv[1], sys.argv[2], workers=2)")
TRANS_CODE = ("import sys; from memodb.feature.trans2npz import trans2npz; "
              "trans2npz(sys.argv[1], sys.argv[2], workers=2)")


def test_killed_create_imgdb_reruns_identically(tmp_path, big_h5):
    out = tmp_path / "out"
    partial = out / f".{DB}.partial"
    run_and_kill(IMGDB_CODE, [big_h5 / "h5", out], partial.exists)
    assert partial.exists() and not (out / DB).exists() and not (out / NBB).exists()
    rep = check([out])  # reports the leftover, and finds no database
    assert rep.exit_code == 1 and any(w.code == "unfinished_build" for w in warnings(rep))
    wait_unlocked(out / f".{DB}.lock")

    r = create_imgdb(big_h5 / "h5", out, workers=2)
    assert not r.skipped and r.counts["segments"] == 600
    assert not partial.exists() and not list(out.glob(".*"))
    ref = big_h5 / "ref"
    for rel in (f"{DB}/data.mdb", f"{DB}/manifest.json", NBB):
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel


def test_killed_trans2npz_leaves_no_truncated_npz(tmp_path, big_h5):
    out = tmp_path / "npz"
    run_and_kill(TRANS_CODE, [big_h5 / "h5", out],
                 lambda: out.is_dir() and sum(1 for _ in out.glob("*.npz")) >= 30)
    done = sorted(out.glob("*.npz"))
    assert 30 <= len(done) < 600
    for p in done:  # everything under a final name is complete
        with np.load(p) as z:
            assert {k: z[k].shape for k in z.files}

    report = trans2npz(big_h5 / "h5", out, workers=2)
    assert report.skipped >= len(done) and report.skipped + report.written == 600
    assert not list(out.glob(".*"))  # stale temporary files were removed
    ref = FeatureDB(big_h5 / "ref" / DB)
    npz_db = build_ok(out, tmp_path / "db", workers=2)  # the set is complete and sound
    db = FeatureDB(npz_db.path)
    assert db.keys() == ref.keys()
    for key in ref.keys()[::37]:
        np.testing.assert_array_equal(db[key]["features"], ref[key]["features"])


# --------------------------------------------------------------------------------------------
# 10. trans2npz into a folder made with another feature


def test_trans2npz_other_feature(tmp_path, h5_root):
    out = tmp_path / "npz"
    assert trans2npz(h5_root, out, workers=1).written == 20
    before = snapshot(out)
    with pytest.raises(OutputExistsError) as ei:
        trans2npz(h5_root, out, feature="trans1", workers=1)
    assert_names(ei.value, out, "'feature': 'feat'", "'feature': 'trans1'")
    cli_fails("db", "trans2npz", h5_root, out, "--feature", "trans2", names=(out,))
    assert snapshot(out) == before
    again = trans2npz(h5_root, out, workers=1)  # the same feature resumes / skips
    assert again.written == 0 and again.skipped == 20
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------------
# 11. rawimg-db


CLIP = "No0000.Movie_0_2"


@pytest.mark.parametrize("mean_std", [(64.0, 43.0), (None, None)], ids=["given", "computed"])
def test_rawimg_missing_bmp_of_kept_frame(tmp_path, openface_dir, mean_std):
    rewrite_csv(openface_dir, CLIP, [0.9, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    bmp = openface_dir / f"{CLIP}_aligned" / "frame_det_00_000003.bmp"
    bmp.unlink()
    out = tmp_path / "out"
    mean, std = mean_std
    with pytest.raises((BadInputError, BadInputsError)) as ei:
        rawimg_db(openface_dir, out, mean=mean, std=std, workers=1)
    assert_names(ei.value, bmp, f"{CLIP}.npz", "frame 3", "OpenFace")
    assert_unpublished(out)


def test_rawimg_missing_bmp_of_dropped_frame_builds(tmp_path, openface_dir):
    rewrite_csv(openface_dir, CLIP, [0.9, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    (openface_dir / f"{CLIP}_aligned" / "frame_det_00_000002.bmp").unlink()
    r = rawimg_db(openface_dir, tmp_path / "out", mean=64.0, std=43.0, workers=1)
    got = FeatureDB(r.path)[CLIP]
    assert got["features"].shape == (7, 64, 64)
    assert 2 not in got["frame_idxs"].tolist()


@pytest.mark.parametrize("garbage", [np.random.default_rng(5).bytes(300),
                                     b"", b"hello, world\n1, 2\n",
                                     b"frame, face_id, timestamp, confidence, success\n1, 0, x\n"],
                         ids=["binary", "empty", "other-header", "short-row"])
def test_rawimg_garbage_csv(tmp_path, openface_dir, garbage):
    csv_path = openface_dir / f"{CLIP}.csv"
    csv_path.write_bytes(garbage)
    out = tmp_path / "out"
    with pytest.raises((BadInputError, BadInputsError)) as ei:
        rawimg_db(openface_dir, out, mean=64.0, std=43.0, workers=1)
    assert_names(ei.value, csv_path, "unreadable OpenFace csv")
    assert_unpublished(out)
    cli_fails("db", "rawimg-db", openface_dir, out, names=(csv_path,))
    assert_unpublished(out)


def test_rawimg_mean_without_std(tmp_path, openface_dir):
    out = tmp_path / "out"
    with pytest.raises(BadInputError) as ei:
        rawimg_db(openface_dir, out, mean=64.0)
    assert_names(ei.value, "--std")
    cli_fails("db", "rawimg-db", openface_dir, out, "--mean", 64, names=("--mean", "--std"))
    cli_fails("db", "rawimg-db", openface_dir, out, "--mean", 64, "--std", 0, names=("--std",))
    assert_unpublished(out)


# --------------------------------------------------------------------------------------------
# 12. check on damaged databases


def damage_value(db_path):
    lmdb_edit(db_path, lambda t: t.put(b"movieA_2.npz", np.random.default_rng(4).bytes(200)))


def damage_keys_list(db_path):
    def drop(txn):
        keys = json.loads(txn.get(b"__keys__"))
        keys.remove("movieA_5.npz")
        txn.put(b"__keys__", json.dumps(keys).encode())
    lmdb_edit(db_path, drop)


def damage_nbb(db_path):
    nbb_path = db_path.parent / NBB
    nbb = json.loads(nbb_path.read_text())
    nbb["movieA_3.npz"] += 1
    nbb_path.write_text(json.dumps(nbb))


@pytest.mark.parametrize("damage, code, segment", [
    (damage_value, "undecodable", "movieA_2.npz"),
    (damage_keys_list, "keys_unlisted", "movieA_5.npz"),
    (damage_nbb, "nbb_mismatch", "movieA_3.npz"),
], ids=["garbage-value", "keys-list", "nbb-entry"])
def test_check_damaged_database(tmp_path, good_db, damage, code, segment):
    db_path = db_copy(good_db, tmp_path / "damaged")
    damage(db_path)
    rep = check([db_path], workers=1)
    assert rep.exit_code == 1
    assert [p.segment for p in problems(rep, code)] == [segment], problems(rep)
    assert check([good_db / DB], workers=1).exit_code == 0  # the original is untouched

    r = cli("db", "check", "--json", "--workers", 1, db_path)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["databases"][0]["path"] == str(db_path)
    assert {"code": code, "segment": segment} in [
        {k: p[k] for k in ("code", "segment")} for p in doc["databases"][0]["problems"]]
    r = cli("db", "check", db_path)
    assert r.exit_code == 1 and "FAIL" in r.output and segment in r.output


CHECK_CODE = "import sys; from memo.cli import main; main(['db', 'check', '--json', sys.argv[1]])"
READ_CODE = ("import sys; from memodb.store.reader import FeatureDB; "
             "FeatureDB(sys.argv[1])['movieA_1']")


def test_truncated_data_mdb(tmp_path, good_db):
    db_path = db_copy(good_db, tmp_path / "trunc")
    data = db_path / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    p = run_py(CHECK_CODE, db_path)
    assert p.returncode == 1, f"rc {p.returncode}: {p.stderr[-2000:]}"
    doc = json.loads(p.stdout)
    assert doc["ok"] is False
    assert_names(json.dumps(doc["databases"][0]["problems"]), "truncated")

    p = run_py(READ_CODE, db_path)
    assert p.returncode == 1 and "DatabaseError" in p.stderr, f"rc {p.returncode}: {p.stderr}"
    assert_names(p.stderr, db_path)


def test_check_foreign_database(tmp_path):
    """A database written like the original tools (msgpack-numpy, __keys__, nbb json, no
    manifest) is fine: exit code 0 with a no_manifest warning."""
    m = pytest.importorskip("msgpack_numpy")
    out = tmp_path / "foreign"
    (out / DB).mkdir(parents=True)
    env = lmdb.open(str(out / DB), map_size=1 << 24)
    nbb, stored = {}, {}
    with env.begin(write=True) as txn:
        for i in range(3):
            n = i + 1
            arrays = {"features": np.full((n, 342), i, np.float16),
                      "soft_labels": np.full((n, 8), 0.125, np.float16),
                      "confidence": np.full(n, 0.9, np.float16),
                      "frame_idxs": np.arange(n, dtype=np.int32)}
            key = f"movieF_{i}.npz"
            txn.put(key.encode(), m.packb(arrays, use_bin_type=True))
            nbb[key], stored[key] = n, arrays
        txn.put(b"__keys__", json.dumps(sorted(nbb)).encode())
    env.close()
    (out / NBB).write_text(json.dumps(nbb))

    rep = check([out / DB], workers=1)
    assert rep.exit_code == 0, problems(rep)
    assert [w.code for w in warnings(rep)] == ["no_manifest"]
    r = cli("db", "check", "--json", out / DB)
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True
    db = FeatureDB(out / DB)
    assert not db.memo_built
    for key, arrays in stored.items():
        for name, a in arrays.items():
            np.testing.assert_array_equal(db[key][name], a)


# --------------------------------------------------------------------------------------------
# 13. the reader


def test_reader_path_without_database(tmp_path):
    for path in (tmp_path / "nothing", tmp_path):
        with pytest.raises(DatabaseError) as ei:
            FeatureDB(path)
        assert_names(ei.value, path, "data.mdb")


def test_reader_missing_segment_and_garbage_value(tmp_path, good_db):
    db = FeatureDB(good_db / DB)
    with pytest.raises(KeyError) as ei:
        db["movieQ_9"]
    assert_names(ei.value, "movieQ_9.npz", good_db / DB)
    assert "movieQ_9" not in db

    db_path = db_copy(good_db, tmp_path / "damaged")
    damage_value(db_path)
    damaged = FeatureDB(db_path)
    with pytest.raises(DatabaseError) as ei:
        damaged["movieA_2"]
    assert_names(ei.value, "movieA_2.npz", db_path, "rebuild")
    assert len(damaged["movieA_1"]["features"]) == 4  # the other segments still read


def test_out_dir_is_a_file(tmp_path, npz_dir):
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(OutputExistsError) as ei:
        create_imgdb(npz_dir, out, workers=1)
    assert_names(ei.value, out, "is a file")
    assert out.read_text() == "not a folder"
