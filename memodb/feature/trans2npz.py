"""``memo db trans2npz``: Denseface h5 -> one npz per segment (docs/FORMAT.md section 2).
Each npz is written under a hidden name and renamed; a re-run skips what is converted."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import BadInputError, BadInputsError, OutputExistsError
from ..parallel import chunked, ordered_map
from ..progress import progress_bar
from ..store.codec import canonical_arrays
from ..store.files import atomic_write
from ..store.ids import case_collisions, collisions_record, collisions_warning, id_to_key, key_to_id
from ..store.manifest import write_json_atomic
from .frames import check_lengths
from .sources import Segment, Source, empty_arrays, open_source, probe_dims

STATE_FILE = "trans2npz.json"


@dataclass
class Trans2npzReport:
    out_dir: Path
    written: int = 0
    skipped: int = 0  # already converted by an earlier run
    missing_in_h5: list = field(default_factory=list)  # listed in has_active_spk.txt only
    missing_in_list: list = field(default_factory=list)  # in the h5 only
    case_collisions: list = field(default_factory=list)  # groups of ids differing in case only

    @property
    def warnings(self) -> list[str]:
        """Ids that differ only in case: their npz files are one file on a case-insensitive
        file system (the second would be taken as converted already)."""
        return collisions_warning(collisions_record(self.case_collisions))


def trans2npz(h5_root, out_dir, *, feature: str = "feat", meta_dir=None,
              workers: int | None = None, progress: bool = False) -> Trans2npzReport:
    """Convert every segment of an h5 root to ``OUT_DIR/<segmentId>.npz``.

    Arrays: ``features`` (from ``feature``) float16, ``soft_labels`` float16, ``confidence``
    float16, ``frame_idxs`` int32. No frame is filtered here. Bad segments are reported
    together at the end (BadInputsError) after every good one was written.
    """
    source = open_source(h5_root, feature)
    if source.kind == "npz":
        raise BadInputError("holds npz files, not Denseface h5 files", file=h5_root,
                            fix="give the h5 root; npz folders go straight to create-imgdb")
    segs = source.list_segments()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, source, feature)
    for stale in out_dir.glob(".*.npz.tmp-*"):  # left by a killed run
        stale.unlink()
    report = Trans2npzReport(out_dir)
    report.case_collisions = case_collisions(key_to_id(s.key) for s in segs)
    if meta_dir is not None:
        report.missing_in_h5, report.missing_in_list = compare_with_lists(segs, meta_dir, source)
    todo = [s for s in segs if not (out_dir / s.key).exists()]
    report.skipped = len(segs) - len(todo)
    dims = probe_dims(source, segs)
    errors = []
    with progress_bar(progress, len(todo), "trans2npz") as bar:
        for results in ordered_map(partial(_convert_chunk, source, dims, str(out_dir)),
                                   chunked(todo, 32), workers):
            for err in results:
                bar(1)
                if err is None:
                    report.written += 1
                else:
                    errors.append(err)
    if errors:
        raise BadInputsError(errors, "those npz files")
    return report


def _claim(out_dir: Path, source: Source, feature: str) -> None:
    """Record what this folder converts; refuse to mix features or sources in one folder."""
    state = {"kind": "trans2npz", "feature": feature, "source": str(source.root.resolve())}
    path = out_dir / STATE_FILE
    if path.exists():
        try:
            prev = json.loads(path.read_text())
        except ValueError:
            prev = None
        if prev != state:
            raise OutputExistsError(
                f"{out_dir} holds npz files converted with {prev}; this run asks for {state}. "
                "Choose another OUT_DIR (one folder per feature kind)")
        return
    write_json_atomic(path, state, indent=1)


def compare_with_lists(segs: list[Segment], meta_dir, source: Source):
    """Ids listed in ``<meta_dir>/<movie>/has_active_spk.txt`` vs ids in the h5 files."""
    in_h5 = {key_to_id(s.key) for s in segs}
    listed = set()
    for lst in sorted(Path(meta_dir).glob("*/has_active_spk.txt")):
        for line in lst.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                movie, _, idx = line.rpartition("/")
                listed.add(key_to_id(id_to_key(f"{movie}_{idx}")))
    return sorted(listed - in_h5), sorted(in_h5 - listed)


def _convert_chunk(source: Source, dims: dict, out_dir: str, chunk: list[Segment]):
    out = []
    for seg in chunk:
        try:
            raw = source.load(seg) or empty_arrays(dims)
            check_lengths(raw, file=seg.file, segment=seg.key)
            arrays = canonical_arrays(raw)
            with atomic_write(os.path.join(out_dir, seg.key), "wb", durable=False) as f:
                np.savez(f, **arrays)  # not savez_compressed: it crashed on real data
            out.append(None)
        except BadInputError as exc:
            out.append(exc)
    return out
