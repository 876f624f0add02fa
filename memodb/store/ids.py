"""Segment ids and the keys / file names made from them (docs/FORMAT.md section 1)."""
from __future__ import annotations

from ..errors import BadInputError

KEY_SUFFIX = ".npz"
MAX_KEY_BYTES = 511  # LMDB's default maximum key size
KEYS_KEY = b"__keys__"


def normalize_id(segment_id: str) -> str:
    """Map a raw id to the form used in keys and file names: ``/`` becomes ``-``."""
    return segment_id.replace("/", "-")


def id_to_key(segment_id: str) -> str:
    """``No0123.Brokeback.Mountain_1`` -> ``No0123.Brokeback.Mountain_1.npz``."""
    if segment_id.endswith(KEY_SUFFIX):
        return segment_id
    return normalize_id(segment_id) + KEY_SUFFIX


def key_to_id(key: str) -> str:
    return key[: -len(KEY_SUFFIX)] if key.endswith(KEY_SUFFIX) else key


def check_key(key: str, *, file=None) -> bytes:
    """Encode a key for LMDB, refusing what LMDB or a file system cannot hold."""
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        shown = key.encode("utf-8", "backslashreplace").decode("utf-8")
        raise BadInputError("the file name is not valid UTF-8",
                            file=None if file is None else ascii(str(file)), segment=shown,
                            fix="rename it with UTF-8 characters") from None
    if not key or key == KEYS_KEY.decode():
        raise BadInputError(f"the id {key!r} is reserved or empty", file=file, segment=key,
                            fix="rename the segment")
    if len(raw) > MAX_KEY_BYTES:
        raise BadInputError(f"the key is {len(raw)} bytes; LMDB keys hold at most {MAX_KEY_BYTES}",
                            file=file, segment=key, fix="shorten the segment id")
    if "\x00" in key or "\n" in key:
        raise BadInputError("the id contains a NUL or newline character", file=file, segment=key,
                            fix="rename the segment")
    return raw


def find_duplicates(pairs):
    """Given (id, origin) pairs, return {id: [origins]} for ids seen more than once."""
    seen: dict[str, list] = {}
    for seg, origin in pairs:
        seen.setdefault(seg, []).append(origin)
    return {k: v for k, v in seen.items() if len(v) > 1}


MAX_COLLISIONS_LISTED = 20  # groups recorded in a manifest and shown in a warning


def case_collisions(ids) -> list[list[str]]:
    """Groups of distinct ids that differ only in case (``A_1`` / ``a_1``), each sorted, in
    order: on a case-insensitive file system (macOS, Windows) they name one file (trans2npz
    writes ``<id>.npz``; a text's ``img_fname`` is ``<id>.npz``)."""
    groups: dict[str, set] = {}
    for i in ids:
        groups.setdefault(i.casefold(), set()).add(i)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def collisions_record(groups: list) -> dict | None:
    """The manifest's ``id_case_collisions`` entry (None when there is none): the number of
    groups and the first :data:`MAX_COLLISIONS_LISTED` of them."""
    if not groups:
        return None
    return {"count": len(groups), "ids": groups[:MAX_COLLISIONS_LISTED]}


def collisions_warning(record: dict | None, what: str = "segment ids") -> list[str]:
    """The warning (a list of 0 or 1 line) of a ``collisions_record``."""
    if not record:
        return []
    shown = "; ".join(" / ".join(g) for g in record["ids"])
    more = " ..." if record["count"] > len(record["ids"]) else ""
    return [f"{record['count']} group(s) of {what} differ only in case and name the same file "
            f"on a case-insensitive file system (macOS, Windows): {shown}{more}"]
