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
