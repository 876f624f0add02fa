"""Generates the test movie of ``memo prep`` (tests/data/prep/): two real faces side by side
(scikit-image's astronaut, matplotlib's grace_hopper.jpg), lines spoken by espeak-ng, the
speaker's lower face warped open in step with the speech envelope, one voice-over line that
nobody's mouth follows, a line under 1 s, the subtitles (.srt) and truth.json (who speaks in
each line, the warp per frame, the speech spans). The output is committed: tests only read it.

Needs, besides the prep extra: scikit-image, matplotlib, espeak-ng (Debian package).
    python tests/data/make_prep_movie.py [OUT_DIR]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

W, H, FPS, RATE = 384, 216, 25, 16000
MAX_OPEN = 7.0  # pixels the jaw drops at the loudest speech
NAME = "twofaces"
# (start, end, who speaks: "left" / "right" / None for the voice-over, text)
LINES = [(0.5, 3.3, "left", "Hello there, this is the first line."),
         (3.8, 6.6, "right", "And now the second person answers you."),
         (7.1, 9.9, None, "A narrator speaks over the scene."),
         (10.2, 10.8, None, "Too short.")]


def faces():
    """The two face images (RGB, H x W/2) and the 68 landmarks of each, in canvas pixels."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    from memoprep.faces import Detector

    det = Detector()
    out = []
    for img in (skimage.data.astronaut(),
                np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))):
        f = det.detect(img, 1.0)[0]
        x0, y0, x1, y1 = f.box
        cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, (y1 - y0) * 1.9  # head and shoulders
        box = (cx - s * (W / 2) / H / 2, cy - s / 2, cx + s * (W / 2) / H / 2, cy + s / 2)
        crop = Image.fromarray(img).crop(tuple(int(round(v)) for v in box))
        crop = np.asarray(crop.resize((W // 2, H), Image.BICUBIC))
        g = np.asarray(Image.fromarray(crop).convert("L"))
        f2 = det.detect(crop, 1.0)[0]
        f2.landmarks = det.landmarks(g, f2)
        out.append((crop, f2.landmarks))
    return out


def open_mouth(img: np.ndarray, lm: np.ndarray, a: float) -> np.ndarray:
    """The lower face moved down by ``a`` px under the lips (fading out sideways and below the
    chin), the gap filled with a dark mouth."""
    import cv2

    if a < 0.25:
        return img
    y_lip = (lm[62, 1] + lm[66, 1]) / 2
    x_l, x_r, chin = lm[4, 0], lm[12, 0], lm[8, 1]
    xs, ys = np.meshgrid(np.arange(img.shape[1], dtype=np.float32),
                         np.arange(img.shape[0], dtype=np.float32))
    wx = np.clip(1 - np.abs(xs - (x_l + x_r) / 2) / ((x_r - x_l) / 2), 0, 1) ** 0.5
    below = np.clip(1 - (ys - chin) / 25, 0, 1)
    d = a * wx * below
    map_y = np.where(ys > y_lip, ys - d, ys).astype(np.float32)
    out = cv2.remap(img, xs, map_y, cv2.INTER_LINEAR)
    mouth_w = (lm[54, 0] - lm[48, 0]) / 2 * 0.9
    shape = np.clip(1 - ((xs - (lm[48, 0] + lm[54, 0]) / 2) / mouth_w) ** 2, 0, 1) ** 0.5
    inside = (ys > y_lip) & (ys < y_lip + d * shape)
    out[inside] = (60, 20, 25)
    return out


def speak(text: str, tmp: Path) -> np.ndarray:
    wav = tmp / "s.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
    with wave.open(str(wav)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32)
        rate = w.getframerate()
    t = np.arange(0, len(x) / rate, 1 / RATE)
    return np.interp(t, np.arange(len(x)) / rate, x).astype(np.float32)


def main(out_dir: Path) -> None:
    import av

    out_dir.mkdir(parents=True, exist_ok=True)
    dur = 11.5
    audio = np.zeros(int(dur * RATE), np.float32)
    who = np.full(int(dur * RATE), -1)
    with tempfile.TemporaryDirectory() as tmp:
        for start, end, speaker, text in LINES:
            s = speak(text, Path(tmp))[: int((end - start - 0.2) * RATE)]
            i = int((start + 0.1) * RATE)
            audio[i:i + len(s)] = s
            who[i:i + len(s)] = {"left": 0, "right": 1, None: 2}[speaker]
    env_hop = RATE // 100
    rms = np.sqrt(np.convolve(audio ** 2, np.ones(4 * env_hop) / (4 * env_hop), "same"))
    speech = rms > 0.02 * rms.max()
    (left, lm_l), (right, lm_r) = faces()
    truth = {"movie": NAME, "fps_out": 10, "max_open_px": MAX_OPEN, "lines": []}
    container = av.open(str(out_dir / f"{NAME}.mp4"), "w")
    vs = container.add_stream("libx264", rate=FPS)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    vs.options = {"crf": "26", "preset": "medium"}
    as_ = container.add_stream("aac", rate=RATE)
    as_.layout = "mono"
    warp = []
    for k in range(int(dur * FPS)):
        t = k / FPS
        i = int(t * RATE)
        env = rms[i:i + RATE // FPS].mean() / rms.max()
        a = min(1.0, env * 2.5) * MAX_OPEN
        who_now = np.bincount(who[i:i + RATE // FPS] + 1, minlength=4).argmax() - 1
        frame = np.concatenate([open_mouth(left, lm_l, a if who_now == 0 else 0),
                                open_mouth(right, lm_r, a if who_now == 1 else 0)], axis=1)
        warp.append((t, a if who_now == 0 else 0.0, a if who_now == 1 else 0.0))
        for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                      format="rgb24")):
            container.mux(p)
    for p in vs.encode():
        container.mux(p)
    pcm = np.clip(audio, -32767, 32767).astype(np.int16)
    for j in range(0, len(pcm), 1024):
        fr = av.AudioFrame.from_ndarray(pcm[None, j:j + 1024], format="s16", layout="mono")
        fr.sample_rate, fr.pts = RATE, j
        for p in as_.encode(fr):
            container.mux(p)
    for p in as_.encode():
        container.mux(p)
    container.close()
    srt = []
    for n, (start, end, speaker, text) in enumerate(LINES, 1):
        srt.append(f"{n}\n{_ts(start)} --> {_ts(end)}\n{text}\n")
        times = [start + k / 10 for k in range(int(np.ceil((end - start) * 10 - 1e-6)))]
        col = {"left": 1, "right": 2}.get(speaker)
        truth["lines"].append({
            "n": n, "start": start, "end": end, "text": text,
            "speaker": speaker, "kept": end - start >= 1.0,
            "warp_px": [round(float(np.interp(t, [w[0] for w in warp],
                                              [w[col] for w in warp])), 2) if col else 0.0
                        for t in times],
            "speech_10ms": "".join("1" if speech[int((start + j / 100) * RATE)] else "0"
                                   for j in range(int(round((end - start) * 100))))})
    (out_dir / f"{NAME}.srt").write_text("\n".join(srt), encoding="utf-8")
    truth["faces"] = {"left": "astronaut (x < 192)", "right": "grace hopper (x >= 192)"}
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")


def _ts(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "prep")
