"""Transcript files -> (id, text, label) records. The three layouts (pretraining captions,
downstream refs, JSON lines), recognised from the content: docs/DATABASES.md, "Inputs". Every
problem in a file is collected and reported at once."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from ..errors import BadInputError, BadInputsError
from ..store.ids import MAX_KEY_BYTES, check_key, find_duplicates, key_to_id, normalize_id

JSONL_SUFFIXES = (".jsonl", ".jsonlines", ".ndjson")


class _Obj(dict):
    """A JSON object that remembers keys given more than once (json keeps the last one)."""

    dups: tuple = ()

    @classmethod
    def from_pairs(cls, pairs):
        obj = cls(pairs)
        if len(obj) != len(pairs):
            keys = [k for k, _ in pairs]
            obj.dups = tuple(sorted({k for k in keys if keys.count(k) > 1}))
        return obj


def _is_record(obj: dict) -> bool:
    """One JSON-lines record (``{"id": str, "text": ...}``), not a captions mapping."""
    return isinstance(obj.get("id"), str) and "text" in obj and set(obj) <= {"id", "text",
                                                                              "label"}


class Transcript(NamedTuple):
    id: str  # key form (``/`` mapped to ``-``, no ``.npz``)
    text: str
    label: int | None = None


def read_transcripts(path) -> tuple[list[Transcript], str]:
    """Parse a transcript file; returns the records in file order and the layout's name."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read it ({exc.strerror})", file=path,
                            fix="check the transcript path") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise BadInputError(f"line {line}, column {col}: byte 0x{data[exc.start]:02x} is not "
                            "UTF-8", file=path,
                            fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                            ) from None
    errors: list[BadInputError] = []
    lines = None
    if path.suffix.lower() in JSONL_SUFFIXES:
        lines = text.splitlines()
    else:
        try:
            obj = json.loads(text, object_pairs_hook=_Obj.from_pairs)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise BadInputError(f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                                    f"{exc.colno}", file=path, fix="repair the JSON") from None
            lines = text.splitlines()
        else:
            if isinstance(obj, dict) and _is_record(obj):  # JSON lines holding one record
                lines = text.splitlines()
    if lines is not None:
        layout, raw = "jsonl", _jsonl(lines, path, errors)
    elif isinstance(obj, dict):
        for k in obj.dups:
            errors.append(BadInputError("the id appears more than once in the file", file=path,
                                        segment=k, fix="keep one entry per id"))
        layout, raw = _mapping(obj, path, errors)
    else:
        raise BadInputError(f"top-level JSON is a {type(obj).__name__}; expected an object "
                            "{id: [sentence]} or {id: {txt, label}}, or JSON lines", file=path,
                            fix="convert the file to one of the layouts in the README")
    records, raw_ids = [], []
    for raw_id, sentences, label in raw:
        key = raw_id
        if "/" in key or key.endswith(".npz"):  # "x.npz" names segment x, as in img_fname
            key = key_to_id(normalize_id(raw_id))
        if not (key and key.isascii() and key.isprintable() and len(key) <= MAX_KEY_BYTES
                and key != "__keys__"):  # else the full check (UTF-8, NUL, length) decides
            try:
                check_key(key, file=path)
            except BadInputError as exc:
                errors.append(exc)
                continue
        records.append(Transcript(key, sentences[0] if len(sentences) == 1
                                  else " ".join(sentences), label))
        raw_ids.append(raw_id)
    if len({r.id for r in records}) != len(records):
        _duplicates(records, raw_ids, path, errors)
    labelled = sum(r.label is not None for r in records)
    if 0 < labelled < len(records):
        errors.append(BadInputError(f"{len(records) - labelled} of {len(records)} records have "
                                    "no label while the others have one", file=path,
                                    fix="give every record a label, or none"))
    if errors:
        raise BadInputsError(errors, "the text database")
    return records, layout


def _duplicates(records, raw_ids, path, errors) -> None:
    for key, raws in find_duplicates((r.id, raw) for r, raw in zip(records, raw_ids)).items():
        if len(set(raws)) == 1:
            errors.append(BadInputError(f"the id appears {len(raws)} times", file=path,
                                        segment=key, fix="keep one entry per id"))
        else:
            errors.append(BadInputError(f"ids {sorted(set(raws))} map to the same key once "
                                        "'/' is replaced by '-' (and .npz dropped)", file=path,
                                        segment=key,
                                        fix="rename the ids so they stay distinct"))


def _sentences(value, path, seg, errors):
    if type(value) is list and len(value) == 1 and type(value[0]) is str:
        return value  # the usual case, checked fast
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    errors.append(BadInputError(f"text is {type(value).__name__} {str(value)[:40]!r}; "
                                "expected a string or a list of strings", file=path,
                                segment=seg, fix="store the sentences as strings"))
    return None


def _label(value, path, seg, errors):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        errors.append(BadInputError(f"label {value!r} is not a non-negative integer", file=path,
                                    segment=seg, fix="store class indices 0, 1, ..."))
    return value  # an invalid label still counts as given (the error above aborts the read)


def _mapping(obj: dict, path, errors):
    is_refs = any(isinstance(v, dict) for v in obj.values())
    out = []
    for seg, value in obj.items():
        if is_refs:
            if getattr(value, "dups", ()):
                errors.append(BadInputError(f"key(s) {list(value.dups)} appear more than once "
                                            "in this record", file=path, segment=seg,
                                            fix="keep one txt and one label per utterance"))
            if not isinstance(value, dict) or "txt" not in value:
                errors.append(BadInputError("expected {\"txt\": [sentence], \"label\": int}",
                                            file=path, segment=seg,
                                            fix="give every utterance a txt field"))
                continue
            sentences = _sentences(value["txt"], path, seg, errors)
            label = _label(value.get("label"), path, seg, errors)
        elif type(value) is list and len(value) == 1 and type(value[0]) is str:
            sentences, label = value, None  # the usual caption, accepted without a call
        else:
            sentences, label = _sentences(value, path, seg, errors), None
        if sentences is not None:
            out.append((seg, sentences, label))
    return ("refs" if is_refs else "captions"), out


def _jsonl(lines, path, errors):
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            rec = json.loads(line, object_pairs_hook=_Obj.from_pairs)
        except json.JSONDecodeError as exc:
            errors.append(BadInputError(f"{where}: not valid JSON ({exc.msg})", file=path,
                                        fix="repair that line"))
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or "text" not in rec:
            errors.append(BadInputError(f"{where}: expected an object with a string 'id' and a "
                                        "'text'", file=path, fix="repair that line"))
            continue
        if rec.dups:
            errors.append(BadInputError(f"{where}: key(s) {list(rec.dups)} appear more than "
                                        "once", file=path, segment=rec["id"],
                                        fix="keep one id, text and label per line"))
        sentences = _sentences(rec["text"], path, rec["id"], errors)
        label = _label(rec.get("label"), path, rec["id"], errors)
        if sentences is not None:
            out.append((rec["id"], sentences, label))
    return out
