"""One decode pass over a movie with PyAV: for each subtitle line, its frames at 10 fps and
its audio as 16 kHz mono 16-bit samples. The pass seeks to a line when the gap before it is
long and decodes straight through short gaps; nothing outside the lines is converted."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FPS = 10
SAMPLE_RATE = 16000
SEEK_GAP_S = 2.0  # decode through gaps shorter than this instead of seeking


@dataclass
class Clip:
    """One line's media: ``frames`` (n, H, W, 3) uint8 RGB at ``FPS``, ``small`` the same
    frames at most ``det_width`` wide (for detection), ``audio`` int16 mono at 16 kHz."""
    frames: list
    small: list
    audio: np.ndarray


def frame_times(start: float, end: float) -> list[float]:
    """The sampling times of a line: ``start + k / FPS`` for every k with the time before
    ``end`` (frames numbered from 1)."""
    n = max(1, math.ceil((end - start) * FPS - 1e-6))
    return [start + k / FPS for k in range(n)]


def small_size(width: int, height: int, det_width: int) -> tuple[int, int]:
    if width <= det_width:
        return width, height
    return det_width, max(2, round(height * det_width / width / 2) * 2)


def read_clips(path, lines, det_width: int = 640):
    """Yield ``(line, Clip)`` for each line (sorted by start) of one movie, in one pass."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        video.thread_type = "AUTO"
        streams = [video] + ([audio] if audio is not None else [])
        sw, sh = small_size(video.codec_context.width, video.codec_context.height, det_width)
        it, last = None, None  # the running demux and the time it has reached
        pending_v, pending_a = [], []  # decoded frames past the previous line's end
        for line in lines:
            if it is None or line.start - (last or 0.0) > SEEK_GAP_S or line.start < (last or 0):
                container.seek(max(0, int(line.start / video.time_base)), stream=video,
                               backward=True, any_frame=False)
                it = _decoded(container, streams)
                pending_v, pending_a = [], []
            times = frame_times(line.start, line.end)
            frames, small, prev = [], [], None
            ti = 0
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            chunks, t0 = [], None
            v_done, a_done = False, audio is None

            def add(fr):
                full = fr.to_ndarray(format="rgb24")
                frames.append(full)
                small.append(full if (sw, sh) == (full.shape[1], full.shape[0]) else
                             fr.to_ndarray(format="rgb24", width=sw, height=sh))

            def take_video(fr):
                nonlocal ti, prev
                t = fr.time
                while ti < len(times) and t > times[ti] + 1e-6:
                    # the frame shown at times[ti] is the last one at or before it
                    add(prev if prev is not None else fr)
                    ti += 1
                prev = fr

            def take_audio(t, fr):
                nonlocal t0
                if t + fr.samples / fr.sample_rate < line.start:
                    return
                if t0 is None:
                    t0 = t
                chunks.extend(resampler.resample(fr))

            for fr in pending_v:
                take_video(fr)
            for t, fr in pending_a:
                take_audio(t, fr)
            pending_v, pending_a = [], []
            while not (v_done and a_done):
                try:
                    kind, fr = next(it)
                except StopIteration:
                    break
                if fr.time is None:
                    continue
                last = fr.time
                if kind == "video":
                    if ti >= len(times):
                        pending_v.append(fr)
                        v_done = True
                        continue
                    take_video(fr)
                else:
                    t = fr.time
                    if t + fr.samples / fr.sample_rate > line.end:
                        pending_a.append((t, fr))  # the next line may start inside it
                    if t > line.end:
                        a_done = True
                        continue
                    take_audio(t, fr)
            if prev is not None:
                while ti < len(times):  # the movie ended inside the line: its last frame
                    add(prev)
                    ti += 1
            chunks.extend(resampler.resample(None))
            yield line, Clip(frames, small, _cut(chunks, t0, line.start, line.end))


def _decoded(container, streams):
    for packet in container.demux(streams):
        for fr in packet.decode():
            yield packet.stream.type, fr


def _cut(chunks, t0, start: float, end: float) -> np.ndarray:
    """The samples from ``start`` to ``end`` of resampled frames whose first sample is at t0."""
    n = round((end - start) * SAMPLE_RATE)
    if not chunks or t0 is None:
        return np.zeros(n, dtype=np.int16)
    pcm = np.concatenate([c.to_ndarray().reshape(-1) for c in chunks]).astype(np.int16)
    off = round((start - t0) * SAMPLE_RATE)
    if off < 0:
        pcm, off = np.concatenate([np.zeros(-off, np.int16), pcm]), 0
    out = pcm[off:off + n]
    return np.pad(out, (0, n - len(out))) if len(out) < n else out


def probe(path) -> dict:
    """Width, height, duration and whether the movie has audio; a PyAV error if unreadable."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        v = container.streams.video[0]
        dur = container.duration / 1e6 if container.duration else None
        return {"width": v.codec_context.width, "height": v.codec_context.height,
                "duration_s": dur, "audio": bool(container.streams.audio)}


def write_wav(path, samples: np.ndarray) -> None:
    """16 kHz mono 16-bit PCM wav."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())
