"""The active speaker of a segment: which face track's mouth moves with the voice activity,
or none (a voice-over, an off-screen speaker). Two rules:

- ``scaled`` (default): the inner-lip gap (landmarks 62 / 66) divided by the inter-ocular
  distance, so the rule means the same at any resolution. A pair of frames at most 2 apart
  is *changing* when that gap changes by more than ``change_th``; a face is a candidate when
  at least ``min_changing`` of its pairs change and some of its changing pairs overlap voice
  activity; the candidate with the most voiced changing pairs speaks.
- ``original``: the original pipeline's pixel rule, bugs included: "open" frames (confidence
  > 0.5 and y66 - y62 > y62 - y51), "changing" pairs (abs(dh) + abs(dw) > 4 px, its width
  taken from the y coordinates of landmarks 60 / 64) and "matching" voiced 10 ms frames inside
  changing pairs; a face with any count 0 is out, several are ranked by the sum of
  1 / sqrt(rank) over the three counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RULES = ("scaled", "original")
FPS = 10
VAD_HOP_S = 0.01


@dataclass
class TrackFaces:
    """One face track of a segment: frame numbers (from 1), landmarks (n, 68, 2) in frame
    pixels, detection confidences."""
    face_id: int
    frames: np.ndarray
    landmarks: np.ndarray
    confidence: np.ndarray


@dataclass
class Decision:
    """The speaker's face_id (None: nobody) and each face's counts under the rule."""
    face_id: int | None
    counts: dict = field(default_factory=dict)


def lip_gap(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap (62 to 66) over the inter-ocular distance, per frame (n,)."""
    eyes_l = landmarks[:, 36:42].mean(axis=1)
    eyes_r = landmarks[:, 42:48].mean(axis=1)
    iod = np.linalg.norm(eyes_r - eyes_l, axis=1)
    gap = np.linalg.norm(landmarks[:, 66] - landmarks[:, 62], axis=1)
    return gap / np.maximum(iod, 1e-6)


def _pairs(frames: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs of consecutive observations at most 2 frames apart."""
    return [(i, i + 1) for i in range(len(frames) - 1) if frames[i + 1] - frames[i] <= 2]


def _voiced(vad: np.ndarray, f0: int, f1: int) -> int:
    """Voiced 10 ms labels between frame f0 and frame f1 (frame f at (f - 1) / FPS s)."""
    a = int(round((f0 - 1) / FPS / VAD_HOP_S))
    b = int(round((f1 - 1) / FPS / VAD_HOP_S))
    return int(vad[a:max(a + 1, b)].sum())


def active_speaker(tracks: list[TrackFaces], vad: np.ndarray, rule: str = "scaled",
                   change_th: float = 0.04, min_changing: float = 0.2) -> Decision:
    """The speaking face of a segment under ``rule`` (see the module's docstring)."""
    if rule == "scaled":
        return _scaled(tracks, vad, change_th, min_changing)
    if rule == "original":
        return _original(tracks, vad)
    raise ValueError(f"unknown speaker rule {rule!r} (one of {', '.join(RULES)})")


def _scaled(tracks, vad, change_th, min_changing) -> Decision:
    counts, best = {}, None
    for t in tracks:
        g = lip_gap(t.landmarks)
        pairs = _pairs(t.frames)
        changing = [(i, j) for i, j in pairs if abs(g[j] - g[i]) > change_th]
        voiced = sum(1 for i, j in changing if _voiced(vad, t.frames[i], t.frames[j]) > 0)
        frac = len(changing) / len(pairs) if pairs else 0.0
        counts[t.face_id] = {"pairs": len(pairs), "changing": len(changing),
                             "voiced_changing": voiced}
        if frac >= min_changing and voiced > 0:
            key = (voiced, frac, -t.face_id)
            if best is None or key > best[0]:
                best = (key, t.face_id)
    return Decision(best[1] if best else None, counts)


def _original(tracks, vad) -> Decision:
    counts = {}
    for t in tracks:
        lm = t.landmarks
        h = lm[:, 66, 1] - lm[:, 62, 1]
        w = lm[:, 64, 1] - lm[:, 60, 1]  # the original's width: y coordinates (a bug)
        opened = int(np.sum((t.confidence > 0.5) & (h > lm[:, 62, 1] - lm[:, 51, 1])))
        changing = [(i, j) for i, j in _pairs(t.frames)
                    if abs(h[j] - h[i]) + abs(w[j] - w[i]) > 4]
        match = sum(_voiced(vad, t.frames[i], t.frames[j]) for i, j in changing)
        counts[t.face_id] = {"open": opened, "change": len(changing), "match": match}
    left = [f for f, c in counts.items() if min(c.values()) > 0]
    if not left:
        return Decision(None, counts)
    if len(left) == 1:
        return Decision(left[0], counts)
    score = {f: 0.0 for f in left}
    for key in ("open", "change", "match"):
        for rank, f in enumerate(sorted(left, key=lambda f: (-counts[f][key], f)), 1):
            score[f] += 1 / np.sqrt(rank)
    return Decision(max(left, key=lambda f: (score[f], -f)), counts)
