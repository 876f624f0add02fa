"""memo prep's speed: frames per second and real-time factor of ``prep`` (one decode pass per
chunk of lines, detection on frames at most 640 px wide) against the naive pipeline (each line
cut into its own clip with a re-encode, as ``ffmpeg -ss S -t D`` did, the clip decoded at
10 fps, detection and landmarks at full resolution), on the same movie and workers.

    python -m bench.prep_speed [--seconds 30] [--sizes 640x360,1280x720] [--repeat 3]
                               [--workers N]

The movie is the test movie (tests/data/prep) scaled to each size and repeated until its
subtitle lines cover ``--seconds``.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from memodb.parallel import ordered_map

from .common import parser, ratio, report, scratch, timed

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "prep"
MOVIE = "twofaces"


def make_movie(path: Path, size: tuple, seconds: float) -> list:
    """The test movie scaled to ``size`` and repeated until its kept lines cover ``seconds``;
    writes ``path`` and its .srt, returns the lines (start, end)."""
    import json

    import av

    truth = json.loads((DATA / "truth.json").read_text())
    kept = [ln for ln in truth["lines"] if ln["kept"]]
    per_copy = sum(ln["end"] - ln["start"] for ln in kept)
    copies = max(1, math.ceil(seconds / per_copy))
    with av.open(str(DATA / f"{MOVIE}.mp4")) as src:
        vs = src.streams.video[0]
        frames = [f.to_ndarray(format="rgb24", width=size[0], height=size[1])
                  for f in src.decode(vs)]
        rate = int(vs.average_rate)
    with av.open(str(DATA / f"{MOVIE}.mp4")) as src:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in src.decode(audio=0)])
        arate = src.streams.audio[0].rate
    length = len(frames) / rate
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=rate)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        v.options = {"preset": "veryfast", "crf": "23"}
        a = out.add_stream("aac", rate=arate)
        a.layout = "mono"
        for _ in range(copies):
            for f in frames:
                for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(p)
        for p in v.encode():
            out.mux(p)
        audio = np.tile((pcm * 32767).clip(-32767, 32767).astype(np.int16)
                        if pcm.dtype.kind == "f" else pcm.astype(np.int16), copies)
        for j in range(0, len(audio), 1024):
            fr = av.AudioFrame.from_ndarray(audio[None, j:j + 1024], format="s16",
                                            layout="mono")
            fr.sample_rate, fr.pts = arate, j
            for p in a.encode(fr):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    lines, srt = [], []
    for c in range(copies):
        for ln in kept:
            s, e = ln["start"] + c * length, ln["end"] + c * length
            lines.append((s, e))
            srt.append(f"{len(lines)}\n{_ts(s)} --> {_ts(e)}\n{ln['text']}\n")
    path.with_suffix(".srt").write_text("\n".join(srt), encoding="utf-8")
    return lines


def _ts(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


_DET = None


def naive_segment(movie: str, tmp: str, task) -> int:
    """One line the naive way: cut into a clip (video and audio re-encoded), decode the clip at
    10 fps, detect at full resolution, landmarks. Returns the frames processed."""
    import av
    import cv2

    from memoprep.faces import Detector

    global _DET
    if _DET is None:
        _DET = Detector()
    i, (start, end) = task
    clip = Path(tmp) / f"clip{i}.mp4"
    with av.open(movie) as src, av.open(str(clip), "w") as out:
        vin, ain = src.streams.video[0], src.streams.audio[0]
        v = out.add_stream("libx264", rate=int(vin.average_rate))
        v.width, v.height, v.pix_fmt = vin.codec_context.width, vin.codec_context.height, \
            "yuv420p"
        a = out.add_stream("aac", rate=ain.rate)
        a.layout = "mono"
        src.seek(int(start / vin.time_base), stream=vin, backward=True)
        for fr in src.decode(vin, ain):
            if fr.time is None or fr.time < start:
                continue
            if fr.time >= end:
                if isinstance(fr, av.VideoFrame):
                    break
                continue
            if isinstance(fr, av.VideoFrame):
                for p in v.encode(av.VideoFrame.from_ndarray(fr.to_ndarray(format="rgb24"),
                                                             format="rgb24")):
                    out.mux(p)
            else:
                fr.pts = None
                for p in a.encode(fr):
                    out.mux(p)
        for s in (v, a):
            for p in s.encode():
                out.mux(p)
    n, want = 0, 0.0
    with av.open(str(clip)) as c:
        for fr in c.decode(video=0):
            if fr.time is None or fr.time + 1e-6 < want:
                continue
            want += 0.1
            rgb = fr.to_ndarray(format="rgb24")
            faces = _DET.detect(rgb, 1.0)
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            for f in faces:
                _DET.landmarks(gray, f)
            n += 1
    clip.unlink()
    return n


def run_memo(movie: Path, out: Path, workers: int):
    from memoprep import prep

    return prep(movie, out, workers=workers)


def run_naive(movie: Path, lines: list, tmp: Path, workers: int) -> int:
    tmp.mkdir(parents=True, exist_ok=True)
    return sum(ordered_map(partial(naive_segment, str(movie), str(tmp)), list(enumerate(lines)),
                           workers))


def main(argv=None) -> str:
    ap = parser(__doc__, segments=0)
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="seconds of subtitle lines in the movie")
    ap.add_argument("--sizes", default="640x360,1280x720", help="movie sizes, WxH,...")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (best kept)")
    args = ap.parse_args(argv)
    rows = []
    with scratch(args, "prep") as d:
        for size in args.sizes.split(","):
            w, h = (int(x) for x in size.split("x"))
            movie = d / f"m{w}" / f"movie{w}.mp4"
            movie.parent.mkdir()
            lines = make_movie(movie, (w, h), args.seconds)
            line_s = sum(e - s for s, e in lines)
            t_memo = t_naive = math.inf
            for r in range(args.repeat):  # round robin, best run kept (a shared machine)
                t, res = timed(run_memo, movie, d / f"out{w}-{r}", args.workers)
                assert not res.bad, res.bad
                t_memo = min(t_memo, t)
                t, n_naive = timed(run_naive, movie, lines, d / f"naive{w}", args.workers)
                t_naive = min(t_naive, t)
            frames = sum(s["frames"] for s in _segments(d / f"out{w}-0"))
            rows.append([f"{w}x{h}", f"{len(lines)} lines, {line_s:.0f} s, {frames} frames",
                         f"{frames / t_memo:.1f}", f"{line_s / t_memo:.2f}x",
                         f"{n_naive / t_naive:.1f}", f"{line_s / t_naive:.2f}x",
                         ratio((frames / t_memo) / (n_naive / t_naive))])
    notes = [f"{args.workers} worker process(es) for both; memo prep does everything (decode, "
             "detection at <= 640 px, landmarks, crops, tracks, VAD, speaker, files); the naive "
             "pipeline only cuts (video + audio re-encoded), decodes at 10 fps and runs "
             "detection at full resolution and landmarks (no crops, VAD or files)",
             "real time = seconds of subtitle lines / wall seconds; the test movie "
             "(tests/data/prep) scaled and repeated; model loading included in both; best of "
             f"{args.repeat} runs of each, run round robin"]
    return report("prep_speed", "memo prep: frames per second against per-line cut + "
                  "full-resolution detection",
                  ["movie", "work", "memo frames/s", "memo x real time", "naive frames/s",
                   "naive x real time", "memo / naive"], rows, notes)


def _segments(out: Path) -> list:
    import json

    return [s for p in (out / ".prep").glob("*.json")
            for s in json.loads(p.read_text())["segments"]]


if __name__ == "__main__":
    main()
