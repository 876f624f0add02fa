"""``memo db check`` of one text database: every example decoded and checked in worker
processes (chunks in key order, so the checksum combines in order), then the side files,
the manifest and the linked feature database. Each rule is a problem code naming the text id;
the rules: docs/FORMAT.md section 6."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from functools import partial
from itertools import compress
from pathlib import Path

import lmdb

from ..errors import DatabaseError, MemoError
from ..parallel import WorkerDied, chunked, ordered_map, run_isolated
from ..progress import progress_bar
from ..store.ids import KEYS_KEY
from ..store.manifest import Checksum, read_manifest
from ..store.reader import FeatureDB, open_env, stored_ids
from ..store.textcodec import decode_example, flat_input_ids
from ..store.textdb import ID2LEN, IMG2TXTS, META, TXT2IMG
from ..text.wordpiece import SPECIALS, load_vocab, vocab_tokens
from .digests import locate_changes
from .report import DbReport, manifest_fields, utf8_keys

CHUNK = 512
MAX_LISTED = 10  # ids shown in one message
VOCAB_KEYS = ("PAD", "UNK", "CLS", "SEP", "MASK", "v_range", "vocab_sha256")
# The JSON type of each manifest field the checks read (None allowed: absent, or no labels...).
TEXT_FIELDS = {"kind": str, "counts": dict, "options": dict, "vocab": dict, "labels": dict,
               "lexicon": dict, "img_db": dict, "split": dict, "source": dict}

# Vocabulary token -> id maps, loaded in the parent before the workers fork (then inherited).
_VOCABS: dict[str, dict] = {}
# The same vocabularies' special-token ids, v_range and size, as meta.json records them.
_VOCAB_META: dict[str, dict] = {}


def check_text_db(path, *, workers=None, progress=False, links=None):
    """Check one text database (docs/FORMAT.md section 6): (report, set of stored ids or None
    when it is unreadable)."""
    path = Path(path)
    rep = DbReport(str(path), kind="text")
    try:
        manifest = read_manifest(path)
        env = open_env(path)
        with env.begin() as txn:
            stored = list(txn.cursor().iternext(values=False))
    except (MemoError, UnicodeDecodeError) as exc:
        rep.problem("unreadable", str(exc))
        return rep, None
    except Exception as exc:  # lmdb raises many types on damaged files
        rep.problem("unreadable", f"LMDB cannot read it ({type(exc).__name__}: {exc}); "
                    "re-copy or rebuild the database")
        return rep, None
    if manifest is None:
        rep.warn("no_manifest", "no memo manifest (built by another tool, or not finished): "
                 "counts, checksum, vocabulary and feature links cannot be verified")
    if KEYS_KEY in stored:
        stored.remove(KEYS_KEY)
        rep.warn("keys_entry", "a __keys__ entry is stored; text databases have none (readers "
                 "list ids from id2len.json)")
    names = utf8_keys(rep, stored)
    name_set = set(names)

    if manifest is not None:
        manifest = manifest_fields(rep, manifest, TEXT_FIELDS)
    m = manifest or {}
    meta = _side(rep, path, META, dict)
    id2len = _side(rep, path, ID2LEN, dict)
    txt2img = _side(rep, path, TXT2IMG, dict)
    img2txts = _side(rep, path, IMG2TXTS, dict)
    vocab = m.get("vocab") or {}
    options = m.get("options") or {}
    labels = m.get("labels")
    ctx = _context(rep, path, manifest, meta, vocab, options, labels)
    _check_meta_tokens(rep, meta, ctx["vocab"])

    checksum = Checksum()
    pairs = []  # (key, sha256 of the value) in key order: damaged texts named
    lengths: dict[str, int] = {}
    img_of: dict[str, str] = {}
    targets: Counter = Counter()
    with progress_bar(progress, len(names), f"check {path.name}") as bar:
        chunks = chunked(names, CHUNK)
        results = ordered_map(partial(_inspect_chunk, str(path), ctx), chunks,
                              workers if len(chunks) > 1 else 1)  # no pool for one chunk
        for keys, (digests, lens, imgs, tgts, problems, records) in zip(chunks, results):
            bar(len(keys))
            pairs.extend(zip([k.encode("utf-8") for k in keys], digests))
            checksum.update_raw(records)
            for key, code, message in problems:
                rep.problem(code, message, key)
            lengths.update((k, n) for k, n in zip(keys, lens) if n is not None)
            img_of.update((k, i) for k, i in zip(keys, imgs) if i is not None)
            targets.update(t for t in tgts if t is not None)

    max_len = options.get("max_len")
    if isinstance(max_len, int) and max(lengths.values(), default=0) > max_len:
        for key, n in lengths.items():
            if n > max_len:
                rep.problem("too_long", f"{n} pieces, more than the build's max_len {max_len}",
                            key)
    if id2len is not None:
        _same_keys(rep, ID2LEN, id2len, name_set)
        for key, n in lengths.items() if id2len != lengths else ():
            if key in id2len and id2len[key] != n:
                rep.problem("id2len_mismatch", f"{ID2LEN} says {id2len[key]!r} pieces, the "
                            f"example holds {n}", key)
    if txt2img is not None:
        _same_keys(rep, TXT2IMG, txt2img, name_set)
        for key, img in img_of.items() if txt2img != img_of else ():
            if key in txt2img and txt2img[key] != img:
                rep.problem("txt2img_mismatch", f"{TXT2IMG} says {txt2img[key]!r}, the example's "
                            f"img_fname is {img!r}", key)
        if img2txts is not None:
            _check_inverse(rep, txt2img, img2txts)
    rep.counts = {"texts": len(names), "pieces": sum(lengths.values())}
    if manifest is not None:
        _check_manifest(rep, manifest, meta, lengths, targets, len(names), checksum.hexdigest())
        locate_changes(rep, path, manifest, pairs, manifest.get("checksum") == checksum.hexdigest())
        if manifest.get("img_db"):
            _check_img_link(rep, path, manifest["img_db"],
                            txt2img if txt2img is not None else img_of, links)
    return rep, name_set


def _side(rep: DbReport, path: Path, name: str, typ):
    p = path / name
    if not p.exists():
        rep.problem("side_missing", f"no {name} in the database directory; rebuild it")
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        rep.problem("side_unreadable", f"{name} is not readable JSON ({exc}); rebuild")
        return None
    if not isinstance(data, typ):
        rep.problem("side_unreadable", f"{name} is not a JSON object; rebuild")
        return None
    return data


def _context(rep, path, manifest, meta, vocab, options, labels) -> dict:
    """What every worker needs to check one example (small: it is sent with each chunk)."""
    meta = meta or {}
    size = vocab.get("vocab_size", meta.get("vocab_size"))
    if not isinstance(size, int):
        v_range = vocab.get("v_range", meta.get("v_range"))
        size = v_range[1] if isinstance(v_range, list) and len(v_range) == 2 else None
    label_set = None
    if isinstance(labels, dict) and isinstance(labels.get("set"), list):
        if all(type(x) is int for x in labels["set"]):
            label_set = frozenset(labels["set"])
        else:
            rep.problem("manifest_invalid", "manifest.json: labels.set is not a list of "
                        "integers; rebuild the database")
    lexicon = manifest.get("lexicon") if manifest else None
    categories = lexicon.get("categories") if isinstance(lexicon, dict) else None
    return {"memo": manifest is not None, "vocab_size": size, "label_set": label_set,
            "labels": None if manifest is None else labels is not None,
            "lexicon": None if manifest is None else lexicon is not None,
            "emo_types": len(categories) if isinstance(categories, list) else None,
            "layout": None if manifest is None else options.get("layout", "flat"),
            "vocab": _vocab_for(rep, path, vocab)}


def _vocab_for(rep, path: Path, vocab: dict) -> str | None:
    """The vocabulary file to check pieces against (loaded into _VOCABS), or None."""
    file = vocab.get("file")
    if not file:
        return None
    if not isinstance(file, str):
        rep.problem("manifest_invalid", f"manifest.json: vocab.file is {file!r}, not a path; "
                    "rebuild the database")
        return None
    f = Path(file) if Path(file).is_absolute() else path / file
    try:
        data = f.read_bytes()
    except OSError:
        rep.warn("vocab_unavailable", f"the vocabulary {f} recorded at build time is gone; "
                 "pieces cannot be checked against it")
        return None
    sha = hashlib.sha256(data).hexdigest()
    if sha != vocab.get("vocab_sha256"):
        rep.problem("vocab_changed", f"the vocabulary {f} has sha256 {sha}, the build used "
                    f"{vocab.get('vocab_sha256')}: the ids were made with another vocabulary")
        return None
    key = f"{f.resolve()}\0{sha}"
    if key not in _VOCABS:
        _VOCABS[key] = _vocab_index(data)
    return key


def _check_meta_tokens(rep: DbReport, meta: dict | None, key: str | None) -> None:
    """meta.json's special-token ids, ``v_range`` and ``vocab_size`` against the recorded
    vocabulary (``key``: found, with the build's hash; see :func:`_vocab_for`), read by the
    rule the build used (:func:`memodb.text.wordpiece.load_vocab`)."""
    if meta is None or not key:
        return
    file = Path(key.split("\0")[0])
    if key not in _VOCAB_META:  # once per vocabulary and check run
        try:
            vocab = load_vocab(file)
        except MemoError as exc:
            rep.problem("vocab_invalid", f"the recorded vocabulary: {exc}")
            return
        _VOCAB_META[key] = {**vocab.ids, "v_range": list(vocab.v_range),
                            "vocab_size": vocab.size}
    want = _VOCAB_META[key]
    for k, v in want.items():
        if k not in meta or meta[k] != v:
            token = f"{SPECIALS[k]!r} id" if k in SPECIALS else k
            got = f"{k} {meta[k]!r}" if k in meta else f"no {k}"
            rep.problem("meta_vocab_mismatch", f"{META} has {got}; the vocabulary {file} "
                        f"(the build's, same sha256) gives {token} {v!r}: readers would use "
                        "wrong token ids; rebuild the text database")


def _manifest_deleted(rep: DbReport, img_path: Path, recorded) -> bool:
    """A linked feature database without manifest.json, although this text database recorded
    its memo checksum at build time: the manifest was deleted (a problem)."""
    if not (isinstance(recorded, str) and recorded.startswith("sha256:")):
        return False
    rep.problem("img_db_manifest_missing", f"the feature database {img_path} has no "
                f"manifest.json, but this text database was built against its manifest "
                f"(checksum {recorded}): it was deleted, so nothing proves the features are "
                "the ones the texts were built on; rebuild with memo db build (or memo db "
                "create-imgdb, then the text databases)")
    return True


def _vocab_index(data: bytes) -> dict:
    index: dict[str, int] = {}
    for i, tok in enumerate(vocab_tokens(data.decode("utf-8", "replace"))):
        index.setdefault(tok, i)
    return index


def _worker_vocab(key: str | None):
    """The token map in a worker: inherited through fork, or read again (spawn)."""
    if not key:
        return None
    if key not in _VOCABS:
        _VOCABS[key] = _vocab_index(Path(key.split("\0")[0]).read_bytes())
    return _VOCABS[key]


_INT, _STR, _LIST = {int}, {str}, {list}


def _int_list(v) -> bool:
    return type(v) is list and (not v or set(map(type, v)) == _INT)


def _str_list(v) -> bool:
    return type(v) is list and (not v or set(map(type, v)) == _STR)


def _inspect_chunk(path: str, ctx: dict, keys: list[str]):
    """Decode and check each example of a chunk. Returns columns, one item per key: sha256
    digests, lengths (None: unknown), img_fname (None: unusable), targets (None: none), the
    problems found as (key, code, message), and the checksum records of the chunk."""
    vocab = _worker_vocab(ctx["vocab"])
    env = open_env(path)
    with env.begin(buffers=True) as txn:
        cols = _screen(txn, keys, ctx, vocab) or _inspect_values(txn, keys, ctx, vocab)
    records = Checksum.records([k.encode("utf-8") for k in keys], cols[0])
    return (*cols, records)


def _inspect_values(txn, keys: list[str], ctx: dict, vocab):
    """:func:`_inspect_chunk`'s columns, example by example (:func:`_inspect_example`)."""
    digests, lengths, imgs, targets, problems = [], [], [], [], []
    for key in keys:
        buf = txn.get(key.encode("utf-8"))
        digests.append(hashlib.sha256(buf).digest())
        try:
            ex = decode_example(buf)
        except DatabaseError as exc:
            ex, found = None, [("undecodable", str(exc))]
        else:
            found = []
        if ex is None:
            lengths.append(None), imgs.append(None), targets.append(None)
        else:
            length, img, target = _inspect_example(key, ex, ctx, vocab, found)
            lengths.append(length), imgs.append(img), targets.append(target)
        problems.extend((key, code, msg) for code, msg in found)
    return digests, lengths, imgs, targets, problems


def _screen(txn, keys: list[str], ctx: dict, vocab):
    """:func:`_inspect_values`' columns for a chunk of flat-layout examples in which nothing is
    wrong, with each element test run once over the whole chunk (the pieces, ids, word ids,
    emotion fields of every example concatenated); None as soon as anything may be wrong or
    the examples are of another shape (that chunk is inspected example by example). Equal
    lengths per example make the chunk-wide comparisons (pieces against the vocabulary,
    emo_input_ids against the ids emo_type_ids marks) hold example by example."""
    if ctx["layout"] == "wwm":
        return None
    fields = ("id", "dataset", "file_path", "img_fname") if ctx["memo"] else ("id", "img_fname")
    emo = ctx["lexicon"]
    labels, label_set = ctx["labels"], ctx["label_set"]
    digests, lengths, imgs, targets = [], [], [], []
    pieces, ids, ints, types, marked, emo_ids, emo_labels = [], [], [], [], [], [], []
    sha256, unpack = hashlib.sha256, decode_example
    for key in keys:
        buf = txn.get(key.encode("utf-8"))
        if buf is None:
            return None
        digests.append(sha256(buf).digest())
        try:
            ex = unpack(buf)
        except DatabaseError:
            return None
        if type(ex) is not dict:
            return None
        get = ex.get
        for f in fields:
            if type(get(f)) is not str:
                return None
        if ex["id"] != key:
            return None
        caption, i, w = get("toked_caption"), get("input_ids"), get("word_ids")
        if type(caption) is not list or type(i) is not list or type(w) is not list:
            return None
        n = len(i)
        if len(caption) != n or len(w) != n:
            return None
        pieces += caption
        ids += i
        ints += w
        if emo or "emo_input_ids" in ex or "emo_labels" in ex or "emo_type_ids" in ex:
            t, e, el = get("emo_type_ids"), get("emo_input_ids"), get("emo_labels")
            if type(t) is not list or type(e) is not list or type(el) is not list \
                    or len(t) != n or len(el) != len(e) or len(e) != n - t.count(0):
                return None
            types += t
            emo_ids += e
            emo_labels += el
            marked.append(True)
        else:
            marked.append(False)
        if "target" in ex:
            target = ex["target"]
            if type(target) is not int or (label_set is not None and target not in label_set) \
                    or labels is False:
                return None
        elif labels:
            return None
        else:
            target = None
        lengths.append(n), imgs.append(ex["img_fname"]), targets.append(target)
    if (pieces and set(map(type, pieces)) != _STR) \
            or any(v and set(map(type, v)) != _INT for v in (ids, ints, types, emo_ids)) \
            or (emo_labels and set(map(type, emo_labels)) != _LIST):
        return None
    size, n_types = ctx["vocab_size"], ctx["emo_types"]
    if ids and size is not None and (min(ids) < 0 or max(ids) >= size):
        return None
    if vocab is not None and list(map(vocab.get, pieces)) != ids:
        return None
    if types:
        if n_types is not None and (min(types) < 0 or max(types) > n_types):
            return None
        # the ids of the examples with emotion fields, in order: compare with emo_input_ids
        if any(marked) and not all(marked):
            ids = [x for m, n, start in _spans(marked, lengths) if m
                   for x in ids[start:start + n]]
        if list(compress(ids, types)) != emo_ids:
            return None
    return digests, lengths, imgs, targets, []


def _spans(marked: list, lengths: list):
    """(marked, length, start in the concatenation) of each example."""
    start = 0
    for m, n in zip(marked, lengths):
        yield m, n, start
        start += n


def _inspect_example(key: str, ex, ctx: dict, vocab, problems: list):
    """Check one decoded example; append (code, message) to ``problems``; return its
    (length, img_fname, target), None where unusable. Element checks run in C (map, set,
    min / max) so a 200k-text database checks in seconds."""

    def add(code, message):
        problems.append((code, message))

    if type(ex) is not dict:
        add("bad_field", f"the value is a {type(ex).__name__}, not a map of fields")
        return None, None, None

    def bad(field, what):
        add("bad_field", f"'{field}' " + ("is missing" if field not in ex else f"is not {what}"))

    get = ex.get
    for f in (("id", "dataset", "file_path", "img_fname") if ctx["memo"]
              else ("id", "img_fname")):
        if type(get(f)) is not str:
            bad(f, "a string")
    if type(get("id")) is str and ex["id"] != key:
        add("id_mismatch", f"the example's id is {ex['id']!r}, its key {key!r}")
    caption = get("toked_caption")
    if type(caption) is list and caption and type(caption[0]) is list:  # whole-word layout
        caption = [p for w in caption if _str_list(w) for p in w] \
            if all(map(_str_list, caption)) else None
    if not _str_list(caption):
        bad("toked_caption", "a list of strings (or of per-word lists of strings)")
        caption = None
    ids, words = get("input_ids"), None
    try:
        ids, words = flat_input_ids(ids)
    except DatabaseError as exc:
        add("bad_field", str(exc))
        ids = None
    else:
        if not _int_list(ids):
            bad("input_ids", "a list of integers (or of per-word lists of integers)")
            ids = None
    layout = ctx["layout"]
    if layout is not None and type(get("input_ids")) is list and ids and \
            (words is not None) != (layout == "wwm"):
        add("layout_mismatch", f"'input_ids' is {'nested per word' if words else 'flat'}, "
            f"the build's layout is {layout}")
    seqs = {"toked_caption": caption, "input_ids": ids}
    if words is not None:  # the whole-word layout: the nesting gives the words
        seqs["word_ids"] = words
        if "word_ids" in ex and get("word_ids") != words:
            add("bad_field", "'word_ids' disagrees with the per-word nesting of 'input_ids'")
    elif (ctx["memo"] and layout != "wwm") or "word_ids" in ex:
        seqs["word_ids"] = get("word_ids") if _int_list(get("word_ids")) else None
        if seqs["word_ids"] is None:
            bad("word_ids", "a list of integers")
    emo = ctx["lexicon"] or "emo_input_ids" in ex or "emo_labels" in ex or "emo_type_ids" in ex
    if emo:
        for f in ("emo_input_ids", "emo_type_ids"):
            if not _int_list(get(f)):
                bad(f, "a list of integers")
        el = get("emo_labels")
        if not (type(el) is list and (not el or set(map(type, el)) == _LIST)):
            bad("emo_labels", "a list of lists")
        if _int_list(get("emo_type_ids")):
            seqs["emo_type_ids"] = ex["emo_type_ids"]
    lens = {f: len(v) for f, v in seqs.items() if v is not None}
    length = lens.get("input_ids", lens.get("toked_caption"))
    if len(set(lens.values())) > 1:
        add("length_mismatch", "sequences differ in length ("
            + ", ".join(f"{f} {n}" for f, n in lens.items()) + ")")
    size = ctx["vocab_size"]
    if ids and size is not None and (min(ids) < 0 or max(ids) >= size):
        bad_ids = [i for i in ids if not 0 <= i < size]
        add("id_out_of_range", f"input_ids {bad_ids[:MAX_LISTED]} outside [0, {size})")
    if vocab is not None and ids is not None and caption is not None \
            and list(map(vocab.get, caption)) != ids[:len(caption)]:
        for pos, (piece, i) in enumerate(zip(caption, ids)):
            if vocab.get(piece) != i:
                add("piece_mismatch", f"piece {pos} {piece!r} has id {vocab.get(piece)} in the "
                    f"vocabulary, input_ids holds {i}")
                break
    if emo and ids is not None and "emo_type_ids" in seqs and _int_list(get("emo_input_ids")):
        n = ctx["emo_types"]
        types = seqs["emo_type_ids"]
        if n is not None and types and (min(types) < 0 or max(types) > n):
            add("emo_mismatch", f"emo_type_ids outside 0..{n} (the lexicon's categories)")
        elif ex["emo_input_ids"] != [i for i, t in zip(ids, types) if t]:
            add("emo_mismatch", "emo_input_ids are not the input_ids of the pieces "
                "emo_type_ids marks")
        if type(get("emo_labels")) is list and \
                len(ex["emo_labels"]) != len(ex["emo_input_ids"]):
            add("length_mismatch", f"emo_labels {len(ex['emo_labels'])}, "
                f"emo_input_ids {len(ex['emo_input_ids'])}")
    target = get("target")
    if "target" in ex:
        if type(target) is not int:
            bad("target", "an integer")
            target = None
        elif ctx["label_set"] is not None and target not in ctx["label_set"]:
            add("label_out_of_range", f"target {target} is not one of the labels "
                f"{sorted(ctx['label_set'])}")
        elif ctx["labels"] is False:
            add("label_unexpected", f"target {target} stored but the manifest records no "
                "labels")
    elif ctx["labels"]:
        add("label_missing", "no target, but the database has labels")
    img = get("img_fname")
    return length, img if type(img) is str else None, target


def _same_keys(rep: DbReport, name: str, side: dict, stored: set) -> None:
    code = name.split(".")[0]
    side_keys = side.keys()
    for k in sorted(side_keys - stored):
        rep.problem(f"{code}_extra", f"in {name} but not stored", k)
    for k in sorted(stored - side_keys):
        rep.problem(f"{code}_unlisted", f"stored but not in {name}", k)


def _check_inverse(rep: DbReport, txt2img: dict, img2txts: dict) -> None:
    """img2txts must be exactly {img: [ids]} of txt2img inverted."""
    lists: dict = {}
    for t, img in txt2img.items():
        if type(img) is str:
            lists.setdefault(img, []).append(t)
    if lists == img2txts:  # the usual case: same lists in the same order
        return
    expect = {img: set(ts) for img, ts in lists.items()}
    named = set()
    for img, ts in img2txts.items():
        if not (isinstance(ts, list) and all(isinstance(t, str) for t in ts)):
            rep.problem("img2txts_mismatch", f"{IMG2TXTS}[{img!r}] is not a list of text ids")
            continue
        want = expect.get(img, set())
        if not ts and not want:
            rep.problem("img2txts_mismatch", f"{IMG2TXTS} lists {img!r} with no text; "
                        f"no text maps to it in {TXT2IMG}")
        if len(set(ts)) != len(ts):
            twice = [t for t, n in Counter(ts).items() if n > 1]
            rep.problem("img2txts_mismatch", f"{IMG2TXTS}[{img!r}] lists a text twice",
                        min(twice))
        for t in sorted(set(ts) - want):
            named.add(t)
            rep.problem("img2txts_mismatch", f"{IMG2TXTS} lists it under {img!r}, {TXT2IMG} "
                        f"maps it to {txt2img.get(t)!r}", t)
    for img, want in expect.items():
        have = img2txts.get(img)
        have = set(have) if _str_list(have) else set()
        for t in sorted(want - have):
            if t not in named:
                rep.problem("img2txts_mismatch", f"{TXT2IMG} maps it to {img!r} but "
                            f"{IMG2TXTS} does not list it there", t)


def _check_manifest(rep, manifest, meta, lengths, targets, n_texts, checksum) -> None:
    m_counts = manifest.get("counts") or {}
    found = {"texts": n_texts, "pieces": sum(lengths.values()),
             "max_len": max(lengths.values(), default=0)}
    for k, v in found.items():
        if k in m_counts and m_counts[k] != v:
            rep.problem("count_mismatch", f"manifest says {k} {m_counts[k]}, the database "
                        f"holds {v}")
    if "texts" not in m_counts:
        rep.problem("count_mismatch", "the manifest records no text count")
    labels = manifest.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get("counts"), dict):
        have = {str(k): v for k, v in sorted(targets.items())}
        if labels["counts"] != have:
            rep.problem("label_count_mismatch", f"manifest label counts {labels['counts']}, "
                        f"the examples hold {have}")
    if manifest.get("checksum") != checksum:
        rep.problem("checksum_mismatch", f"content checksum {checksum} differs from the "
                    f"manifest's {manifest.get('checksum')}: values changed after the build")
    vocab = manifest.get("vocab") or {}
    if meta is not None:
        for k in VOCAB_KEYS:
            if k in vocab and meta.get(k) != vocab[k]:
                rep.problem("meta_mismatch", f"{META} has {k} {meta.get(k)!r}, the manifest's "
                            f"vocabulary {vocab[k]!r}")


def _linked(path: Path, links: dict | None):
    """(keys set, nbb, manifest) of a feature database, cached per check run (an
    error :func:`prefetch_link` met reading it is raised again)."""
    real = os.path.realpath(path)
    if links is not None and real in links:
        got = links[real]
        if isinstance(got, MemoError):
            raise got
        return got
    got = read_linked(path)
    if links is not None:
        links[real] = got
    return got


def read_linked(path: Path, keys: set | None = None):
    """(stored keys, nbb, manifest) of a linked feature database; ``keys``: its stored keys
    when the caller has listed them (else they are listed here). Plain data: a process it is
    handed to does not open the database."""
    db = FeatureDB(path)
    return stored_ids(path) if keys is None else keys, db.nbb(), db.manifest


def prefetch_link(path, links: dict | None) -> None:
    """Read the feature database the text database at ``path`` links into ``links``, in a
    child process (:func:`~memodb.parallel.run_isolated`): a damaged one cannot take the
    check down, and text checks forked later inherit it. What stopped the read is stored
    instead (the text check reports it as ``img_db_unreadable``)."""
    if links is None:
        return
    try:
        link = (read_manifest(path) or {}).get("img_db")
    except MemoError:
        return  # the text check reports the manifest
    rel = link.get("path") if isinstance(link, dict) else None
    img_path = Path(path) / rel if isinstance(rel, str) else None
    if img_path is None or not (img_path / "data.mdb").is_file():
        return
    real = os.path.realpath(img_path)
    if real in links:
        return
    try:
        links[real] = run_isolated(read_linked, img_path)
    except WorkerDied as exc:
        links[real] = DatabaseError(f"reading {img_path} stopped ({exc}): it is damaged; "
                                    "see its own check")


def _check_img_link(rep: DbReport, path: Path, link: dict, txt2img: dict, links) -> None:
    rel = link.get("path")
    img_path = path / rel if isinstance(rel, str) else None
    if img_path is None or not (img_path / "data.mdb").is_file():
        rep.problem("img_db_missing", f"the feature database {img_path} (img_db.path {rel!r} "
                    "in the manifest, relative to this database) is not there: it was moved "
                    "or deleted; move it back or rebuild the text database")
        return
    try:
        keys, nbb, img_manifest = _linked(img_path, links)
    except (MemoError, lmdb.Error) as exc:
        rep.problem("img_db_unreadable", f"the linked feature database: {exc}")
        return
    recorded = link.get("checksum")
    if img_manifest is not None:
        if img_manifest.get("checksum") != recorded:
            rep.problem("img_db_changed", f"the feature database {img_path} changed since the "
                        f"text database was built (checksum {img_manifest.get('checksum')}, "
                        f"built against {recorded}); rebuild the text database")
    elif not _manifest_deleted(rep, img_path, recorded):
        st = os.stat(img_path / "data.mdb")
        if f"{st.st_size}:{st.st_mtime_ns}" != recorded:
            rep.warn("img_db_unverified", f"the feature database {img_path} has no manifest "
                     "and its size or time differ from the build's: it may have changed")
    min_faces = link.get("min_faces") or 0
    if type(min_faces) is not int:
        rep.problem("manifest_invalid", f"manifest.json: img_db.min_faces is {min_faces!r}, "
                    "not an integer; rebuild the database")
        min_faces = 0
    db = None  # the linked FeatureDB, opened for a segment the nbb json lacks
    for t in sorted(txt2img):
        img = txt2img[t]
        if type(img) is not str:
            continue  # reported as txt2img_mismatch
        if img not in keys:
            rep.problem("img_missing", f"its segment {img!r} is not in the feature database "
                        f"{img_path}", t)
            continue
        if min_faces:
            try:
                if img in nbb:
                    n = nbb[img]
                else:
                    db = db or FeatureDB(img_path)
                    n = len(db[img].get("features", ()))
            except (MemoError, lmdb.Error) as exc:
                rep.problem("img_unreadable", f"its segment {img!r}: {exc}", t)
                continue
            if type(n) is int and n < min_faces:
                rep.problem("img_too_few_faces", f"its segment {img!r} has {n} frame(s) in "
                            f"the feature database, the build required {min_faces}", t)

