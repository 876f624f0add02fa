"""memo prep's pieces on hand-made input: subtitle parsing and normalisation, the tracker, the
active-speaker rules (scale-free and the original pixel rule, bugs included)."""
from __future__ import annotations

import numpy as np
import pytest

from memodb.errors import BadInputError

pytest.importorskip("pysubs2")
pytest.importorskip("charset_normalizer")

from memoprep import subtitles  # noqa: E402
from memoprep.speaker import TrackFaces, active_speaker, lip_gap  # noqa: E402
from memoprep.track import track  # noqa: E402
from memoprep.vad import energy_vad  # noqa: E402

SRT = """2
00:00:05,000 --> 00:00:07,500
<i>Second</i> line, in time order!

1
00:00:01,000 --> 00:00:03,000
First line...

3
00:00:08,000 --> 00:00:08,600
Too short.

4
00:00:09,000 --> 00:00:11,000
♪ ♪
"""


def test_srt_sorted_numbered_filtered(tmp_path):
    (tmp_path / "m.srt").write_text(SRT, encoding="utf-8")
    lines, dropped = subtitles.filter_lines(subtitles.read_subtitles(tmp_path / "m.srt"))
    assert [(ln.n, ln.start, ln.end, ln.text) for ln in lines] == [
        (1, 1.0, 3.0, "First line..."), (2, 5.0, 7.5, "Second line, in time order!")]
    assert dropped == {"empty_text": 1, "under_1s": 1}


def test_ass_markup_and_bilingual_lines(tmp_path):
    ass = ("[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize"
           "\nStyle: Default,Arial,20\n\n[Events]\nFormat: Layer, Start, End, Style, Name, "
           "MarginL, MarginR, MarginV, Effect, Text\n"
           "Dialogue: 0,0:00:01.00,0:00:03.00,Default,,0,0,0,,{\\fs12}你好，朋友\\N{\\i1}Hello,"
           " my friend{\\i0}\n"
           "Dialogue: 0,0:00:04.00,0:00:06.00,Default,,0,0,0,,Café — \"naïve\" #1 (yes)\n")
    (tmp_path / "m.ass").write_text(ass, encoding="utf-8")
    lines, _ = subtitles.filter_lines(subtitles.read_subtitles(tmp_path / "m.ass"))
    assert [ln.text for ln in lines] == ["Hello, my friend", 'Caf "nave" 1 yes']


def test_gbk_subtitles_are_detected(tmp_path):
    text = ("1\n00:00:01,000 --> 00:00:03,000\n你好，世界。这是第一句话\\NHello there!\n\n"
            "2\n00:00:04,000 --> 00:00:06,000\n我们走吧，朋友们\\NLet us go, friends.\n")
    (tmp_path / "m.srt").write_bytes(text.encode("gbk"))
    with pytest.raises(UnicodeDecodeError):
        (tmp_path / "m.srt").read_text(encoding="utf-8")
    lines, _ = subtitles.filter_lines(subtitles.read_subtitles(tmp_path / "m.srt"))
    assert [ln.text for ln in lines] == ["Hello there!", "Let us go, friends."]
    given, _ = subtitles.filter_lines(subtitles.read_subtitles(tmp_path / "m.srt", "gbk"))
    assert given == lines


def test_unknown_encoding_named(tmp_path):
    path = tmp_path / "m.srt"
    path.write_bytes(bytes(range(0x80, 0x100)) * 8)
    with pytest.raises(BadInputError, match="unknown encoding") as e:
        subtitles.read_subtitles(path)
    assert str(path) in str(e.value) and "--sub-encoding" in str(e.value)


def test_tracker_follows_boxes_and_starts_new_tracks():
    a = [(10, 10, 50, 50), (200, 10, 240, 50)]
    moved = [(14, 12, 54, 52), (200, 10, 240, 50)]
    frames = [a, list(reversed(moved)), [], [moved[0]], [(100, 100, 140, 140)], [moved[0]]]
    assert track(frames) == [[0, 1], [1, 0], [], [0], [2], [0]]
    # a track unseen for more than 2 frames ends: the same place gives a new id
    assert track([[a[0]], [], [], [], [a[0]]]) == [[0], [], [], [], [1]]


def _face(gaps, scale=1.0, x0=0.0, widen=None):
    """Hand-made 68 landmarks per frame: eyes 40 px apart, inner lips 62 / 66 ``gap`` apart;
    ``widen`` moves the mouth corners (60 / 64) sideways per frame."""
    out = []
    for k, g in enumerate(gaps):
        lm = np.zeros((68, 2), np.float32)
        lm[36:42] = (30, 40)
        lm[42:48] = (70, 40)
        lm[51] = (50, 70)
        lm[62] = (50, 75)
        lm[66] = (50, 75 + g)
        w = widen[k] if widen is not None else 0.0
        lm[60] = (40 - w, 76)
        lm[64] = (60 + w, 76)
        out.append(lm * scale + (x0, 0))
    return np.stack(out)


def _tracks(speaker_gaps, scale=1.0, widen=None):
    n = len(speaker_gaps)
    frames = np.arange(1, n + 1)
    still = TrackFaces(0, frames, _face([0.5] * n, scale, 0), np.full(n, 0.99))
    talker = TrackFaces(1, frames, _face(speaker_gaps, scale, 200, widen), np.full(n, 0.99))
    return [still, talker]


GAPS = [0, 7, 1, 7, 0, 6, 1, 7, 0, 7] * 2  # px at scale 1, opening and closing
VOICED = np.ones(200, dtype=bool)


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_scaled_rule_finds_the_talker_at_any_resolution(scale):
    d = active_speaker(_tracks(GAPS, scale), VOICED, "scaled")
    assert d.face_id == 1
    assert d.counts[0]["changing"] == 0 and d.counts[1]["voiced_changing"] > 0
    assert np.allclose(lip_gap(_face(GAPS, scale)), lip_gap(_face(GAPS)))


def test_nobody_speaks_without_voice_or_without_movement():
    assert active_speaker(_tracks(GAPS), np.zeros(200, bool), "scaled").face_id is None
    assert active_speaker(_tracks([0.5] * 20), VOICED, "scaled").face_id is None
    assert active_speaker(_tracks([0.5] * 20), VOICED, "original").face_id is None


def test_original_rule_depends_on_pixels():
    assert active_speaker(_tracks(GAPS, 1.0), VOICED, "original").face_id == 1
    # at half resolution every change is below 4 px: the original rule finds nobody
    small = active_speaker(_tracks(GAPS, 0.5), VOICED, "original")
    assert small.face_id is None and small.counts[1]["change"] == 0


def test_original_rule_width_uses_y_coordinates():
    """The original's mouth width is y64 - y60: a mouth that only widens does not change."""
    widen = [0, 6] * 10
    wide = _tracks([6.0] * 20, widen=widen)  # open all along, only the width moves
    d = active_speaker(wide, VOICED, "original")
    assert d.counts[1]["change"] == 0


def test_original_rule_ranks_several_faces():
    n = len(GAPS)
    frames = np.arange(1, n + 1)
    big = TrackFaces(0, frames, _face([g * 1.5 for g in GAPS], 1, 0), np.full(n, 0.99))
    small = TrackFaces(1, frames, _face([g if k % 4 else 0 for k, g in enumerate(GAPS)], 1,
                                        200), np.full(n, 0.99))
    d = active_speaker([big, small], VOICED, "original")
    assert min(d.counts[0].values()) > 0 and min(d.counts[1].values()) > 0
    assert d.face_id == 0


def test_energy_vad_is_a_plain_threshold():
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 3, 16000)).astype(np.int16)
    x[4000:8000] = (rng.normal(0, 3000, 4000)).astype(np.int16)
    v = energy_vad(x)
    assert len(v) == 100
    assert v[25:50].all() and not v[:22].any() and not v[50:].any()


ASS_HEADER = (b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, "
              b"Fontsize\nStyle: Default,Arial,16\n\n[Events]\nFormat: Layer, Start, End, "
              b"Style, Name, MarginL, MarginR, MarginV, Effect, Text\n")


def _movie_with_subtitle_streams(path, streams):
    """A 3 s black movie with text subtitle streams (lists of (start, end, text))."""
    av = pytest.importorskip("av")
    from fractions import Fraction

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        subs = []
        for _ in streams:
            s = c.add_stream("subrip")
            s.codec_context.subtitle_header = ASS_HEADER
            s.time_base = Fraction(1, 1000)
            subs.append(s)
        for _ in range(30):
            for p in v.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8),
                                                         format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        for s, events in zip(subs, streams):
            for start, end, text in sorted(events):  # a container's packets are in order
                p = av.Packet(text.encode())
                p.stream, p.pts, p.dts = s, int(start * 1000), int(start * 1000)
                p.duration = int((end - start) * 1000)
                c.mux(p)


def test_longest_embedded_subtitle_stream(tmp_path):
    movie = tmp_path / "m.mkv"
    _movie_with_subtitle_streams(movie, [[(0.2, 1.0, "Short one")],
                                         [(1.5, 2.9, "<i>Second</i> line"),
                                          (0.1, 1.4, "First line")]])
    lines, dropped, origin = subtitles.movie_lines(movie)
    assert origin == "embedded"
    assert [(ln.n, ln.start, ln.text) for ln in lines] == [(1, 0.1, "First line"),
                                                          (2, 1.5, "Second line")]
    # a subtitle file beside the movie wins
    (tmp_path / "m.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\nFrom the file\n")
    lines, _, origin = subtitles.movie_lines(movie)
    assert origin == "m.srt" and [ln.text for ln in lines] == ["From the file"]


def test_movie_without_subtitles_named(tmp_path):
    movie = tmp_path / "quiet.mkv"
    _movie_with_subtitle_streams(movie, [])
    with pytest.raises(BadInputError, match="no subtitles") as e:
        subtitles.movie_lines(movie)
    assert str(movie) in str(e.value) and "quiet.srt" in str(e.value)
