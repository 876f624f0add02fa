"""Faces tracked across the frames of one segment: greedy IoU matching to the tracks seen in
the last few frames; each track is one ``face_id`` (from 0, in order of appearance)."""
from __future__ import annotations

from .faces import iou

IOU_TH = 0.3
MAX_GAP = 2  # frames a track may miss and still continue


def track(boxes_per_frame, iou_th: float = IOU_TH, max_gap: int = MAX_GAP) -> list[list[int]]:
    """Track ids for each box of each frame (``boxes_per_frame[i]``: (x0, y0, x1, y1) boxes
    of frame i). Boxes are matched best IoU first; a box matching no live track (seen within
    ``max_gap`` frames) starts a new one."""
    last: dict[int, tuple[int, object]] = {}  # track id -> (frame index, box)
    out, next_id = [], 0
    for fi, boxes in enumerate(boxes_per_frame):
        live = [t for t, (f, _) in last.items() if fi - f <= max_gap + 1]
        pairs = sorted(((iou(last[t][1], b), t, bi) for t in live for bi, b in enumerate(boxes)),
                       key=lambda p: (-p[0], p[1], p[2]))
        ids: list = [None] * len(boxes)
        used = set()
        for score, t, bi in pairs:
            if score < iou_th:
                break
            if t in used or ids[bi] is not None:
                continue
            ids[bi], _ = t, used.add(t)
        for bi in range(len(boxes)):
            if ids[bi] is None:
                ids[bi], next_id = next_id, next_id + 1
            last[ids[bi]] = (fi, boxes[bi])
        out.append(ids)
    return out
