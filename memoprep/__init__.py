"""memoprep: the preparation stage (``memo prep``): movies + subtitles -> segments, face
tracks, the active speaker and captions, offline. Never imports torch; its components (PyAV,
onnxruntime, dlib, ...) come with the ``prep`` extra and are imported when used. The public
names are imported on first use (PEP 562)."""
from __future__ import annotations

import importlib

_API = {"prep": "memoprep.stage", "PrepResult": "memoprep.stage",
        "prep_options": "memoprep.stage"}

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'memoprep' has no attribute {name!r}")
