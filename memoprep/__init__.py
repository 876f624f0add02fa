"""memoprep: the preparation stage (``memo prep``): movies + subtitles -> segments, face
tracks, the active speaker and captions, offline. Never imports torch; its components (PyAV,
onnxruntime, dlib, ...) come with the ``prep`` extra and are imported when used."""
from __future__ import annotations

from .stage import PrepResult, prep

__all__ = ["PrepResult", "prep"]
