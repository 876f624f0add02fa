"""``memo db create-txtdb``: transcripts -> tokenised text databases (docs/FORMAT.md
section 6). One text per segment, keyed by the segment id; with a feature database only the
segments that have faces get one; with splits, one database per split plus ``splits.json``.
Each database goes through the build protocol (:class:`~memodb.store.build.Build`)."""
from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import json
import os
import shutil
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path

from ..config import is_integer
from ..errors import BadInputError
from ..parallel import ordered_map
from ..progress import progress_bar
from ..store.build import Build, Written
from ..store.ids import (KEY_SUFFIX, case_collisions, collisions_record, collisions_warning,
                         id_to_key)
from ..store.manifest import Checksum, read_manifest
from ..store.reader import FeatureDB
from ..store.textcodec import LAYOUTS, FastEncoder
from ..store.textdb import ID2LEN, IMG2TXTS, META, TXT2IMG
from .lexicon import read_lexicon
from .splits import SPLITS_FILE, TRAIN, SplitSpec, assign_splits, parse_split, write_splits_file
from .transcripts import read_transcripts
from .wordpiece import WordPieceTokenizer, bundled_vocab_dir, load_vocab

KIND = "text"
LONG_POLICIES = ("truncate", "drop")
MAX_LISTED = 10  # ids shown per warning
CHUNK = 2048  # texts per worker task


@dataclass
class TextBuildResult:
    out_dir: Path
    dbs: dict  # split name ("" without splits) -> database directory
    manifests: dict  # split name -> manifest
    counts: dict  # corpus-level: what was read, filtered, truncated, kept
    skipped: bool = False  # every database was already built from the same inputs
    warnings: list = field(default_factory=list)


def _gc_paused(func):
    """Run ``func`` with Python's cyclic garbage collector off. A build keeps millions of small
    lists and tuples alive, which the collector would rescan again and again (measured: it
    doubled the build time); the build makes no reference cycles, so pausing it frees nothing
    less. Forked workers inherit the paused state."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return wrapper


@_gc_paused
def create_txtdb(src, out_dir, *, vocab=None, img_db=None, min_faces: int = 1,
                 max_len: int = 100, long: str = "truncate", lexicon=None, labels=None,
                 splits=(), seed: int = 0, dataset: str | None = None,
                 workers: int | None = None, progress: bool = False,
                 replace: bool = False, layout: str = "flat",
                 records: tuple | None = None) -> TextBuildResult:
    """Build the text database(s) of one transcript file.

    - ``vocab``: BERT vocabulary folder (default: the bundled bert-base-uncased vocab.txt).
    - ``img_db``: feature database; only segments stored there with at least ``min_faces``
      kept frames get a text (the others are counted: ``no_features``, ``no_faces``).
    - ``max_len`` / ``long``: texts longer than ``max_len`` pieces are truncated or dropped.
    - ``lexicon``: emotion lexicon file; adds ``emo_input_ids`` / ``emo_labels`` /
      ``emo_type_ids`` to every example.
    - ``labels``: class names; every label must be an index into them.
    - ``splits``: ``["val=3000", "trn3k=3000@train"]`` (see :mod:`memodb.text.splits`); without
      splits OUT_DIR itself is the database, with them OUT_DIR/<split>/ and splits.json.
    - ``replace``: rebuild a database built from other inputs instead of refusing.
    - ``workers``: processes encoding the values (default: all cores); the output does not
      depend on it.
    - ``layout``: ``flat`` (``input_ids`` + ``word_ids``) or ``wwm``, the original
      whole-word-masking layout (``input_ids`` and ``toked_caption`` nested per word).
    - ``records``: ``(transcripts, tag)``: the texts given in memory (a list of
      :class:`~memodb.text.transcripts.Transcript`, e.g. one split of an evaluation protocol)
      instead of read from ``src``, the file they come from; ``src`` and ``tag`` (what selects
      them) are fingerprinted together.
    """
    src, out_dir = Path(src), Path(out_dir)
    max_len, long, min_faces = text_options(max_len, long, min_faces, layout)
    specs = [s if isinstance(s, SplitSpec) else parse_split(s) for s in splits]
    voc = load_vocab(vocab if vocab is not None else bundled_vocab_dir())
    tok = WordPieceTokenizer(voc)
    lex = None
    if lexicon is not None:
        lex = read_lexicon(lexicon, tok.normalize)
        tok.lexicon = lex
    img = _open_img_db(img_db) if img_db is not None else None
    dataset = dataset or src.stem
    options = {"dataset": dataset, "max_len": int(max_len), "long": long,
               "img_db": img is not None, "min_faces": int(min_faces) if img else None,
               "lexicon": lex is not None, "labels": list(labels) if labels else None,
               "splits": [str(s) for s in specs], "seed": int(seed) if specs else None,
               **({"layout": layout} if layout != "flat" else {})}  # flat: as built before
    source = _fingerprint(src, voc, lex, img, specs, records[1] if records else None)
    names = [TRAIN] + [s.name for s in specs] if specs else [""]
    targets = {n: (out_dir / n if n else out_dir) for n in names}
    builds = {n: Build(p, KIND, {**options, "split": n or None}, source, replace=replace,
                       keys_entry=False) for n, p in targets.items()}
    done = {n: b.existing for n, b in builds.items()}
    if all(m is not None for m in done.values()) and (
            not specs or sorted(_listed_splits(out_dir)) == sorted(names)):
        counts = next(iter(done.values()))["corpus"]
        return TextBuildResult(out_dir, targets, done, counts, skipped=True)

    records, src_layout = (list(records[0]), "jsonl") if records else read_transcripts(src)
    collisions = collisions_record(case_collisions(r.id for r in records))
    counts = {"source_texts": len(records), "no_features": 0, "no_faces": 0, "no_caption": 0,
              "empty": 0, "truncated": 0, "dropped_too_long": 0, "texts": 0}
    warnings: list[str] = collisions_warning(collisions, "transcript ids")
    if lex is not None:
        _note(warnings, tok.unmatchable(lex.words), "lexicon entries are several words to "
              "BERT's tokenizer (punctuation inside) and never match")
    if img is not None:
        records = _align(records, img, min_faces, counts, warnings, src)
    texts = [r.text.split() for r in records]
    cache = tok.learn(set().union(*texts))
    plen = {w: len(e[0]) for w, e in cache.items()}
    kept, empty, too_long = [], [], []
    for rec, words in zip(records, texts):
        n = sum(map(plen.__getitem__, words))
        if not n:
            empty.append(rec.id)
            continue
        if n > max_len:
            too_long.append(rec.id)
            if long == "drop":
                continue
            n = max_len
        kept.append((rec, words, n))
    counts["empty"] = len(empty)
    counts["truncated" if long == "truncate" else "dropped_too_long"] = len(too_long)
    counts["texts"] = len(kept)
    _note(warnings, empty, "have no text (empty or whitespace only) and were left out")
    _note(warnings, too_long, f"are longer than {max_len} pieces and were "
          + ("truncated" if long == "truncate" else "left out"))
    if not kept:
        raise BadInputError("no text is left to write (see the counts: "
                            + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")",
                            file=src, options=("img_db", "min_faces"),
                            fix="check the transcripts, {img_db} and {min_faces}")
    label_info = _labels(kept, labels, src)

    by_id = {item[0].id: item for item in kept}
    if specs:
        assigned, unusable = assign_splits(by_id, specs, seed,
                                           known={r.id for r in records} | set(empty))
        for name, ids in unusable.items():
            _note(warnings, ids, f"are listed for split {name} but have no usable text")
    else:
        assigned = {"": sorted(by_id)}
    for name, ids in assigned.items():
        if not ids:
            raise BadInputError(f"split {name} would be empty (none of its ids has a usable "
                                "text)", file=src, fix="check its id list or count")
    roles = {TRAIN: "train", **{s.name: s.role for s in specs}}
    manifests = {}
    base = {"vocab": {**voc.meta(), "file": str(voc.file)},
            "lexicon": lex.summary() if lex else None, "layout": src_layout, "corpus": counts,
            **({"id_case_collisions": collisions} if collisions else {})}
    for name in names:
        manifest = {**base, "split": {"name": name, "role": roles[name], "seed": seed}
                    if name else None, "img_db": _img_link(img, targets[name], min_faces)}
        write = functools.partial(_write_db, assigned[name], by_id, voc, builds[name].options,
                                  manifest, label_info, progress, workers,
                                  (cache, lex, dataset, max_len, layout))
        manifests[name] = builds[name].run(write).manifest
    if specs:
        stale = [out_dir / n for n in _listed_splits(out_dir) if n not in names]
        write_splits_file(out_dir, {n: len(assigned[n]) for n in names}, roles, seed,
                          {"dataset": dataset})
        for path in stale:  # split databases of an earlier split plan, no longer listed
            if read_manifest(path) is not None:
                shutil.rmtree(path)
    return TextBuildResult(out_dir, targets, manifests, counts, warnings=warnings)


def text_options(max_len=100, long="truncate", min_faces=1,
                 layout="flat") -> tuple[int, str, int]:
    """``(max_len, long, min_faces)`` checked, and ``layout`` (the one place their allowed
    values are decided; the dataset config uses it too): ``max_len`` an integer >= 1, ``long``
    truncate or drop, ``min_faces`` an integer >= 0, ``layout`` flat or wwm. Errors name the
    options (BadInputError ``options``)."""
    if layout not in LAYOUTS:
        raise BadInputError(f"unknown text layout {layout!r}", options=("layout",),
                            fix="set {layout} to " + " or ".join(LAYOUTS))
    if not is_integer(max_len) or max_len < 1:
        raise BadInputError(f"{{max_len}} must be an integer >= 1 (got {max_len!r})",
                            options=("max_len",), fix="raise {max_len}")
    if long not in LONG_POLICIES:
        raise BadInputError(f"unknown long-text policy {long!r}", options=("long",),
                            fix="set {long} to truncate or drop")
    if not is_integer(min_faces) or min_faces < 0:
        raise BadInputError(f"{{min_faces}} must be an integer >= 0 (got {min_faces!r})",
                            options=("min_faces",), fix="change {min_faces}")
    return int(max_len), long, int(min_faces)


def _listed_splits(folder: Path) -> list[str]:
    """Split names recorded in a folder's splits.json ([] when there is none)."""
    try:
        return list(json.loads((folder / SPLITS_FILE).read_text(encoding="utf-8"))["splits"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _note(warnings: list, ids, what: str) -> None:
    if ids:
        shown = ", ".join(list(ids)[:MAX_LISTED]) + (" ..." if len(ids) > MAX_LISTED else "")
        warnings.append(f"{len(ids)} text(s) {what}: {shown}")


def _open_img_db(path) -> FeatureDB:
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise BadInputError("not a feature database (no data.mdb)", file=path,
                            fix="give the database directory, e.g. img_db/feat_th0.5_max36_min0")
    return FeatureDB(path)


def _fingerprint(src: Path, voc, lex, img, specs, tag=None) -> dict:
    """Everything the text databases depend on: the transcript file, vocabulary, lexicon,
    feature database, id lists and the tag of texts given in memory."""
    h = hashlib.sha256()
    files = [src] + [Path(s.ids_file) for s in specs if s.ids_file]
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            raise BadInputError("cannot read it", file=f, fix="check the path") from None
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8",
                                                                         "surrogateescape"))
    h.update(f"vocab {voc.sha256} lower {voc.lowercase}\n".encode())
    h.update(f"lexicon {lex.sha256 if lex else None}\n".encode())
    h.update(f"img_db {_img_identity(img)}\n".encode())
    if tag is not None:
        h.update(f"records {tag}\n".encode())
    return {"path": str(src.resolve()), "fingerprint": "sha256:" + h.hexdigest(),
            "files": len(files), "bytes": sum(os.path.getsize(f) for f in files)}


def _img_identity(img) -> str | None:
    if img is None:
        return None
    if img.manifest is not None:
        return img.manifest["checksum"]
    st = os.stat(img.path / "data.mdb")  # a database without manifest: size and time
    return f"{st.st_size}:{st.st_mtime_ns}"


def _img_link(img, db_dir: Path, min_faces: int) -> dict | None:
    if img is None:
        return None
    return {"path": os.path.relpath(img.path.resolve(), db_dir.resolve()),
            "checksum": _img_identity(img), "min_faces": min_faces}


def _align(records, img: FeatureDB, min_faces: int, counts: dict, warnings: list, src):
    """Keep the transcripts whose segment is in the feature db with enough faces."""
    keys = set(img.keys())
    nbb = img.nbb()
    no_feat, no_faces, kept, seen = [], [], [], set()
    for rec in records:
        key = id_to_key(rec.id)
        seen.add(key)
        if key not in keys:
            no_feat.append(rec.id)
            continue
        faces = nbb[key] if key in nbb else len(img[key].get("features", ()))
        if faces < min_faces:
            no_faces.append(rec.id)
            continue
        kept.append(rec)
    no_caption = sorted(k[:-4] for k in keys - seen)
    counts.update(no_features=len(no_feat), no_faces=len(no_faces), no_caption=len(no_caption))
    if records and not kept and no_feat:
        raise BadInputError(f"none of the {len(records)} transcripts has a segment in the "
                            f"feature database {img.path} (e.g. {records[0].id!r})", file=src,
                            options=("img_db",), fix="check that {img_db} belongs to this "
                                                     "corpus")
    _note(warnings, no_feat, "have no segment in the feature database and were left out")
    _note(warnings, no_faces, f"have fewer than {min_faces} face(s) and were left out")
    _note(warnings, no_caption, "are segments of the feature database without a transcript")
    return kept


def _labels(kept, names, src) -> dict | None:
    labels = [rec.label for rec, *_ in kept if rec.label is not None]
    if not labels:
        if names:
            raise BadInputError("label names were given but the transcripts carry no label",
                                file=src, options=("labels",),
                                fix="use downstream refs with labels, or drop {labels}")
        return None
    if names:
        bad = [rec.id for rec, *_ in kept if rec.label >= len(names)]
        if bad:
            raise BadInputError(f"{len(bad)} label(s) outside 0..{len(names) - 1} "
                                f"({', '.join(names)}), e.g. {bad[0]!r}", file=src,
                                options=("labels",),
                                fix="check the labels or the class names ({labels})")
    return {"names": list(names) if names else None,
            "set": list(range(len(names))) if names else sorted(set(labels))}


# (FastEncoder) of the build in progress: set before the worker processes fork, so they inherit
# the word cache instead of receiving it with every task.
_ENCODER = None
_ITEMS: list = []  # [(id, label, words)] of the database being written, in key order


def _encode_chunk(span) -> tuple:
    """Worker: ``(start, stop)`` in :data:`_ITEMS` -> (keys, values joined, their lengths,
    checksum part). The items come through fork, not pickles; a few objects go back."""
    encode, sha256 = _ENCODER.encode, hashlib.sha256
    chunk = _ITEMS[span[0]:span[1]]
    keys = [text_id.encode("utf-8") for text_id, _, _ in chunk]
    values = [encode(text_id, label, words) for text_id, label, words in chunk]
    part = Checksum.records(keys, [sha256(v).digest() for v in values])
    return keys, b"".join(values), [len(v) for v in values], part


def _write_db(ids, by_id, voc, options, manifest, label_info, progress, workers, encoding,
              db) -> Written:
    global _ENCODER, _ITEMS
    lens = [by_id[i][2] for i in ids]
    label_counts: dict[int, int] = {}
    for i in ids:
        label = by_id[i][0].label
        if label is not None:
            label_counts[label] = label_counts.get(label, 0) + 1
    _ITEMS = [(i, by_id[i][0].label, by_id[i][1]) for i in ids]
    tasks = [(a, min(a + CHUNK, len(ids))) for a in range(0, len(ids), CHUNK)]
    _ENCODER = FastEncoder(*encoding)
    _ENCODER.prepare()  # every word's fragments, before the fork: workers share them
    try:
        with progress_bar(progress, len(ids), f"txt {db.final.name}") as bar:
            for keys, blob, sizes, part in ordered_map(_encode_chunk, tasks, workers):
                view, ends = memoryview(blob), list(itertools.accumulate(sizes))
                db.put_many(keys, [view[e - n:e] for e, n in zip(ends, sizes)], part)
                bar(len(keys))
    finally:
        _ENCODER, _ITEMS = None, []
    manifest = {**manifest, "counts": {"texts": len(ids), "pieces": sum(lens),
                                       "max_len": max(lens, default=0)},
                "labels": None if label_info is None else {
                    **label_info,
                    "counts": {str(k): label_counts[k] for k in sorted(label_counts)}}}
    meta = {**voc.meta(), **options}
    return Written(manifest, inner_files={META: meta, **side_files_json(ids, lens)})


def side_files_json(ids, lens) -> dict:
    """The JSON text of ``id2len.json``, ``txt2img.json`` and ``img2txts.json`` (one text per
    segment, ids in key form), exactly as ``json.dumps`` writes these dicts but without building
    them: each id is JSON-encoded once and reused."""
    q = [encode_basestring(i) for i in ids]  # '"<id>"'
    sfx = KEY_SUFFIX + '"'
    return {ID2LEN: "{" + ", ".join([f"{e}: {n}" for e, n in zip(q, lens)]) + "}",
            TXT2IMG: "{" + ", ".join([f"{e}: {e[:-1]}{sfx}" for e in q]) + "}",
            IMG2TXTS: "{" + ", ".join([f"{e[:-1]}{sfx}: [{e}]" for e in q]) + "}"}
