"""What a check found: :class:`Problem` (a code, a message, the segment or text id),
:class:`DbReport` per database or folder, :class:`CheckReport` for a run (its exit code), and
the helpers the feature and text checks share."""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class Problem:
    code: str
    message: str
    segment: str | None = None

    def __str__(self):
        return f"[{self.code}] " + (f"{self.segment}: " if self.segment else "") + self.message


@dataclass
class DbReport:
    """What one database's check found."""

    path: str
    kind: str = "feature"
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def problem(self, code: str, message: str, segment: str | None = None) -> None:
        self.problems.append(Problem(code, message, segment))

    def warn(self, code: str, message: str, segment: str | None = None) -> None:
        self.warnings.append(Problem(code, message, segment))

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "ok": self.ok, "counts": self.counts,
                "problems": [vars(p) for p in self.problems],
                "warnings": [vars(p) for p in self.warnings]}

    def summary(self) -> str:
        """What the database holds, in a few words (``memo db check`` prints it)."""
        c = self.counts
        if self.kind == "text":
            return f"{c.get('texts', 0)} texts, {c.get('pieces', 0)} pieces"
        if self.kind == "splits":
            return f"{c.get('splits', 0)} splits, {c.get('texts', 0)} texts"
        if self.kind == "dataset":
            return f"{c.get('databases', 0)} databases" + (
                f", protocol {c['protocol']}" if c.get("protocol") else "")
        if self.kind == "shard":
            return (f"shard {c.get('index')}/{c.get('count')}, {c.get('databases', 0)} "
                    "databases; memo db merge joins the shards into a dataset")
        if self.kind in ("missing", "partial"):
            return ""
        return f"{c.get('segments', 0)} segments, {c.get('empty', 0)} empty"


@dataclass
class CheckReport:
    """All databases checked in one run. Exit code 0 when every one is clean, 1 otherwise."""

    databases: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.databases)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict:
        return {"ok": self.ok, "databases": [d.to_dict() for d in self.databases]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


def manifest_fields(rep: DbReport, manifest: dict, types: dict) -> dict:
    """The manifest without the fields whose JSON type is not the one in ``types``, each
    reported as a ``manifest_invalid`` problem: a damaged or hand-edited manifest is reported,
    it does not crash the check."""
    out = dict(manifest)
    for name, typ in types.items():
        value = out.get(name)
        if value is not None and not isinstance(value, typ):
            rep.problem("manifest_invalid", f"manifest.json: {name!r} is "
                        f"{json.dumps(value)[:60]}, not {_JSON_TYPES[typ]}; rebuild the "
                        "database")
            del out[name]
    return out


def utf8_keys(rep: DbReport, stored) -> list[str]:
    """The stored keys as text; a key that is not UTF-8 is a problem."""
    names = []
    for k in stored:
        try:
            names.append(k.decode("utf-8"))
        except UnicodeDecodeError:
            rep.problem("bad_key", f"key {k!r} is not UTF-8")
    return names
