"""``memo db check`` of one feature, raw-crop or speech database: keys, ``__keys__``, nbb
json, every value decoded (in worker processes), array layouts, manifest counts and checksum.
The rules: docs/FORMAT.md sections 3 to 5."""
from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DatabaseError, MemoError
from ..feature.frames import selection_faults
from ..parallel import chunked, ordered_map
from ..progress import progress_bar
from ..store.codec import NPZ_MAGIC, decode_value, value_layout
from ..store.ids import KEYS_KEY
from ..store.manifest import Checksum, read_manifest
from ..store.naming import is_compressed, nbb_path_for
from ..store.reader import open_env
from .digests import locate_changes
from .report import DbReport, manifest_fields, utf8_keys

# The JSON type of each manifest field the checks read (docs/FORMAT.md); any may be absent.
FEATURE_FIELDS = {"kind": str, "counts": dict, "arrays": dict, "options": dict, "source": dict}


def check_feature_db(path, *, workers: int | None = None, progress: bool = False):
    """Check one feature / raw-crop / speech database; see docs/FORMAT.md for each rule.
    Returns the report and the keys the database stores (bytes, ``__keys__`` left out; None
    when it is unreadable: a text database linking it needs them)."""
    path = Path(path)
    rep = DbReport(str(path))
    try:
        manifest = read_manifest(path)
        env = open_env(path)
        with env.begin() as txn:
            stored = [k for k in txn.cursor().iternext(values=False) if k != KEYS_KEY]
            keys_raw = txn.get(KEYS_KEY)
    except (MemoError, UnicodeDecodeError) as exc:
        rep.problem("unreadable", str(exc))
        return rep, None
    except Exception as exc:  # lmdb raises many types on damaged files
        rep.problem("unreadable", f"LMDB cannot read it ({type(exc).__name__}: {exc}); "
                    "re-copy or rebuild the database")
        return rep, None
    if manifest is not None:
        manifest = manifest_fields(rep, manifest, FEATURE_FIELDS)
        rep.kind = manifest.get("kind", "feature")
    else:
        rep.warn("no_manifest", "no memo manifest (built by another tool, or not finished): "
                 "counts and checksum cannot be verified")
    stored_set = set(stored)
    names = utf8_keys(rep, stored)
    _check_keys_list(rep, keys_raw, stored_set)
    nbb = _check_nbb(rep, path, stored_set, required=manifest is not None)

    selection = _selection_options(rep, manifest)
    layouts: dict = {}
    checksum = Checksum()
    counts = {"segments": len(names), "empty": 0, "frames": 0}
    compressed, other_variant = is_compressed(path), []
    pairs = []  # (key, sha256 of the value) in key order: damaged segments named
    with progress_bar(progress, len(names), f"check {path.name}") as bar:
        chunks = chunked(names, CHUNK)
        results = ordered_map(partial(_inspect_chunk, str(path), selection=selection), chunks,
                              workers)
        for keys, results in zip(chunks, results):
            if results[0] == "screened":  # every value passed the screen: columns
                _, digests, records, lengths, groups = results
                bar(len(keys))
                if compressed:  # screened values are msgpack ones
                    other_variant.extend(keys)
                pairs.extend(zip([k.encode("utf-8") for k in keys], digests))
                checksum.update_raw(records)
                for layout, ks in groups.items():
                    layouts.setdefault(layout, []).extend(ks)
                counts["frames"] += sum(lengths)
                counts["empty"] += lengths.count(0)
                if nbb is not None:
                    for key, length in zip(keys, lengths):
                        if nbb.get(key, length) != length:
                            rep.problem("nbb_mismatch", f"nbb json says {nbb[key]} frames, "
                                        f"the value stores {length}", key)
                continue
            for key, digest, info, err in results[1]:
                bar(1)
                pairs.append((key.encode("utf-8"), digest))
                checksum.update_digest(*pairs[-1])
                if err:
                    rep.problem("undecodable", err, key)
                    continue
                layout, length, mismatch, bad_arrays, faults, npz = info
                if npz != compressed:
                    other_variant.append(key)
                for code, message in faults:
                    rep.problem(code, message, key)
                layouts.setdefault(layout, []).append(key)
                counts["frames"] += length
                counts["empty"] += length == 0
                if mismatch:
                    rep.problem("length_mismatch", f"arrays have different lengths ({mismatch})",
                                key)
                for name in bad_arrays:
                    rep.problem("not_finite", f"'{name}' holds NaN or Inf", key)
                if nbb is not None and key in nbb and nbb[key] != length:
                    rep.problem("nbb_mismatch", f"nbb json says {nbb[key]} frames, the value "
                                f"stores {length}", key)
    _check_layouts(rep, layouts)
    if other_variant:
        _variant_warning(rep, compressed, other_variant)
    rep.counts = counts
    if manifest is not None:
        _check_manifest(rep, manifest, counts, layouts, checksum.hexdigest(), path)
        locate_changes(rep, path, manifest, pairs, manifest.get("checksum") == checksum.hexdigest())
    return rep, stored


def _check_keys_list(rep: DbReport, keys_raw, stored_set) -> None:
    if keys_raw is None:
        rep.problem("keys_missing", "no __keys__ entry; rebuild with memo db create-imgdb")
        return
    try:
        listed = json.loads(keys_raw)
        assert isinstance(listed, list) and all(isinstance(k, str) for k in listed)
    except (ValueError, AssertionError):
        rep.problem("keys_unreadable", "__keys__ is not a JSON list of strings; rebuild")
        return
    listed_b = [k.encode("utf-8") for k in listed]
    if len(set(listed_b)) != len(listed_b):
        rep.problem("keys_duplicate", f"__keys__ lists {len(listed_b) - len(set(listed_b))} "
                    "key(s) twice")
    for k in sorted(set(listed_b) - stored_set):
        rep.problem("keys_extra", "listed in __keys__ but not stored", k.decode())
    for k in sorted(stored_set - set(listed_b)):
        rep.problem("keys_unlisted", "stored but not listed in __keys__", k.decode("utf-8", "replace"))


def _check_nbb(rep: DbReport, path: Path, stored_set, required: bool):
    nbb_path = nbb_path_for(path)
    if nbb_path is None:
        (rep.problem if required else rep.warn)(
            "nbb_missing", f"no nbb json beside the database (expected {path.parent}/nbb_*.json)")
        return None
    try:
        nbb = json.loads(nbb_path.read_text(encoding="utf-8"))
        assert isinstance(nbb, dict) and all(isinstance(v, int) for v in nbb.values())
    except (OSError, ValueError, AssertionError):
        rep.problem("nbb_unreadable", f"{nbb_path} is not a JSON object of integer counts; "
                    "rebuild the database")
        return None
    nbb_b = {k.encode("utf-8") for k in nbb}
    for k in sorted(nbb_b - stored_set):
        rep.problem("nbb_extra", f"in {nbb_path.name} but not stored", k.decode())
    for k in sorted(stored_set - nbb_b):
        rep.problem("nbb_unlisted", f"stored but not in {nbb_path.name}", k.decode("utf-8", "replace"))
    return nbb


def _variant_warning(rep: DbReport, compressed: bool, keys: list) -> None:
    """Values of the other variant than the folder name says: memo reads both, the original
    readers pick their decoder by the name (``_compressed``: np.load, else msgpack)."""
    stored, named = ("msgpack", "_compressed") if compressed else ("np.savez_compressed", "plain")
    rep.warn("variant_mismatch", f"{len(keys)} value(s) are {stored} bytes in a {named} "
             f"database (e.g. {keys[0]!r}); memo reads them, the original readers decode by the "
             "folder name and would fail: rebuild with memo db create-imgdb"
             + ("" if compressed else " --compress and the _compressed name"))


def _check_layouts(rep: DbReport, layouts: dict) -> None:
    """Array names, dtypes and trailing dims agree across segments (majority is the norm)."""
    if len(layouts) <= 1:
        return
    norm = max(layouts, key=lambda l: (len(layouts[l]), l))  # noqa: E741
    for layout, keys in sorted(layouts.items()):
        if layout == norm:
            continue
        desc = ", ".join(f"{n} {dt}{list(s)}" for n, (dt, s) in layout)
        for k in keys:
            rep.problem("layout_mismatch", f"arrays ({desc}) differ from the other segments'", k)


def _check_manifest(rep, manifest, counts, layouts, checksum, path) -> None:
    m_counts = manifest.get("counts") or {}
    if m_counts.get("segments") != counts["segments"]:
        rep.problem("count_mismatch", f"manifest says {m_counts.get('segments')} segments, "
                    f"the database stores {counts['segments']}")
    if m_counts.get("empty") is not None and m_counts.get("empty") != counts["empty"]:
        rep.problem("count_mismatch", f"manifest says {m_counts['empty']} empty segments, "
                    f"found {counts['empty']}")
    _check_count_relations(rep, m_counts, counts, manifest.get("options") or {})
    if manifest.get("checksum") != checksum:
        rep.problem("checksum_mismatch", f"content checksum {checksum} differs from the "
                    f"manifest's {manifest.get('checksum')}: values changed after the build")
    expect = {}
    for n, a in (manifest.get("arrays") or {}).items():
        shape = a.get("shape") if isinstance(a, dict) else None
        if not isinstance(shape, list) or not shape:
            rep.problem("manifest_invalid", f"manifest.json: arrays[{n!r}] is not "
                        "{dtype, shape}; rebuild the database")
            continue
        expect[n] = (a.get("dtype"), tuple(shape[1:]))
    for layout, keys in layouts.items():
        if dict(layout) != expect:
            rep.problem("manifest_arrays", f"{len(keys)} segment(s) store arrays other than "
                        f"the manifest's {manifest.get('arrays')}", keys[0])


CHUNK = 256  # values per task

# What a worker learnt of the values it screened: value length -> _Known (or None: values of
# that length take the full path), for one (database, selection options) at a time.
_KNOWN: dict = {"for": None, "lengths": {}}
_MAX_KNOWN = 4096


class _Known:
    """What every msgpack value of one byte length with the same header bytes holds
    (:func:`~memodb.store.codec.value_layout`): the layout and length the check records, and
    where the arrays the screen tests lie. ``clean``: the arrays agree in length and the
    length obeys the frame selection (else such values take the full path)."""

    __slots__ = ("headers", "offsets", "layout", "length", "floats", "conf", "idxs", "clean")

    def __init__(self, data: bytes, arrays: dict, selection):
        self.headers, self.offsets, specs = value_layout(len(data), arrays)
        self.layout = _layout_of(arrays)
        lengths = {a.shape[0] if a.ndim else None for a in arrays.values()}
        self.length = (arrays["features"].shape[0] if "features" in arrays
                       and arrays["features"].ndim else 0)
        self.floats = tuple((dt, off, off + dt.itemsize * int(np.prod(shape)))
                            for _, dt, shape, off in specs if dt.kind == "f")
        where = {name: (dt, shape, off) for name, dt, shape, off in specs}
        self.conf = self.idxs = None
        clean = len(lengths) <= 1
        if selection and clean:
            conf_th, max_bb, min_bb = selection
            clean = min_bb <= self.length <= max_bb
            # the arrays selection_faults tests (same conditions): (start, end, frames)
            dt, shape, off = where.get("confidence", (None, (), 0))
            if dt is not None and len(shape) == 1 and shape[0] == self.length > 0:
                clean &= dt == np.float16  # the screen takes float16 confidences only
                self.conf = (off, off + 2 * shape[0], shape[0])
            dt, shape, off = where.get("frame_idxs", (None, (), 0))
            if dt is not None and len(shape) == 1 and shape[0] > 1:
                clean &= dt == np.int32  # and int32 frame indices
                self.idxs = (off, off + 4 * shape[0], shape[0])
        self.clean = clean


def _known(data: bytes, selection):
    """The _Known of this value's length if the value matches it (learnt from this value when
    the length is new), else None."""
    known = _KNOWN["lengths"].get(len(data), False)
    if known is False:
        if len(_KNOWN["lengths"]) >= _MAX_KNOWN or data[:4] == NPZ_MAGIC:
            return None
        try:
            arrays = decode_value(data)
        except DatabaseError:
            return None
        known = None
        if value_layout(len(data), arrays) is not None:
            known = _Known(data, arrays, selection)
        _KNOWN["lengths"][len(data)] = known
    if known is None or not known.clean or \
            not all(map(data.startswith, known.headers, known.offsets)):
        return None
    return known


def _inspect_chunk(path: str, keys: list[str], selection: tuple | None = None):
    """The check of a chunk of values: ("screened", sha256 digests, the checksum records,
    frame counts, {layout: keys}) when every value passed :func:`_screen`, else ("values",
    :func:`_inspect_values`' list)."""
    if _KNOWN["for"] != (path, selection):
        _KNOWN.update({"for": (path, selection), "lengths": {}})
    env = open_env(path)
    with env.begin(buffers=True) as txn:
        screened = _screen(txn, keys, selection)
        return ("screened", *screened) if screened else \
            ("values", _inspect_values(txn, keys, selection))


def _screen(txn, keys: list[str], selection):
    """What :func:`_inspect_values` finds, column-wise, for a chunk in which nothing is wrong
    (None as soon as anything may be: that chunk is inspected value by value). Each value must
    have the header bytes of a value of its length decoded in full (same arrays, dtypes,
    shapes, offsets: :class:`_Known`); then one test per chunk and dtype for non-finite
    floats, one for the frame selection (lowest confidence of each segment above
    ``conf_th``, ``frame_idxs`` increasing within each segment)."""
    encoded, digests, lengths, groups = [], [], [], {}
    floats: dict = {}
    confs, conf_n, idxs, idx_n = [], [], [], []
    sha256 = hashlib.sha256
    for key in keys:
        k = key.encode("utf-8")
        buf = txn.get(k)
        if buf is None:
            return None
        data = bytes(buf)
        digest = sha256(data).digest()
        known = _known(data, selection)
        if known is None:
            return None
        encoded.append(k)
        digests.append(digest)
        lengths.append(known.length)
        groups.setdefault(known.layout, []).append(key)
        view = memoryview(data)
        for dt, start, end in known.floats:
            floats.setdefault(dt, []).append(view[start:end])
        if known.conf:
            start, end, n = known.conf
            confs.append(view[start:end])
            conf_n.append(n)
        if known.idxs:
            start, end, n = known.idxs
            idxs.append(view[start:end])
            idx_n.append(n)
    for dt, parts in floats.items():
        if not _finite(np.frombuffer(b"".join(parts), dt)):
            return None
    if confs:
        lowest = np.minimum.reduceat(np.frombuffer(b"".join(confs), np.float16),
                                     np.cumsum([0] + conf_n[:-1], dtype=np.int64))
        if not (lowest.astype(np.float64) > selection[0]).all():
            return None
    if idxs:
        frames = np.frombuffer(b"".join(idxs), np.int32)
        rising = frames[1:] > frames[:-1]
        rising[np.cumsum(idx_n[:-1], dtype=np.int64) - 1] = True  # a segment's first frame follows no frame
        if not rising.all():
            return None
    return digests, Checksum.records(encoded, digests), lengths, groups


_F16 = np.dtype(np.float16)


def _finite(a: np.ndarray) -> bool:
    """Whether every element is finite. float16 by its bits (NaN and Inf are the values whose
    five exponent bits are all set): ten times faster than np.isfinite, which converts."""
    if a.dtype == _F16:
        return not a.size or int(np.bitwise_and(a.view(np.uint16), 0x7C00).max()) < 0x7C00
    return bool(np.isfinite(a).all())


def _layout_of(arrays: dict) -> tuple:
    return tuple((n, (a.dtype.str, tuple(a.shape[1:]))) for n, a in arrays.items())


def _inspect_values(txn, keys: list[str], selection: tuple | None = None):
    """Decode each value; return (key, sha256 digest, (layout, length, length mismatch or None,
    non-finite array names, frame selection faults, whether it is an npz) or None, error or
    None). ``selection``:
    the manifest's (conf_th, max_bb, min_bb), or None (not recorded: not checked)."""
    out = []
    for key in keys:
        buf = txn.get(key.encode("utf-8"))
        digest = hashlib.sha256(buf).digest()
        try:
            arrays = decode_value(buf)
        except DatabaseError as exc:
            out.append((key, digest, None, str(exc)))
            continue
        layout = _layout_of(arrays)
        lengths = {n: (a.shape[0] if a.ndim else None) for n, a in arrays.items()}
        mismatch = (", ".join(f"{n} {v}" for n, v in lengths.items())
                    if len(set(lengths.values())) > 1 else None)
        length = lengths.get("features") or 0
        bad = [n for n, a in arrays.items()
               if a.dtype.kind == "f" and a.size and not np.isfinite(a).all()]
        faults = selection_faults(arrays, *selection) if selection and not mismatch else []
        npz = bytes(buf[:4]) == NPZ_MAGIC
        out.append((key, digest, (layout, length, mismatch, bad, faults, npz), None))
    return out


def _selection_options(rep: DbReport, manifest: dict | None) -> tuple | None:
    """(conf_th, max_bb, min_bb) from the manifest's options, to check each segment's frame
    selection against; None when the manifest records none (built by another tool)."""
    options = (manifest or {}).get("options")
    if not isinstance(options, dict) or not {"conf_th", "max_bb"} <= options.keys():
        return None
    conf_th, max_bb, min_bb = (options.get(k) for k in ("conf_th", "max_bb", "min_bb"))
    min_bb = 0 if min_bb is None else min_bb
    if type(conf_th) not in (int, float) or conf_th != conf_th or type(max_bb) is not int \
            or type(min_bb) is not int:
        rep.problem("manifest_invalid", f"manifest.json: options conf_th {conf_th!r}, max_bb "
                    f"{max_bb!r}, min_bb {min_bb!r} are not numbers (max_bb, min_bb integers); "
                    "frame selection cannot be checked; rebuild the database")
        return None
    return float(conf_th), max_bb, min_bb


# counts a feature build records that the stored values give: (count, what the check counted)
_STORED_COUNTS = (("frames_kept", "frames"),)


def _check_count_relations(rep: DbReport, m_counts: dict, counts: dict, options: dict) -> None:
    """The manifest's other counts: those the stored values give (``frames_kept``) and those
    that must agree with each other (``source_segments`` = ``segments`` +
    ``dropped_below_min_bb``, nothing dropped when ``min_bb`` is 0, ``frames_seen`` >=
    ``frames_kept``). Each mismatch names the count, the recorded and the actual value."""
    bad = sorted(k for k, v in m_counts.items() if type(v) is not int or v < 0)
    for k in bad:
        rep.problem("manifest_invalid", f"manifest.json: counts.{k} is {m_counts[k]!r}, not a "
                    "count; rebuild the database")
    got = {k: v for k, v in m_counts.items() if k not in bad}
    for name, found in _STORED_COUNTS:
        if name in got and got[name] != counts[found]:
            rep.problem("count_mismatch", f"manifest counts.{name} is {got[name]}, the "
                        f"database holds {counts[found]}")
    if {"source_segments", "segments", "dropped_below_min_bb"} <= got.keys():
        total = got["segments"] + got["dropped_below_min_bb"]
        if got["source_segments"] != total:
            rep.problem("count_mismatch", f"manifest counts.source_segments is "
                        f"{got['source_segments']}, but segments {got['segments']} + "
                        f"dropped_below_min_bb {got['dropped_below_min_bb']} = {total}")
    if got.get("dropped_below_min_bb") and options.get("min_bb") == 0:
        rep.problem("count_mismatch", f"manifest counts.dropped_below_min_bb is "
                    f"{got['dropped_below_min_bb']}, but min_bb 0 drops nothing (actual 0)")
    if "frames_seen" in got and got["frames_seen"] < counts["frames"]:
        rep.problem("count_mismatch", f"manifest counts.frames_seen is {got['frames_seen']}, "
                    f"fewer than the {counts['frames']} frames the database holds")
