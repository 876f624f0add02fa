"""memo prep's pieces on hand-made input: subtitle parsing and normalisation, the tracker, the
active-speaker rules (scale-free and the original pixel rule, bugs included), the one-pass
decoder on a time-coded movie."""
from __future__ import annotations

import math

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


def _timecoded_movie(path):
    """10 s at 25 fps whose frame k is gray level 2 (k mod 128), with a 20 ms tone burst every
    second."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.options = {"qp": "0", "g": "50"}
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for k in range(250):
            img = np.full((48, 64, 3), 2 * (k % 128), np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        t = np.arange(160000) / 16000
        pcm = np.where((t % 1.0) < 0.02, 12000 * np.sin(2 * np.pi * 1000 * t), 0)
        pcm = pcm.astype(np.int16)
        for j in range(0, len(pcm), 1024):
            fr = av.AudioFrame.from_ndarray(pcm[None, j:j + 1024], format="s16", layout="mono")
            fr.sample_rate, fr.pts = 16000, j
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode():
            c.mux(p)


def test_one_pass_decode_gives_each_line_its_frames_and_audio(tmp_path):
    """Adjacent lines (decoded straight on), an overlapping one and one after a long gap (both
    reached by a seek): every 10 fps frame is the one shown at its time, and the audio's
    bursts fall where the movie has them."""
    from memoprep.media import frame_times, read_clips
    from memoprep.subtitles import Line

    movie = tmp_path / "t.mp4"
    _timecoded_movie(movie)
    lines = [Line(1, 0.5, 1.7, "a"), Line(2, 1.7, 2.9, "b"), Line(3, 2.5, 3.6, "c"),
             Line(4, 7.0, 8.25, "d")]
    clips = list(read_clips(movie, lines))
    assert [ln.n for ln, _ in clips] == [1, 2, 3, 4]
    for line, clip in clips:
        times = frame_times(line.start, line.end)
        assert len(clip.frames) == len(times) == math.ceil((line.end - line.start) * 10 - 1e-6)
        got = [int(round(f[..., 0].mean())) for f in clip.frames]
        want = [2 * (int(np.floor(t * 25 + 1e-6)) % 128) for t in times]
        assert np.abs(np.array(got) - want).max() <= 1, (line.n, got, want)  # a frame off: 2
        assert len(clip.audio) == round((line.end - line.start) * 16000)
        env = np.abs(clip.audio.astype(np.float32))
        for second in range(math.ceil(line.start), math.ceil(line.end - 0.05)):
            at = int((second - line.start) * 16000)
            burst = env[max(0, at - 800):at + 1600]
            peak = (np.argmax(burst) + max(0, at - 800) - at) / 16000
            assert -0.01 <= peak <= 0.04, (line.n, second, peak)
            assert env[at + 1600:at + 8000].max() < 0.1 * burst.max()
