"""Readers of the feature inputs (docs/DATABASES.md, "Inputs"): per-segment npz folders
and the two Denseface h5 layouts. A source lists its segments (sorted by key, duplicates
refused) and loads one segment's raw arrays, named as in the npz files."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError, BadInputsError
from ..store.ids import check_key, find_duplicates, id_to_key
from ..store.manifest import fingerprint_files
from ..store.npzfast import parse_npz

MOVIE_H5 = "has_active_spk_denseface_with_trans.h5"
H5_FEATURES = ("feat", "trans1", "trans2")
# h5 dataset -> npz array name (the feature dataset is chosen by --feature)
H5_ARRAYS = {"pred": "soft_labels", "confidence": "confidence", "frame_idx": "frame_idxs"}


@dataclass(frozen=True)
class Segment:
    key: str  # "<segmentId>.npz"
    file: str  # file holding it
    group: str = ""  # group path inside an h5 file ("" = file root / whole npz)


@dataclass
class Source:
    """An input folder. ``kind`` is ``npz``, ``h5-movie`` or ``h5-segment``."""

    root: Path
    kind: str
    feature: str = "feat"
    files: list = field(default_factory=list)

    def fingerprint(self) -> dict:
        return {"path": str(self.root), "type": self.kind, **fingerprint_files(self.files, self.root)}

    def __getstate__(self):  # workers only load segments: do not ship the file list per task
        return {**self.__dict__, "files": []}

    def list_segments(self) -> list[Segment]:
        segs = {"npz": _list_npz, "h5-movie": _list_h5_movie, "h5-segment": _list_h5_segment}[
            self.kind](self)
        return checked_segments(segs)

    def load(self, seg: Segment) -> dict[str, np.ndarray]:
        """Raw arrays of one segment (npz names), or BadInputError naming file and segment."""
        if self.kind == "npz":
            return load_npz(seg.file, seg.key)
        return _load_h5(seg, self.feature)


def checked_segments(segs: list[Segment]) -> list[Segment]:
    """Segments sorted by key, after refusing duplicate keys and keys LMDB cannot hold (every
    offender listed in one BadInputsError)."""
    dups = find_duplicates((s.key, f"{s.file}:{s.group}".rstrip(":")) for s in segs)
    errors = [BadInputError(f"duplicate id, found in {', '.join(where)}", segment=key,
                            fix="rename or remove all but one of them")
              for key, where in sorted(dups.items())]
    if not errors:
        for s in segs:
            try:
                check_key(s.key, file=s.file)
            except BadInputError as e:
                errors.append(e)
    if errors:
        raise BadInputsError(errors, "the database")
    return sorted(segs, key=lambda s: s.key)


def open_source(path, feature: str = "feat") -> Source:
    """Recognise an input folder: npz files, or an h5 root in one of the two layouts."""
    root = Path(path)
    if not root.is_dir():
        raise BadInputError("not a directory", file=root, fix="give the folder of npz or h5 files")
    if feature not in H5_FEATURES:
        raise BadInputError(f"unknown feature {feature!r}", options=("feature",),
                            fix=f"set {{feature}} to one of {', '.join(H5_FEATURES)}")
    movie = sorted(root.glob(f"*/{MOVIE_H5}"))
    if movie:
        return Source(root, "h5-movie", feature, movie)
    found = find_files(root, (".h5", ".npz"))
    if found[".h5"]:
        return Source(root, "h5-segment", feature, found[".h5"])
    if found[".npz"]:
        return Source(root, "npz", feature, found[".npz"])
    raise BadInputError("holds no .npz files and no Denseface .h5 files", file=root,
                        fix="point at the trans2npz output or at the h5 root")


def find_files(root, suffixes: tuple) -> dict[str, list[str]]:
    """Sorted paths (str) of the files under ``root`` ending in each suffix; hidden files (our
    own temporary files) are skipped. One walk with os.scandir: fast on 200k-file folders."""
    found: dict[str, list[str]] = {s: [] for s in suffixes}
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    for suffix in suffixes:
                        if entry.name.endswith(suffix):
                            found[suffix].append(entry.path)
    return {s: sorted(v) for s, v in found.items()}


def _list_npz(src: Source) -> list[Segment]:
    return [Segment(id_to_key(os.path.basename(p)[:-4]), p) for p in src.files]


def _open_h5(path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise BadInputError(f"unreadable h5 file ({exc})", file=path,
                            fix="re-run the Denseface extractor for this movie or remove the file"
                            ) from exc


def _list_h5_movie(src: Source) -> list[Segment]:
    segs = []
    for path in src.files:
        movie = path.parent.name
        with _open_h5(path) as f:
            if movie not in f:
                raise BadInputError(f"no group {movie!r} (top-level groups: {list(f.keys())[:5]})",
                                    file=path, fix="the folder name must be the movie name")
            for idx in f[movie].keys():
                segs.append(Segment(id_to_key(f"{movie}_{idx}"), str(path), f"{movie}/{idx}"))
    return segs


def _list_h5_segment(src: Source) -> list[Segment]:
    segs = []
    for path in src.files:
        rel = os.path.relpath(path, src.root)[:-len(".h5")]
        segs.append(Segment(id_to_key("#".join(rel.split(os.sep))), path))
    return segs


def load_npz(path, segment=None) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        arrays = parse_npz(data)
        if arrays is not None:
            return arrays
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # an untrusted file: zlib, zip, header and pickle errors alike
        raise BadInputError(f"unreadable npz ({type(exc).__name__}: {exc})", file=path,
                            segment=segment, fix="delete it and re-run memo db trans2npz") from exc


_h5_cache: dict = {}
_h5_pid = None


class _H5File:
    """An open h5 file (``h5``), the file descriptor its driver reads through (``fd``) and
    the numpy dtype of each file datatype met so far, per dataset name (:func:`_read_h5`)."""

    def __init__(self, path):
        self.h5 = _open_h5(path)
        self.fd = self.h5.id.get_vfd_handle()
        self.types: dict = {}  # dataset name -> (file TypeID, dtype, raw bytes = values?)

    def close(self) -> None:
        self.h5.close()


def _cached_h5(path) -> _H5File:
    """One open h5 file per path per process (a movie's segments are read one after another).
    Keyed by inode, size and mtime too: a file rewritten since it was opened is reopened."""
    global _h5_pid
    if _h5_pid != os.getpid():
        _h5_cache.clear()
        _h5_pid = os.getpid()
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    f = _h5_cache.get(key)
    if f is None:
        while len(_h5_cache) >= 4:
            _h5_cache.pop(next(iter(_h5_cache))).close()
        f = _h5_cache[key] = _H5File(path)
    return f


def close_h5_files() -> None:
    """Close the h5 files this process keeps open (at the end of a build)."""
    if _h5_pid == os.getpid():
        while _h5_cache:
            _h5_cache.popitem()[1].close()


def _load_h5(seg: Segment, feature: str) -> dict[str, np.ndarray]:
    """Read one segment with h5py's low-level API (about twice as fast as ``group[name][()]``;
    :func:`_read_h5` for each dataset)."""
    from h5py import h5d, h5g

    try:
        f = _cached_h5(seg.file)
        node = h5g.open(f.h5.id, seg.group.encode("utf-8")) if seg.group else f.h5["/"].id
        links: list[bytes] = []
        node.links.iterate(links.append)  # append returns None: go on to the next link
        names = {n.decode("utf-8") for n in links}
        if not names:
            return {}  # no face in this segment (the caller fills in empty arrays)
        if feature not in names:
            raise BadInputError(f"no '{feature}' dataset (has: {sorted(names)})", file=seg.file,
                                segment=seg.key, options=("feature",),
                                fix="choose another {feature} or re-extract")
        out = {}
        for h5name, npzname in ((feature, "features"), *H5_ARRAYS.items()):
            if h5name in names:
                out[npzname] = _read_h5(f, h5name, h5d.open(node, h5name.encode("utf-8")))
        return out
    except BadInputError:
        raise
    except Exception as exc:  # h5py raises many types on damaged files
        raise BadInputError(f"unreadable h5 data ({type(exc).__name__}: {exc})", file=seg.file,
                            segment=seg.key, fix="re-run the Denseface extractor for this movie"
                            ) from exc


def _read_h5(f: _H5File, name: str, ds) -> np.ndarray:
    """The whole dataset ``ds`` as a numpy array of its own dtype.

    Converting a dataset's file datatype to a numpy dtype costs more than reading it, so each
    dataset name keeps the last file datatype met and its dtype (a dataset of an equal
    datatype reuses it). When that dtype is exactly the file datatype (numbers stored as
    numpy stores them: HDF5's conversion would copy the bytes unchanged) and the dataset is
    stored in one piece in the file (contiguous, no filter, not external: its offset is
    known), its bytes are read straight into the array with one ``preadv``; anything else,
    and a short read, goes through HDF5's own read."""
    from h5py import h5s, h5t

    tid = ds.get_type()
    known = f.types.get(name)
    if known is None or not known[0].equal(tid):
        dtype = tid.dtype
        raw = tid.get_class() in (h5t.INTEGER, h5t.FLOAT) and dtype.kind in "iuf" \
            and tid.equal(h5t.py_create(dtype))
        known = f.types[name] = (tid, dtype, raw)
    arr = np.empty(ds.shape, known[1])
    if not arr.size:
        return arr
    offset = ds.get_offset() if known[2] else None
    if offset is None or os.preadv(f.fd, [arr], offset) != arr.nbytes:
        ds.read(h5s.ALL, h5s.ALL, arr)
    return arr


def probe_dims(src: Source, segs: list[Segment], limit: int = 1000) -> dict:
    """dtype and trailing shape of each array, from the first segment that has any, used to
    give segments stored without datasets empty arrays of the right shape."""
    for seg in segs[:limit]:
        try:
            arrays = src.load(seg)
        except BadInputError:
            continue
        if arrays:
            return {k: (np.asarray(v).dtype.str, tuple(np.asarray(v).shape[1:]))
                    for k, v in arrays.items()}
    return {}


def empty_arrays(dims: dict) -> dict[str, np.ndarray]:
    return {k: np.zeros((0, *shape), dtype=np.dtype(dt)) for k, (dt, shape) in dims.items()}

