"""``memo db create-imgdb``: npz folder or h5 root -> feature database (docs/FORMAT.md
section 3), and :func:`build_db`, the feature-build driver it shares with ``rawimg-db``: list
the segments, load and select them in worker processes (in key order), write them through the
build protocol (:class:`~memodb.store.build.Build`). A shard build takes only its range of
the sorted segments (docs/DATABASES.md, "Sharded builds")."""
from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

from ..config import is_integer
from ..errors import BadInputError, BadInputsError, OutputExistsError
from ..parallel import chunked, ordered_map
from ..progress import progress_bar
from ..store.build import Build, BuildResult, Written
from ..store.codec import encode_compressed, encode_value
from ..store.ids import case_collisions, collisions_record, collisions_warning, key_to_id
from ..store.naming import COMPRESSED, db_name, is_compressed, nbb_name
from .frames import select_frames, selection_options
from .sources import Segment, Source, close_h5_files, empty_arrays, open_source, probe_dims

MODALITY_DEFAULTS = {"face": (0.5, 36), "speech": (1.0, 64)}
CHUNK = 64  # segments per worker task


def create_imgdb(src, out_dir, *, conf_th: float | None = None, max_bb: int | None = None,
                 min_bb: int = 0, modality: str = "face", feature: str = "feat",
                 workers: int | None = None, progress: bool = False,
                 replace: bool = False, shard=None, compress: bool = False,
                 name_min: int | None = None) -> BuildResult:
    """Build ``OUT_DIR/feat_th{conf_th}_max{max_bb}_min{min_bb}`` and its nbb json.

    ``conf_th`` / ``max_bb`` default to 0.5 / 36 for faces and 1.0 / 64 for speech. Segments
    with fewer than ``min_bb`` kept frames are left out of the database (counted in the
    manifest as ``dropped_below_min_bb``); with the default 0 every segment is kept, including
    those with no face. ``feature`` picks the h5 dataset (feat, trans1, trans2) for h5 input.
    Any bad segment aborts the build after every segment was examined; the error lists them all
    and nothing is published. A different database already at the output name is refused,
    unless ``replace`` (then it is replaced once the new one is complete). ``shard``
    (:class:`~memodb.dataset.shard.Shard`) builds only that shard's segments (``memo db merge``
    joins the shards). ``compress`` writes the original tools' ``_compressed`` variant (each
    value ``np.savez_compressed`` bytes, the folder named ``..._compressed``); ``name_min``
    sets the name's ``min`` part alone, as the original tools use it (:func:`naming_options`).
    """
    conf_th, max_bb, min_bb = feature_options(modality, conf_th, max_bb, min_bb)
    naming = naming_options(min_bb, name_min, compress)
    source = open_source(src, feature)
    if modality == "speech" and source.kind != "npz":
        raise BadInputError("speech features come as npz files (features, frame_idxs); this "
                            "folder holds Denseface h5 files", file=src, options=("modality",),
                            fix="set {modality} to face, or point at the speech npz folder")
    options = {"conf_th": conf_th, "max_bb": max_bb, "min_bb": min_bb,
               "modality": modality, "feature": feature if source.kind != "npz" else None,
               **naming}
    return build_db(source, out_dir, "feature", options, workers, progress,
                    lambda segs: partial(_select_segment, source, options,
                                         probe_dims(source, segs)), replace=replace,
                    shard=shard)


def feature_options(modality: str, conf_th=None, max_bb=None, min_bb=0) -> tuple:
    """``(conf_th, max_bb, min_bb)`` of a feature build, the modality's defaults filled in,
    checked (:func:`~memodb.feature.frames.selection_options`); errors name the options."""
    if modality not in MODALITY_DEFAULTS:
        raise BadInputError(f"unknown modality {modality!r}", options=("modality",),
                            fix="set {modality} to face or speech")
    d_th, d_max = MODALITY_DEFAULTS[modality]
    return selection_options(d_th if conf_th is None else conf_th,
                             d_max if max_bb is None else max_bb, min_bb)


def naming_options(min_bb: int, name_min=None, compress: bool = False) -> dict:
    """The build options that shape the name, only those that differ from the default (so
    databases built before them stay up to date): ``compress`` (the ``_compressed`` variant)
    and ``name_min``, the ``min{N}`` part of the name meaning what it means to the original
    builder and readers: a name only, no segment dropped (docs/FORMAT.md section 3, "The min
    part of the name"). memo's ``min_bb`` drops segments and names the database after itself,
    so it is refused where a name is read the original way: with ``name_min``, and in the
    ``_compressed`` variant (made for the original readers)."""
    if name_min is not None and (not is_integer(name_min) or name_min < 0):
        raise BadInputError(f"{{name_min}} must be an integer >= 0 (got {name_min!r})",
                            options=("name_min",), fix="give {name_min} the N of the min{N} "
                            "name the original config asks for (e.g. 10)")
    why = ("{min_bb} %d drops segments with fewer kept frames, but the original readers take "
           "the min part of the name as a name only (every segment is there)" % min_bb)
    if min_bb and name_min is not None:
        raise BadInputError(f"{why}; with {{name_min}} too the name would not say what the "
                            "database holds", options=("min_bb", "name_min"),
                            fix="drop {min_bb} (the original keeps every segment) or drop "
                            "{name_min}")
    if min_bb and compress:
        raise BadInputError(f"{why}, and a _compressed database is made for them: a config "
                            f"asking for ..._min{min_bb}_compressed would get fewer segments "
                            "than it expects", options=("min_bb", "compress", "name_min"),
                            fix=f"pass {{name_min}} {min_bb} instead of {{min_bb}} (the name "
                            "the config asks for, every segment kept), or build without "
                            "{compress} to filter")
    out = {}
    if compress:
        out["compress"] = True
    if name_min is not None:
        out["name_min"] = int(name_min)
    return out


def build_db(source, out_dir, kind: str, options: dict, workers, progress, make_loader,
             extra_manifest: dict | None = None, replace: bool = False,
             shard=None, chunk: int = CHUNK) -> BuildResult:
    """Shared build driver: list, load + select in workers (in key order), write, publish.

    ``make_loader(segments)`` gets every listed segment and returns a picklable
    ``loader(segment) -> (arrays, frames seen[, tally])`` giving the canonical, selected arrays
    of one segment or raising BadInputError; ``tally``, a dict of integers, is summed over
    every examined segment into the manifest's ``sums``. It runs only when a build is needed,
    and may fill ``extra_manifest`` (read after it ran). A loader with a
    ``load_chunk(segments)`` method loads a whole task's segments at once (one such tuple or
    BadInputError per segment): the speech extractors batch them through one model. ``chunk``:
    segments per worker task (the output does not depend on it). With ``shard`` only the
    shard's segments are loaded and stored; its options and manifest say which shard it is.
    """
    out_dir = Path(out_dir)
    name_min = options.get("name_min", options["min_bb"])
    name = db_name(options["conf_th"], options["max_bb"], name_min, options.get("compress"))
    nbb_file = nbb_name(options["conf_th"], options["max_bb"], name_min)
    _nbb_shared(out_dir, name, nbb_file)
    if shard is not None:
        options = {**options, "shard": shard.options()}
    build = Build(out_dir / name, kind, options, source.fingerprint(), replace=replace,
                  nbb_file=nbb_file)
    try:
        return build.run(partial(_write, source, options, nbb_file, workers, progress,
                                 make_loader, extra_manifest, shard, chunk))
    finally:
        close_h5_files()


def _nbb_shared(out_dir: Path, name: str, nbb_file: str) -> None:
    """The plain and ``_compressed`` variants of one name share one nbb json (the original
    layout): refuse to build one beside the other, whose nbb json would be replaced."""
    other = out_dir / (name[:-len(COMPRESSED)] if is_compressed(name) else name + COMPRESSED)
    if not other.exists():
        return
    raise OutputExistsError(f"{other} is already in {out_dir} and its nbb json {nbb_file} "
                            f"would be shared with {name} (the original layout names the nbb "
                            "json without _compressed); delete it or build this variant into "
                            "another OUT_DIR")


def feature_fields(arrays_seen: dict, counts: dict, nbb_file: str,
                   extra: dict | None = None) -> dict:
    """A feature database's own manifest fields (beyond those every build records);
    ``memo db merge`` makes them the same way."""
    return {"arrays": {k: {"dtype": dt, "shape": [None, *shape]}
                       for k, (dt, shape) in arrays_seen.items()},
            "counts": counts, "nbb_file": nbb_file, **(extra or {})}


def _write(source, options, nbb_file, workers, progress, make_loader, extra_manifest, shard,
           chunk, db) -> Written:
    segs = source.list_segments()
    collisions = collisions_record(case_collisions(key_to_id(s.key) for s in segs))
    work = partial(_encode_chunk, make_loader(segs),
                   encode_compressed if options.get("compress") else encode_value)
    todo = segs if shard is None else shard.take(segs)
    nbb: dict[str, int] = {}
    errors: list[BadInputError] = []
    arrays_seen: dict = {}
    sums: dict[str, int] = {}
    counts = {"source_segments": len(todo), "segments": 0, "empty": 0,
              "dropped_below_min_bb": 0, "frames_seen": 0, "frames_kept": 0}
    with progress_bar(progress, len(todo), db.final.name) as bar:
        for results in ordered_map(work, chunked(todo, chunk), workers):
            for seg, value, digest, n_seen, n_kept, layout, tally, err in results:
                bar(1)
                if err is not None:
                    errors.append(err)
                    continue
                for k, v in (tally or {}).items():
                    sums[k] = sums.get(k, 0) + v
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
        raise BadInputsError(errors, f"{db.final}")
    extra = dict(extra_manifest or {})
    if collisions:  # over the whole corpus, also in a shard (the merge keeps it)
        extra["id_case_collisions"] = collisions
    if shard is not None:
        extra["shard"] = shard.record(len(segs))
    if sums:
        extra["sums"] = sums
    return Written(feature_fields(arrays_seen, counts, nbb_file, extra), {nbb_file: nbb})


def feature_warnings(manifest: dict) -> list[str]:
    """The warnings a feature database's manifest records (ids that differ only in case), shown
    by the CLI and memo db build whether the database was built or was up to date."""
    return collisions_warning(manifest.get("id_case_collisions"))


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


def _load(loader, seg: Segment):
    try:
        return loader(seg)
    except BadInputError as exc:
        return exc


def _encode_chunk(loader, encode, chunk: list[Segment]):
    load_chunk = getattr(loader, "load_chunk", None)
    loaded = load_chunk(chunk) if load_chunk else [_load(loader, seg) for seg in chunk]
    out = []
    for seg, got in zip(chunk, loaded):
        if isinstance(got, BadInputError):
            out.append((seg, None, None, 0, 0, None, None, got))
            continue
        arrays, n_seen, *tally = got
        layout = {k: (a.dtype.str, tuple(a.shape[1:])) for k, a in arrays.items()}
        value = encode(arrays)
        out.append((seg, value, hashlib.sha256(value).digest(), n_seen,
                    len(arrays["features"]), layout, tally[0] if tally else None, None))
    return out
