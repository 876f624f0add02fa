"""Seeded, reproducible splits of a text corpus (``NAME=COUNT``, ``NAME=FILE``, either with
``@train`` for a monitor set drawn from train) and the ``splits.json`` that records them. Ids
are ordered by a seeded hash, not shuffled (docs/FORMAT.md section 7)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError
from ..store.ids import key_to_id, normalize_id
from ..store.manifest import write_json_atomic

SPLITS_FILE = "splits.json"
TRAIN = "train"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SplitSpec:
    name: str
    count: int | None = None
    ids_file: str | None = None
    monitor: bool = False  # drawn from train

    @property
    def role(self) -> str:
        return "monitor" if self.monitor else "heldout"

    def __str__(self):
        return f"{self.name}={self.count if self.ids_file is None else self.ids_file}" + \
            ("@train" if self.monitor else "")


def parse_split(text: str) -> SplitSpec:
    """``val=3000`` / ``trn3k=3000@train`` / ``test=ids/test.txt`` -> SplitSpec."""
    fix = "write NAME=COUNT, NAME=FILE, or either with @train (e.g. val=3000 trn3k=3000@train)"
    name, sep, value = text.partition("=")
    if name == TRAIN:
        raise BadInputError("'train' is what is left once the other splits are taken",
                            fix="name only the held-out and monitor splits")
    if not sep or not value:
        raise BadInputError(f"split {text!r} needs NAME=VALUE", fix=fix)
    if not _NAME.match(name):
        raise BadInputError(f"split name {name!r} must be letters, digits, '_', '.', '-'",
                            fix=fix)
    monitor = value.endswith("@train")
    value = value[: -len("@train")] if monitor else value
    if value.isdigit():
        if int(value) < 1:
            raise BadInputError(f"split {text!r}: the count must be at least 1", fix=fix)
        return SplitSpec(name, count=int(value), monitor=monitor)
    return SplitSpec(name, ids_file=value, monitor=monitor)


def _rank(ids, salt: str) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(f"{salt}\0{i}".encode()).digest())


def read_id_list(path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the id list ({exc})", file=path,
                            fix="give a UTF-8 file with one id per line or a JSON list") from None
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
            assert all(isinstance(i, str) for i in ids)
        except (ValueError, AssertionError):
            raise BadInputError("not a JSON list of id strings", file=path,
                                fix="give one id per line or a JSON list of strings") from None
    else:
        ids = [line.strip() for line in text.splitlines() if line.strip()]
    return [key_to_id(normalize_id(i)) for i in ids]


def assign_splits(ids, specs, seed: int, *, known=(), base_dir=".") -> tuple[dict, dict]:
    """Split ``ids`` (the usable segments) per ``specs``.

    Returns ``({name: sorted ids}, {name: ids of its list that are not usable})``. ``known``
    holds every id of the source: a listed id outside it is an error (a typo, or the wrong
    file); one inside it but not usable (filtered out: no faces, empty text) is returned.
    """
    ids = set(ids)
    known = set(known) | ids
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BadInputError(f"split names repeat: {names}", fix="give each split once")
    out: dict[str, list] = {}
    unusable: dict[str, list] = {}
    free = set(ids)
    for spec in specs:
        if spec.monitor or spec.ids_file is None:
            continue
        listed = set(read_id_list(Path(base_dir) / spec.ids_file))
        _check_listed(spec, listed, known)
        unusable[spec.name] = sorted(listed - ids)
        taken = listed & ids
        clash = taken - free
        if clash:
            raise BadInputError(f"split {spec}: {len(clash)} id(s) are already in another "
                                f"split (e.g. {sorted(clash)[0]})",
                                fix="make the id lists disjoint")
        out[spec.name] = taken
        free -= taken
    ranked = _rank(free, str(seed))
    pos = 0
    for spec in specs:
        if spec.monitor or spec.ids_file is not None:
            continue
        if spec.count > len(ranked) - pos:
            raise BadInputError(f"split {spec} asks for {spec.count} segments but only "
                                f"{len(ranked) - pos} are left ({len(ids)} usable in all)",
                                fix=f"lower the count of {spec.name}")
        out[spec.name] = set(ranked[pos:pos + spec.count])
        pos += spec.count
    out[TRAIN] = set(ranked[pos:])
    if not out[TRAIN]:
        raise BadInputError("no segment is left for train", fix="lower the held-out counts")
    for spec in specs:
        if not spec.monitor:
            continue
        if spec.ids_file is not None:
            listed = set(read_id_list(Path(base_dir) / spec.ids_file))
            _check_listed(spec, listed, known)
            unusable[spec.name] = sorted(listed - ids)
            outside = (listed & ids) - out[TRAIN]
            if outside:
                raise BadInputError(f"split {spec}: {len(outside)} listed id(s) are not in "
                                    f"train (e.g. {sorted(outside)[0]})",
                                    fix="list only train ids for a monitor split")
            out[spec.name] = listed & ids
        else:
            if spec.count > len(out[TRAIN]):
                raise BadInputError(f"split {spec} asks for {spec.count} segments but train "
                                    f"holds {len(out[TRAIN])}", fix=f"lower the count of "
                                    f"{spec.name}")
            out[spec.name] = set(_rank(out[TRAIN], f"{seed}\0{spec.name}")[:spec.count])
    return {k: sorted(v) for k, v in out.items()}, unusable


def _check_listed(spec: SplitSpec, listed: set, known: set) -> None:
    unknown = sorted(listed - known)
    if unknown:
        raise BadInputError(f"split {spec}: {len(unknown)} listed id(s) are not in the "
                            f"transcripts (e.g. {unknown[0]!r})", file=spec.ids_file,
                            fix="check the id list belongs to this corpus")


def write_splits_file(folder, counts: dict, roles: dict, seed, extra: dict | None = None):
    """Record a group of split databases (``{name: text count}``, folder-relative names) and
    their roles."""
    body = {"kind": "splits", "seed": seed, **(extra or {}), "splits": {
        name: {"db": name, "role": roles[name], "texts": n,
               **({"of": TRAIN} if roles[name] == "monitor" else {})}
        for name, n in counts.items()}}
    write_json_atomic(Path(folder) / SPLITS_FILE, body, indent=1)
    return body
