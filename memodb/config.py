"""One mechanism for every JSON configuration memo reads (datasets, models, training runs).

A config is a pydantic dataclass declared with :data:`STRICT`: each field's default and its
description are written once, in the field. :func:`read_config` reads JSON (a file, a dict or
an instance), applies ``--key value`` overrides with dotted keys, and validates strictly:
unknown keys, wrong types, and missing required keys raise the caller's error class with a
message naming the dotted key. Checks that relate several keys stay with each config.
Never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import types
import typing
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter, ValidationError

from .errors import MemoError

# unknown keys are refused; no silent coercion ("0.5" is not a number, 36.7 not an integer)
STRICT = ConfigDict(extra="forbid", strict=True)


class ConfigError(MemoError):
    """A configuration is invalid: an unknown key, a wrong type, a missing key."""


def is_integer(value) -> bool:
    """An option value that is an integer (Python or numpy), not a bool and not a float such
    as 36.7 or 36.0 (the checks of builder options, which Python callers reach too)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (int or float, Python or numpy), not a bool and not a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def read_config(cls, source, overrides=(), *, error=ConfigError, where: str = ""):
    """A ``cls`` instance (a :data:`STRICT` pydantic dataclass) from ``source``: a JSON file
    path, a dict or a ``cls`` instance, with ``overrides`` applied (``--key value`` strings or
    (dotted key, value) pairs). Problems raise ``error`` naming the key; ``where`` prefixes
    keys (a config nested in a file)."""
    if isinstance(source, cls):
        d = to_json(source)
    elif isinstance(source, dict):
        d = json.loads(json.dumps(source))  # a deep copy of JSON values
    else:
        try:
            d = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise error(f"{source}: cannot read a JSON config ({exc})") from None
    pairs = list(overrides)
    if pairs and isinstance(pairs[0], str):
        pairs = parse_overrides(pairs, error=error)
    for key, value in pairs:
        apply_override(d, key, value, error=error)
    return validate(cls, d, error=error, where=where)


def validate(cls, d, *, error=ConfigError, where: str = "", python: bool = False):
    """``d`` validated into ``cls``; the first problem raises ``error``. ``d`` holds JSON
    values (lists stand for tuples), or Python values with ``python=True`` (kept as given)."""
    if not isinstance(d, dict):
        raise error(f"{where or 'config'}: expected a JSON object, got {d!r}")
    try:
        if python:
            return cls(**d)
        return _adapter(cls).validate_json(json.dumps(d), strict=True)
    except ValidationError as exc:
        raise error(_message(cls, exc.errors()[0], where)) from None
    except ValueError as exc:  # not JSON (NaN, infinity)
        raise error(f"{where or 'config'}: {exc}") from None


def to_json(cfg) -> dict:
    """The config as JSON values (tuples become lists), defaults included."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def changes(saved: dict, current: dict, ignore=(), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (lists compared whole, tuples
    equal to lists), leaving out keys that start with one of ``ignore``."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if name.startswith(tuple(ignore)):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, ignore, name + ".")
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(name)
    return out


def parse_overrides(args, *, error=ConfigError) -> list[tuple[str, object]]:
    """``["--optim.lr", "1e-4", "--seed=3"]`` -> ``[("optim.lr", 1e-4), ("seed", 3)]``; a
    value that is not JSON is a string."""
    args, out, i = list(args), [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) < 3:
            raise error(f"override {a!r}: expected --key value (dotted keys, e.g. "
                        "--optim.lr 1e-4)")
        if "=" in a:
            key, raw = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise error(f"override {a!r} has no value")
            key, raw = a[2:], args[i + 1]
            i += 2
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.append((key.replace("-", "_"), value))
    return out


def apply_override(d: dict, key: str, value, *, error=ConfigError) -> None:
    """Set the dotted ``key`` in the raw config dict ``d`` (creating objects on the way;
    integer parts index lists). Unknown keys are caught when the dict is validated."""
    parts = key.split(".")
    node = d
    for depth, p in enumerate(parts[:-1]):
        where = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise error(f"override {key}: {where} is not an index of a list of "
                            f"{len(node)}")
            node = node[int(p)]
        else:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        if not isinstance(node, (dict, list)):
            raise error(f"override {key}: {where} is not an object")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise error(f"override {key}: not an index of a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default as JSON, description) of every field, nested configs expanded:
    the reference table of a config, from the fields themselves."""
    rows = []
    for name, tp in typing.get_type_hints(cls).items():
        f = next(x for x in dataclasses.fields(cls) if x.name == name)
        info = f.default
        desc = getattr(info, "description", None) or ""
        default = _default(f)
        values = typing.get_args(tp)[1:] if typing.get_origin(tp) is dict else ()
        members = [a for v in values for a in (typing.get_args(v) or (v,))
                   if dataclasses.is_dataclass(a)]
        if members:  # name -> one of several kinds: each kind's keys
            rows.append((prefix + name, json.dumps(default), desc))
            for m in members:
                rows.append((f"{prefix}{name}.NAME", "", _doc(m)))
                rows += describe(m, f"{prefix}{name}.NAME.")
            continue
        sub, item = _dataclass_in(tp), None
        if sub is None and typing.get_origin(tp) is list:
            sub, item = _dataclass_in(typing.get_args(tp)[0]), "N."
        if sub is not None:
            rows.append((prefix + name, "null" if default is None else
                         "[]" if item else "{...}", desc or _doc(sub)))
            rows += describe(sub, f"{prefix}{name}.{item or ''}")
            continue
        shown = "(required)" if default is dataclasses.MISSING else json.dumps(
            dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default)
        rows.append((prefix + name, shown, desc))
    return rows


# ------------------------------------------------------------------------------ internals

_ADAPTERS: dict = {}


def _adapter(cls) -> TypeAdapter:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def _default(f):
    info = f.default
    if hasattr(info, "get_default"):  # a pydantic Field(...)
        if info.default_factory is not None:
            return info.default_factory()
        from pydantic_core import PydanticUndefined
        return dataclasses.MISSING if info.default is PydanticUndefined else info.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return info


def _doc(cls) -> str:
    return (cls.__doc__ or "").strip().split("\n")[0].replace("``", "`")


def _dataclass_in(tp):
    """The dataclass inside ``tp`` (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a)
                           for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "an object"
    if origin is tuple:
        args = typing.get_args(tp)
        return f"a list of {len(args)} {', '.join(_type_name(a) for a in args)}"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _resolve(cls, loc) -> tuple[list, object, object]:
    """Walk ``loc`` through the annotations from ``cls``: (the key parts that name config
    keys, the annotation there, the parent dataclass or None)."""
    tp, parent, parts = cls, None, []
    for part in loc:
        inner = _dataclass_in(tp)
        origin = typing.get_origin(tp)
        if inner is not None and isinstance(part, str):
            hints = typing.get_type_hints(inner)
            if part not in hints:
                parent = inner
                parts.append(part)
                return parts, None, parent
            parent, tp = inner, hints[part]
        elif origin in (list, tuple) and isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[part] if origin is tuple and part < len(args) else args[0]
        elif (tp is dict or origin is dict) and isinstance(part, str):
            args = typing.get_args(tp)
            tp = args[1] if args else typing.Any
        elif origin in (typing.Union, types.UnionType) and isinstance(part, int):
            lists = [a for a in typing.get_args(tp) if typing.get_origin(a) is list]
            if not lists:
                break
            tp = typing.get_args(lists[0])[0]
        else:
            break  # a union member's tag: the key ends before it
        parts.append(part)
    return parts, tp, parent


def _message(cls, err: dict, where: str) -> str:
    parts, tp, parent = _resolve(cls, err["loc"])
    names = [str(p) for p in parts]
    key = ".".join(([where] if where else []) + names)
    kind, value = err["type"], err.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        inside = ".".join(([where] if where else []) + names[:-1])
        known = ", ".join(f.name for f in dataclasses.fields(parent)) if parent else ""
        return (f"unknown config key {key!r} (known{' in ' + inside if inside else ''}: "
                f"{known})")
    if kind == "missing":
        if parent is not None and names and names[-1] in typing.get_type_hints(parent):
            inside = ".".join(([where] if where else []) + names[:-1])
            return f"{inside or 'config'}: missing {names[-1]}"
        # a tuple that is too short: the key is the tuple's
        key = ".".join(([where] if where else []) + [n for n in names if not n.isdigit()])
        tp = _resolve(cls, [p for p in parts if not isinstance(p, int)])[1]
        return f"{key}: expected {_type_name(tp)}, got {value!r}"
    if kind == "too_long" and tp is not None:
        return f"{key}: expected {_type_name(tp)}, got {value!r}"
    expected = _type_name(tp) if tp is not None else "another value"
    return f"{key}: expected {expected}, got {value!r} ({type(value).__name__})"
