import json

import lmdb
import numpy as np
import pyarrow.parquet as pq
import pytest

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


# --- issue 16, item 3: manifest counts and frame selection ---------------------------------


def _rewrite(db, key: str, change) -> None:
    """Replace segment ``key``'s stored arrays by ``change(arrays)`` (a planted fault)."""
    from memodb.store.codec import decode_value

    close_all()
    env = lmdb.open(str(db), map_size=1 << 30)
    with env.begin(write=True) as txn:
        arrays = {k: np.array(v) for k, v in decode_value(txn.get(key.encode())).items()}
        txn.put(key.encode(), encode_value(change(arrays)))
    env.close()


def _edit_manifest(db, change) -> None:
    m = json.loads((db / "manifest.json").read_text())
    change(m)
    (db / "manifest.json").write_text(json.dumps(m))


def _found(report):
    return {(p.code, p.segment) for d in report.databases for p in d.problems}


def _messages(report, code):
    return [p.message for d in report.databases for p in d.problems if p.code == code]


def test_manifest_counts_are_verified(feature_db):
    clean = check([feature_db], workers=1)
    assert clean.ok
    frames = clean.databases[0].counts["frames"]
    m = json.loads((feature_db / "manifest.json").read_text())
    assert m["counts"]["frames_kept"] == frames
    _edit_manifest(feature_db, lambda m: m["counts"].update(frames_kept=frames + 3))
    report = check([feature_db], workers=1)
    assert report.exit_code == 1
    (msg,) = _messages(report, "count_mismatch")
    assert "frames_kept" in msg and str(frames + 3) in msg and str(frames) in msg
    # source_segments = segments + dropped_below_min_bb; min_bb 0 drops nothing
    _edit_manifest(feature_db, lambda m: m["counts"].update(frames_kept=frames,
                                                            dropped_below_min_bb=2))
    msgs = _messages(check([feature_db], workers=1), "count_mismatch")
    assert any("source_segments is 20" in t and "dropped_below_min_bb 2 = 22" in t for t in msgs)
    assert any("dropped_below_min_bb is 2" in t and "min_bb 0" in t for t in msgs)
    _edit_manifest(feature_db, lambda m: m["counts"].update(dropped_below_min_bb=0,
                                                            frames_seen=frames - 1))
    msgs = _messages(check([feature_db], workers=1), "count_mismatch")
    assert len(msgs) == 1 and "frames_seen" in msgs[0]
    _edit_manifest(feature_db, lambda m: m["counts"].update(frames_seen="many"))
    assert ("manifest_invalid", None) in _found(check([feature_db], workers=1))


def test_frame_selection_is_verified_per_segment(h5_root, tmp_path):
    db = create_imgdb(h5_root, tmp_path / "out", max_bb=8, min_bb=1, workers=1).path
    report = check([db], workers=2)
    assert report.ok, [str(p) for p in report.databases[0].problems]
    keys = sorted(json.loads((db.parent / "nbb_th0.5_max8_min1.json").read_text()))
    rev, many, low, edge, few = keys[:5]
    _rewrite(db, rev, lambda a: {k: v[::-1] for k, v in a.items()})
    _rewrite(db, many, lambda a: {k: np.concatenate([v, v[:1]]) if k != "frame_idxs" else
                                  np.concatenate([v, [v[-1] + 1]]) for k, v in a.items()})
    def conf(value):
        def change(a):
            a["confidence"][1] = value
            return a
        return change
    _rewrite(db, low, conf(0.25))
    _rewrite(db, edge, conf(0.5))  # strictly above conf_th: 0.5 itself is not kept
    _rewrite(db, few, lambda a: {k: v[:0] for k, v in a.items()})
    report = check([db], workers=2)
    assert report.exit_code == 1
    found = _found(report)
    for expected in [("frames_out_of_order", rev), ("frames_over_max_bb", many),
                     ("frame_below_conf_th", low), ("frame_below_conf_th", edge),
                     ("frames_under_min_bb", few)]:
        assert expected in found, expected
    selection = {"frames_out_of_order", "frames_over_max_bb", "frame_below_conf_th",
                 "frames_under_min_bb"}
    assert {s for c, s in found if c in selection} == {rev, many, low, edge, few}
    (msg,) = _messages(report, "frames_over_max_bb")
    assert "9 frames" in msg and "max_bb 8" in msg
    assert any("0.25" in m and "conf_th 0.5" in m for m in _messages(report, "frame_below_conf_th"))


def test_selection_is_checked_with_the_manifest_options(h5_root, tmp_path):
    """The options the manifest records are the rule: a segment fine at max_bb 36 breaks a
    manifest that says 4; options not recorded (another tool): not checked."""
    db = create_imgdb(h5_root, tmp_path / "out", workers=1).path
    _edit_manifest(db, lambda m: m["options"].update(max_bb=4))
    assert ("frames_over_max_bb", "No0000.Movie_0_1.npz") in _found(check([db], workers=1))
    _edit_manifest(db, lambda m: m["options"].update(max_bb="4"))
    assert ("manifest_invalid", None) in _found(check([db], workers=1))
    _edit_manifest(db, lambda m: m.pop("options"))
    assert not {c for c, _ in _found(check([db], workers=1))} & {"frames_over_max_bb",
                                                                  "manifest_invalid"}


def test_build_refuses_frames_out_of_time_order(tmp_path):
    """What the check rejects, the build refuses: kept frames must be in time order."""
    from conftest import write_npz
    from memodb.errors import BadInputsError

    write_npz(tmp_path / "npz" / "a_1.npz", n=4)
    write_npz(tmp_path / "npz" / "a_2.npz", n=4, frame_idxs=np.array([0, 2, 1, 3], np.int32))
    with pytest.raises(BadInputsError) as exc:
        create_imgdb(tmp_path / "npz", tmp_path / "out", workers=1)
    text = str(exc.value)
    assert "a_2" in text and "time order" in text and "a_1" not in text
    assert not (tmp_path / "out" / "feat_th0.5_max36_min0").exists()


def _chunk(path):
    """(chunk check, value-by-value check) of every segment of the database as one chunk."""
    from memodb.checks import feature as F
    from memodb.store.manifest import read_manifest
    o = read_manifest(path)["options"]
    selection = (float(o["conf_th"]), o["max_bb"], o.get("min_bb") or 0)
    close_all()
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [k.decode() for k in txn.cursor().iternext(values=False) if k != b"__keys__"]
    with env.begin(buffers=True) as txn:
        each = F._inspect_values(txn, keys, selection)
    env.close()
    return keys, F._inspect_chunk(str(path), keys, selection), each


def test_clean_chunk_is_screened_with_the_same_result(h5_root, tmp_path):
    r = create_imgdb(h5_root, tmp_path / "out", workers=1)
    keys, (kind, *got), each = _chunk(r.path)
    assert kind == "screened"
    digests, records, lengths, groups = got
    assert digests == [d for _, d, _, _ in each]
    assert records == b"".join(b"%s\0%s" % (k.encode(), d) for k, d, _, _ in each)
    assert lengths == [info[1] for _, _, info, _ in each]
    assert groups == {each[0][2][0]: keys}  # one layout, every key in order
    assert not any(info[3] or info[4] for _, _, info, _ in each)  # nothing wrong


@pytest.mark.parametrize("damage", ["nan_soft_label", "frames_swapped", "low_confidence"])
def test_a_wrong_segment_sends_its_chunk_back_to_the_value_checks(h5_root, tmp_path, damage):
    """Each screen test (finite floats, frame order within a segment, the lowest confidence)
    catches its damage; the value-by-value check then names the segment."""
    from memodb.store.codec import decode_value
    r = create_imgdb(h5_root, tmp_path / "out", workers=1)
    keys, _, each = _chunk(r.path)
    key = next(k for k, _, info, _ in each if info[1] >= 2)
    close_all()
    env = lmdb.open(str(r.path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        arrays = {n: np.array(a) for n, a in decode_value(txn.get(key.encode())).items()}
        if damage == "nan_soft_label":
            arrays["soft_labels"][1, 3] = np.nan
        elif damage == "frames_swapped":
            arrays["frame_idxs"][[0, 1]] = arrays["frame_idxs"][[1, 0]]
        else:
            arrays["confidence"][1] = 0.1
        txn.put(key.encode(), encode_value(arrays))
    env.close()
    _, (kind, got), each = _chunk(r.path)
    assert kind == "values" and got == each
    info = next(info for k, _, info, _ in each if k == key)
    assert info[3] == ["soft_labels"] if damage == "nan_soft_label" else \
        [c for c, _ in info[4]] == [{"frames_swapped": "frames_out_of_order",
                                     "low_confidence": "frame_below_conf_th"}[damage]]
