"""``create-imgdb``: npz folder or h5 root -> feature database (FORMATS.md section 3)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import __version__
from .codec import encode_value
from .errors import BadInputError, BadInputsError
from .frames import select_frames
from .naming import db_name, nbb_name
from .parallel import chunked, ordered_map
from .progress import progress_bar
from .sources import Segment, Source, close_h5_files, empty_arrays, open_source, probe_dims
from .writer import StagedDatabase, existing_build

MODALITY_DEFAULTS = {"face": (0.5, 36), "speech": (1.0, 64)}
CHUNK = 64  # segments per worker task


@dataclass
class BuildResult:
    path: Path  # the database directory
    nbb_path: Path | None
    manifest: dict
    skipped: bool = False  # an identical build was already there

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]


def create_imgdb(src, out_dir, *, conf_th: float | None = None, max_bb: int | None = None,
                 min_bb: int = 0, modality: str = "face", feature: str = "feat",
                 workers: int | None = None, progress: bool = False,
                 replace: bool = False) -> BuildResult:
    """Build ``OUT_DIR/feat_th{conf_th}_max{max_bb}_min{min_bb}`` and its nbb json.

    ``conf_th`` / ``max_bb`` default to 0.5 / 36 for faces and 1.0 / 64 for speech. Segments
    with fewer than ``min_bb`` kept frames are left out of the database (counted in the
    manifest as ``dropped_below_min_bb``); with the default 0 every segment is kept, including
    those with no face. ``feature`` picks the h5 dataset (feat, trans1, trans2) for h5 input.
    Any bad segment aborts the build after every segment was examined; the error lists them all
    and nothing is published. A different database already at the output name is refused,
    unless ``replace`` (then it is replaced once the new one is complete).
    """
    if modality not in MODALITY_DEFAULTS:
        raise BadInputError(f"unknown modality {modality!r}", fix="use face or speech")
    d_th, d_max = MODALITY_DEFAULTS[modality]
    conf_th = float(d_th if conf_th is None else conf_th)
    max_bb = int(d_max if max_bb is None else max_bb)
    if max_bb < 1 or min_bb < 0 or min_bb > max_bb:
        raise BadInputError(f"need 0 <= min_bb <= max_bb and max_bb >= 1 (got min_bb {min_bb}, "
                            f"max_bb {max_bb})", fix="change --min-bb / --max-bb")
    source = open_source(src, feature)
    if modality == "speech" and source.kind != "npz":
        raise BadInputError("speech features come as npz files (features, frame_idxs); this "
                            "folder holds Denseface h5 files", file=src,
                            fix="use --modality face, or point at the speech npz folder")
    options = {"conf_th": conf_th, "max_bb": max_bb, "min_bb": int(min_bb),
               "modality": modality, "feature": feature if source.kind != "npz" else None}
    return build_db(source, out_dir, "feature", options, workers, progress,
                    lambda segs: partial(_select_segment, source, options,
                                         probe_dims(source, segs)), replace=replace)


def build_db(source, out_dir, kind: str, options: dict, workers, progress, make_loader,
             extra_manifest: dict | None = None, replace: bool = False) -> BuildResult:
    """Shared build driver: list, load + select in workers (in key order), write, publish.

    ``make_loader(segments)`` returns a picklable ``loader(segment) -> (arrays, frames seen)``
    giving the canonical, selected arrays of one segment or raising BadInputError. It runs
    only when a build is needed, and may fill ``extra_manifest`` (read after it ran).
    """
    out_dir = Path(out_dir)
    name = db_name(options["conf_th"], options["max_bb"], options["min_bb"])
    nbb_file = nbb_name(options["conf_th"], options["max_bb"], options["min_bb"])
    fp = source.fingerprint()
    done = existing_build(out_dir / name, kind, options, fp, replace)
    if done is not None:
        return BuildResult(out_dir / name, out_dir / nbb_file, done, skipped=True)
    try:
        return _build(source, out_dir, name, nbb_file, kind, options, fp, workers, progress,
                      make_loader, extra_manifest, replace)
    finally:
        close_h5_files()


def _build(source, out_dir, name, nbb_file, kind, options, fp, workers, progress, make_loader,
           extra_manifest, replace) -> BuildResult:
    segs = source.list_segments()
    work = partial(_encode_chunk, make_loader(segs))
    nbb: dict[str, int] = {}
    errors: list[BadInputError] = []
    arrays_seen: dict = {}
    counts = {"source_segments": len(segs), "segments": 0, "empty": 0, "dropped_below_min_bb": 0,
              "frames_seen": 0, "frames_kept": 0}
    with StagedDatabase(out_dir, name, replace=replace) as db, \
            progress_bar(progress, len(segs), name) as bar:
        for results in ordered_map(work, chunked(segs, CHUNK), workers):
            for seg, value, digest, n_seen, n_kept, layout, err in results:
                bar(1)
                if err is not None:
                    errors.append(err)
                    continue
                counts["frames_seen"] += n_seen
                if n_kept < options["min_bb"]:
                    counts["dropped_below_min_bb"] += 1
                    continue
                err = _check_layout(arrays_seen, layout, seg)
                if err is not None:
                    errors.append(err)
                    continue
                if errors:
                    continue  # keep examining, stop writing
                db.put(seg.key.encode("utf-8"), value, digest)
                nbb[seg.key] = n_kept
                counts["segments"] += 1
                counts["frames_kept"] += n_kept
                counts["empty"] += n_kept == 0
        if errors:
            raise BadInputsError(errors, f"{out_dir / name}")
        manifest = {
            "kind": kind, "memo_version": __version__, "options": options, "source": fp,
            "arrays": {k: {"dtype": dt, "shape": [None, *shape]}
                       for k, (dt, shape) in arrays_seen.items()},
            "counts": counts, "nbb_file": nbb_file, **(extra_manifest or {}),
        }
        path, manifest = db.finish(manifest, {nbb_file: nbb})
    return BuildResult(path, out_dir / nbb_file, manifest)


def _check_layout(seen: dict, layout: dict, seg: Segment):
    """Every segment stores the same arrays with the same dtypes and trailing dims."""
    if not seen:
        seen.update(layout)
        return None
    if layout == seen:
        return None
    desc = lambda d: ", ".join(f"{k} {dt}{list(s)}" for k, (dt, s) in d.items())  # noqa: E731
    return BadInputError(f"arrays differ from the other segments ({desc(layout)} vs "
                         f"{desc(seen)})", file=seg.file, segment=seg.key,
                         fix="build segments of different feature kinds into separate databases")


def _select_segment(source: Source, options: dict, dims: dict, seg: Segment):
    raw = source.load(seg) or empty_arrays(dims)
    arrays = select_frames(raw, options["conf_th"], options["max_bb"], file=seg.file,
                           segment=seg.key)
    return arrays, len(raw["features"])


def _encode_chunk(loader, chunk: list[Segment]):
    out = []
    for seg in chunk:
        try:
            arrays, n_seen = loader(seg)
            layout = {k: (a.dtype.str, tuple(a.shape[1:])) for k, a in arrays.items()}
            value = encode_value(arrays)
            out.append((seg, value, hashlib.sha256(value).digest(), n_seen,
                        len(arrays["features"]), layout, None))
        except BadInputError as exc:
            out.append((seg, None, None, 0, 0, None, exc))
    return out
