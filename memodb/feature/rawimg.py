"""``memo db rawimg-db``: OpenFace face crops -> raw-crop database (the input layout:
docs/DATABASES.md, "Inputs"; the database: docs/FORMAT.md section 4). Frames are selected like
create-imgdb's before any image is decoded; the pixel statistics are exact integer sums, so a
sharded build normalises exactly like a single one (docs/DATABASES.md, "Sharded builds")."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..config import is_integer, is_number
from ..errors import BadInputError, BadInputsError
from ..parallel import chunked, ordered_map
from ..progress import progress_bar
from ..store.build import BuildResult
from ..store.ids import id_to_key
from ..store.manifest import fingerprint_files
from .frames import keep_index, selection_options
from .imgdb import build_db
from .sources import Segment, checked_segments

STATS_CHUNK = 32
CSV_COLUMNS = ("frame", "face_id", "confidence", "success")


@dataclass
class OpenFaceSource:
    root: Path
    files: list = field(default_factory=list)  # the csv files
    kind: str = "openface"

    def fingerprint(self) -> dict:
        images = [p for c in self.files for p in _aligned_dir(c).glob("*.bmp")]
        return {"path": str(self.root), "type": self.kind,
                **fingerprint_files(list(self.files) + images, self.root)}

    def __getstate__(self):  # workers only load segments: do not ship the file list per task
        return {**self.__dict__, "files": []}

    def list_segments(self) -> list[Segment]:
        segs = [Segment(id_to_key(p.stem), str(p)) for p in self.files]
        return checked_segments(segs)


def open_openface(path) -> OpenFaceSource:
    """The clips of an OpenFace output folder: every ``<clip>.csv`` beside ``<clip>_aligned/``.
    An OpenFace csv (its header has frame, face_id, confidence and success) without its
    ``_aligned/`` folder is an error naming every such clip: its crops are missing, as a
    missing crop of a kept frame is. Other csv files (not OpenFace's) are not clips."""
    root = Path(path)
    csvs = sorted(root.rglob("*.csv")) if root.is_dir() else []
    clips = [p for p in csvs if _aligned_dir(p).is_dir()]
    orphans = [p for p in sorted(set(csvs) - set(clips)) if _is_openface_csv(p)]
    if orphans:
        raise BadInputsError([BadInputError(
            f"OpenFace csv without its crop folder {_aligned_dir(p).name}/", file=p,
            segment=id_to_key(p.stem), fix="re-run OpenFace FeatureExtraction with -simalign "
            "for this clip (or copy its _aligned/ folder too), or move the csv out of the "
            "folder") for p in orphans], "the database")
    if not clips:
        raise BadInputError("holds no OpenFace output (<clip>.csv beside <clip>_aligned/)",
                            file=root, fix="point at the folder OpenFace FeatureExtraction wrote")
    return OpenFaceSource(root, clips)


def _is_openface_csv(path: Path) -> bool:
    """Whether a csv's header names OpenFace's columns (frame, face_id, confidence, success)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = {h.strip() for h in next(csv.reader(f), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return set(CSV_COLUMNS) <= header


def _aligned_dir(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.stem + "_aligned")


def read_openface_csv(path, segment=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame numbers, face ids, confidences) of the best successful face of each frame. A
    confidence that is not a finite number is a BadInputError naming the line."""
    best: dict[int, tuple[float, int]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader)]
            col = {name: header.index(name) for name in CSV_COLUMNS}
            for row in reader:
                if not row:
                    continue
                if int(float(row[col["success"]])) != 1:
                    continue
                frame, face = int(float(row[col["frame"]])), int(float(row[col["face_id"]]))
                conf = float(row[col["confidence"]])
                if not math.isfinite(conf):
                    raise BadInputError(f"line {reader.line_num}: confidence "
                                        f"{row[col['confidence']].strip()!r} of frame {frame} "
                                        "is not a finite number", file=path, segment=segment,
                                        fix="re-run OpenFace for this clip (a confidence is a "
                                            "probability from 0 to 1) or remove the clip")
                if frame not in best or conf > best[frame][0]:
                    best[frame] = (conf, face)
    except BadInputError:
        raise
    except (OSError, UnicodeDecodeError, StopIteration, ValueError, IndexError) as exc:
        raise BadInputError(f"unreadable OpenFace csv ({type(exc).__name__}: {exc})", file=path,
                            segment=segment, fix="re-run OpenFace for this clip") from exc
    frames = np.array(sorted(best), dtype=np.int64)
    faces = np.array([best[fr][1] for fr in frames], dtype=np.int64)
    conf = np.array([best[fr][0] for fr in frames], dtype=np.float32)
    return frames, faces, conf


def _kept_crops(seg: Segment, conf_th: float, max_bb: int, size: int):
    """Selected frames of a clip: (uint8 crops (k, size, size), confidence, frame numbers, seen)."""
    from PIL import Image

    frames, faces, conf = read_openface_csv(seg.file, seg.key)
    n_seen = len(frames)
    keep = keep_index(conf, n_seen, conf_th, max_bb, file=seg.file, segment=seg.key)
    frames, faces, conf = frames[keep], faces[keep], conf[keep]
    crops = np.empty((len(frames), size, size), dtype=np.uint8)
    aligned = _aligned_dir(Path(seg.file))
    for i, (fr, face) in enumerate(zip(frames, faces)):
        img_path = aligned / f"frame_det_{face:02d}_{fr:06d}.bmp"
        try:
            with Image.open(img_path) as img:
                img = img.convert("L")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                crops[i] = np.asarray(img)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"face crop of frame {fr} is missing or unreadable ({exc})",
                                file=img_path, segment=seg.key,
                                fix="re-run OpenFace for this clip") from exc
    return crops, conf, frames, n_seen


def _gray_segment(options: dict, seg: Segment):
    """A segment's kept crops as 8-bit gray, with their pixel sums (what a shard stores)."""
    crops, conf, frames, n_seen = _kept_crops(seg, options["conf_th"], options["max_bb"],
                                               options["size"])
    return ({"features": crops, "confidence": conf.astype(np.float16),
             "frame_idxs": frames.astype(np.int32)}, n_seen, pixel_sums(crops))


def _crop_segment(options: dict, seg: Segment):
    arrays, n_seen, _ = _gray_segment(options, seg)
    return normalized(arrays, options["mean"], options["std"]), n_seen


def normalized(arrays: dict, mean: float, std: float) -> dict:
    """A segment's arrays with its 8-bit gray crops made ``(gray - mean) / std`` in float16."""
    feats = ((arrays["features"].astype(np.float32) - mean) / std).astype(np.float16)
    return {**arrays, "features": feats}


def pixel_sums(crops: np.ndarray) -> dict:
    """Exact integer pixel count, sum and sum of squares of 8-bit crops."""
    flat = crops.reshape(-1).astype(np.int64)
    return {"pixels": int(flat.size), "pixel_sum": int(flat.sum()),
            "pixel_sum_sq": int(flat @ flat)}


def _chunk_pixel_sums(conf_th, max_bb, size, chunk):
    total = {"pixels": 0, "pixel_sum": 0, "pixel_sum_sq": 0}
    for seg in chunk:
        for k, v in pixel_sums(_kept_crops(seg, conf_th, max_bb, size)[0]).items():
            total[k] += v
    return total


def mean_std(sums: dict) -> tuple[float, float]:
    """Mean and std from :func:`pixel_sums` totals (Python integers: exact, order-free)."""
    n = sums.get("pixels", 0)
    if n == 0:
        raise BadInputError("no face crop passes the confidence threshold, so no mean/std "
                            "can be computed", options=("conf_th", "mean", "std"),
                            fix="lower {conf_th} or give {mean} and {std}")
    mean = sums["pixel_sum"] / n
    return mean, math.sqrt(max(sums["pixel_sum_sq"] / n - mean * mean, 0.0))


def corpus_pixel_stats(segs, conf_th, max_bb, size, workers=None, progress=False):
    """Mean and std of the gray pixels of every kept crop."""
    total = {"pixels": 0, "pixel_sum": 0, "pixel_sum_sq": 0}
    chunks = chunked(segs, STATS_CHUNK)
    with progress_bar(progress, len(chunks), "pixel statistics") as bar:
        for part in ordered_map(partial(_chunk_pixel_sums, conf_th, max_bb, size), chunks,
                                workers):
            for k, v in part.items():
                total[k] += v
            bar(1)
    return mean_std(total)


def normalization(mean: float, std: float, computed: bool) -> dict:
    """The manifest's ``normalization`` entry."""
    return {"mean": float(mean), "std": float(std), "computed": computed,
            "formula": "(gray - mean) / std"}


def rawimg_options(size=64, mean=None, std=None) -> tuple:
    """``(size, mean, std)`` of a raw-crop build, checked (the one place their allowed values
    are decided; the dataset config uses it too): ``size`` an integer >= 8, ``mean`` and
    ``std`` both given (finite numbers, ``std`` > 0) or both None (computed over the corpus).
    Errors name the options (BadInputError ``options``)."""
    if not is_integer(size) or size < 8:
        raise BadInputError(f"{{size}} must be an integer >= 8 (got {size!r})",
                            options=("size",), fix="set {size} to 64 (or 112)")
    if (mean is None) != (std is None):
        raise BadInputError("give both {mean} and {std}, or neither (then they are computed "
                            "over the corpus)", options=("mean", "std"))
    for name, value in (("mean", mean), ("std", std)):
        if value is not None and (not is_number(value) or not math.isfinite(value)):
            raise BadInputError(f"{{{name}}} must be a finite number (got {value!r})",
                                options=(name,), fix=f"give the corpus's pixel {name}, or "
                                "neither mean nor std")
    if std is not None and not std > 0:
        raise BadInputError(f"{{std}} must be positive (got {std})", options=("std",))
    return int(size), mean, std  # mean / std as given: the options the manifest records


def rawimg_db(src, out_dir, *, size: int = 64, mean: float | None = None,
              std: float | None = None, conf_th: float = 0.5, max_bb: int = 36, min_bb: int = 0,
              workers: int | None = None, progress: bool = False,
              replace: bool = False, shard=None) -> BuildResult:
    """Build ``OUT_DIR/feat_th{conf_th}_max{max_bb}_min{min_bb}`` of normalised gray crops.

    The mean / std used (given or computed) are in the manifest under ``normalization``. With
    ``shard`` (:class:`~memodb.dataset.shard.Shard`) only that shard's segments are built, as
    8-bit gray crops with the pixel sums in the manifest's ``sums`` (the merge normalises).
    """
    conf_th, max_bb, min_bb = selection_options(conf_th, max_bb, min_bb)
    size, mean, std = rawimg_options(size, mean, std)
    source = open_openface(src)
    # options are what was asked (mean / std None = computed); the values used are in
    # the manifest's "normalization", filled once the build really starts.
    options = {"conf_th": conf_th, "max_bb": max_bb, "min_bb": min_bb,
               "modality": "face", "size": size, "mean": mean, "std": std}
    norm: dict = {}

    def make_loader(segs):
        if shard is not None:
            return partial(_gray_segment, options)
        m, s = (mean, std) if mean is not None else corpus_pixel_stats(
            segs, conf_th, max_bb, size, workers, progress)
        norm["normalization"] = normalization(m, s, mean is None)
        return partial(_crop_segment, {**options, "mean": float(m), "std": float(s)})

    return build_db(source, out_dir, "rawimg", options, workers, progress, make_loader,
                    extra_manifest=norm, replace=replace, shard=shard)
