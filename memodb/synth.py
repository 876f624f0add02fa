"""A small synthetic corpus in the upstream formats, generated in code (fixed seed).

Used by ``memo quickstart``, the tests and the benchmarks: Denseface-shaped h5 files per movie
(FORMATS.md 2.1) with ``has_active_spk.txt`` lists, captions, and OpenFace-style face crops.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .sources import MOVIE_H5

WORDS = ("i never thought we would see the sea again . you are late , and i am so angry "
         "with you . what a wonderful day ! please do not leave me here alone . "
         "she laughed and cried at the same time").split()


def segment_arrays(rng: np.random.Generator, n: int, dim: int = 342) -> dict:
    """Denseface-like datasets for one segment of ``n`` frames (h5 names)."""
    logits = rng.normal(size=(n, 8)).astype(np.float32)
    pred = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {
        "feat": rng.normal(size=(n, dim)).astype(np.float32),
        "trans1": rng.normal(size=(n, 216)).astype(np.float32),
        "trans2": rng.normal(size=(n, 300)).astype(np.float32),
        "pred": pred.astype(np.float32),
        "confidence": rng.uniform(0.2, 1.0, size=n).astype(np.float32),
        "frame_idx": np.sort(rng.choice(np.arange(5000), size=n, replace=False)).astype(np.int64),
    }


def make_h5_corpus(root, movies: int = 3, segments: int = 20, faces: int = 30, seed: int = 0,
                   meta_dir=None, with_trans: bool = True) -> list[str]:
    """Write ``root/<movie>/has_active_spk_denseface_with_trans.h5``; return the segment ids.

    Face counts vary around ``faces`` (some segments have none). With ``meta_dir``, also write
    ``<meta_dir>/<movie>/has_active_spk.txt``.
    """
    import h5py

    rng = np.random.default_rng(seed)
    ids = []
    for m in range(movies):
        movie = f"No{m:04d}.Movie_{m}"
        (Path(root) / movie).mkdir(parents=True, exist_ok=True)
        with h5py.File(Path(root) / movie / MOVIE_H5, "w") as f:
            g = f.create_group(movie)
            for s in range(1, segments + 1):
                n = 0 if s % 9 == 0 else int(rng.integers(max(1, faces // 3), faces * 2))
                seg = g.create_group(str(s))
                for k, v in segment_arrays(rng, n).items():
                    if with_trans or not k.startswith("trans"):
                        seg.create_dataset(k, data=v)
                ids.append(f"{movie}_{s}")
        if meta_dir is not None:
            (Path(meta_dir) / movie).mkdir(parents=True, exist_ok=True)
            (Path(meta_dir) / movie / "has_active_spk.txt").write_text(
                "".join(f"{movie}/{s}\n" for s in range(1, segments + 1)))
    return ids


def make_captions(ids, path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    caps = {i: [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 15))))] for i in ids}
    Path(path).write_text(json.dumps(caps, indent=1))
    return caps


LEXICON = {"angry": "anger", "wonderful": "joy", "laughed": "joy", "cried": "sadness",
           "alone": "sadness", "late": "anger"}


def make_lexicon(path) -> dict:
    """A tiny emotion lexicon over :data:`WORDS` (word<TAB>category)."""
    Path(path).write_text("".join(f"{w}\t{c}\n" for w, c in LEXICON.items()))
    return LEXICON


def make_openface(root, clips: int = 4, frames: int = 12, size: int = 112, seed: int = 0) -> list:
    """OpenFace-style output (FORMATS.md 2.3): ``<clip>.csv`` and ``<clip>_aligned/*.bmp``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for c in range(clips):
        clip = f"No0000.Movie_0_{c + 1}"
        aligned = root / f"{clip}_aligned"
        aligned.mkdir(exist_ok=True)
        rows = ["frame, face_id, timestamp, confidence, success"]
        for fr in range(1, frames + 1):
            conf = float(rng.uniform(0.3, 1.0))
            rows.append(f"{fr}, 0, {fr / 10:.1f}, {conf:.3f}, 1")
            img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(aligned / f"frame_det_00_{fr:06d}.bmp")
        (root / f"{clip}.csv").write_text("\n".join(rows) + "\n")
        names.append(clip)
    return names
