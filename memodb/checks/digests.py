"""``memo db check``: each damaged segment named, from the per-value digests recorded at build
time (``digests.bin``, :mod:`memodb.store.digests`). A database built before them (no
``digests`` in its manifest) is checked with the database-wide checksum alone."""
from __future__ import annotations

from ..store.digests import read_digests
from .report import DbReport


def locate_changes(rep: DbReport, path, manifest: dict, pairs: list, checksum_ok: bool) -> None:
    """Compare each stored value's sha256 (``pairs``: (key bytes, digest) in key order) with the
    digest recorded at build time: ``value_mismatch`` for each changed value, ``value_missing``
    for a key the build wrote that is gone, ``value_extra`` for one it never wrote. When the
    checksum matched there is nothing to locate: only the file itself is verified."""
    entry = manifest.get("digests")
    if entry is None:
        return
    try:
        recorded = read_digests(path, entry, parse=not checksum_ok)  # parsed when needed
    except ValueError as exc:
        rep.problem("digests_unreadable", f"{exc}; damaged segments cannot be named (rebuild "
                    "the database)")
        return
    if checksum_ok:
        return
    size = entry["digest_size"]
    found: list = []
    stored = set()
    for key, digest in pairs:
        stored.add(key)
        want = recorded.get(key)
        if want is None:
            found.append(("value_extra", "stored, but the build wrote no such key", key))
        elif digest[:size] != want:
            found.append(("value_mismatch", "its value differs from the one the build wrote "
                          f"(sha256 {digest[:size].hex()}..., built {want.hex()}...)", key))
    found += [("value_missing", "the build wrote this key; it is no longer stored", k)
              for k in sorted(set(recorded) - stored)]
    for code, message, key in found:
        rep.problem(code, message, key.decode("utf-8", "replace"))
