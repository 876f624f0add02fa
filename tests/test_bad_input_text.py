"""Bad input for create-txtdb, as the product meets it in real life (docs/DATABASES.md, "Inputs").

Each error case asserts the named error, a message naming the file and / or the segment (and a
fix), and that nothing was published or changed: no text database, no ``.partial`` directory or
lock, no ``splits.json``, and the inputs and earlier outputs byte-identical (mtimes included).
Cases that are not errors (empty sentences, very long sentences, captions without features)
assert the counts and warnings instead.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pytest

from conftest import run_and_kill
from memodb.errors import BadInputError, BadInputsError, OutputExistsError
from memodb.store.manifest import read_manifest
from memodb.store.textdb import TextDB
from memodb.synth import WORDS, make_captions
from memodb.text.txtdb import create_txtdb
from memodb.text.wordpiece import bundled_vocab_dir

# --------------------------------------------------------------------------------------------
# helpers


def snapshot(folder) -> dict:
    """Files -> (sha256, mtime_ns), folders -> None, hidden entries included; {} if absent."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (None if p.is_dir() else
                                         (hashlib.sha256(p.read_bytes()).hexdigest(),
                                          p.stat().st_mtime_ns))
            for p in sorted(folder.rglob("*"))}


def assert_names(exc_or_text, *needles) -> str:
    text = str(exc_or_text)
    for needle in needles:
        assert str(needle) in text, f"{needle!r} not named in: {text}"
    return text


def write_json(path, obj) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


class Work:
    """A work folder holding earlier outputs: ``prev`` (a single text database) and ``group``
    (a split group), both built from ``good.json``. Bad builds go to ``work/txt`` or replace
    ``prev``; afterwards the folder must be exactly as it was."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "work"
        self.good = tmp_path / "good.json"
        make_captions([f"No0007.Good_{k}" for k in range(1, 13)], self.good, seed=7)
        create_txtdb(self.good, self.root / "prev")
        create_txtdb(self.good, self.root / "group", splits=["val=3"], seed=1)
        (self.root / "notes.txt").write_text("the user's own file")
        self.out = self.root / "txt"

    def fails(self, error, src, *needles, replace_prev: bool = True, **kw):
        """``create_txtdb(src, ...)`` must raise ``error`` naming ``needles`` into a new OUT_DIR
        and (``replace_prev``) over the earlier database with ``replace=True``; nothing in the
        work folder nor the inputs may change. Returns the first exception."""
        inputs = {p: snapshot(p.parent) for p in {Path(src), self.good}}
        before = snapshot(self.root)
        with pytest.raises(error) as ei:
            create_txtdb(src, self.out, **kw)
        assert_names(ei.value, *needles)
        self.unchanged(before)
        if replace_prev:
            with pytest.raises(error) as ei2:
                create_txtdb(src, self.root / "prev", replace=True, **kw)
            assert str(ei2.value) == str(ei.value).replace(str(self.out), str(self.root / "prev"))
            self.unchanged(before)
        for p, snap in inputs.items():
            assert snapshot(p.parent) == snap, f"an input under {p.parent} changed"
        return ei.value

    def unchanged(self, before) -> None:
        assert not self.out.exists(), "a database was published"
        leftovers = [p for p in self.root.rglob(".*")]
        assert not leftovers, f"left behind: {leftovers}"
        assert not (self.out / "splits.json").exists()
        assert snapshot(self.root) == before


@pytest.fixture
def work(tmp_path):
    return Work(tmp_path)


def captions(tmp_path, data, name="caps.json") -> Path:
    return write_json(tmp_path / name, data)


# --------------------------------------------------------------------------------------------
# 1. empty, whitespace-only and very long sentences (not errors)


EMPTY = {"m_1": [""], "m_2": ["   "], "m_3": ["\t\n\r "], "m_4": [], "m_5": [" ", ""],
         "m_6": ["\u200b \u00a0"], "m_7": ["i am here ."], "m_8": ["", "fine"]}


def test_empty_and_whitespace_sentences_are_dropped_and_counted(tmp_path):
    src = captions(tmp_path, EMPTY)
    r = create_txtdb(src, tmp_path / "txt")
    assert r.counts["empty"] == 6 and r.counts["texts"] == 2 and r.counts["source_texts"] == 8
    assert TextDB(tmp_path / "txt").ids() == ["m_7", "m_8"]
    assert TextDB(tmp_path / "txt")["m_8"]["toked_caption"] == ["fine"]
    text = "\n".join(w for w in r.warnings if "empty" in w)
    assert_names(text, "6 text(s)", *[f"m_{k}" for k in range(1, 7)])
    assert read_manifest(tmp_path / "txt")["corpus"]["empty"] == 6

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in EMPTY.items()))
    r = create_txtdb(jsonl, tmp_path / "txt2")
    assert r.counts["empty"] == 6 and TextDB(tmp_path / "txt2").ids() == ["m_7", "m_8"]


def test_only_empty_sentences_is_an_error(work, tmp_path):
    src = captions(tmp_path, {"m_1": [""], "m_2": ["  "], "m_3": []})
    e = work.fails(BadInputError, src, src, "no text is left", "empty 3", "fix:")
    assert e.file == src


def test_2000_word_sentence(tmp_path):
    rng = random.Random(0)
    huge = " ".join(rng.choice(WORDS) for _ in range(2000))
    src = captions(tmp_path, {"m_1": [huge], "m_2": ["short one ."]})
    for long, n in (("truncate", 2), ("drop", 1)):
        t = time.perf_counter()
        r = create_txtdb(src, tmp_path / long, long=long, max_len=100)
        assert time.perf_counter() - t < 3
        db = TextDB(tmp_path / long)
        assert len(db) == n and max(db.id2len.values()) <= 100
        assert r.counts["truncated" if long == "truncate" else "dropped_too_long"] == 1
        assert any("m_1" in w for w in r.warnings)
    assert TextDB(tmp_path / "truncate").id2len["m_1"] == 100


# --------------------------------------------------------------------------------------------
# 2. undecodable or malformed transcript files


def test_non_utf8_transcript(work, tmp_path):
    src = tmp_path / "latin1.json"
    src.write_bytes('{\n "m_1": ["fine"],\n "m_2": ["caf\xe9 au lait"]\n}\n'.encode("latin-1"))
    e = work.fails(BadInputError, src, src, "line 3", "0xe9", "UTF-8", "iconv")
    assert e.file == src

    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes(b'{"id": "m_1", "text": "ok"}\n{"id": "m_2", "text": "na\xefve"}\n')
    work.fails(BadInputError, jsonl, jsonl, "line 2", "0xef", "UTF-8")


def test_invalid_json(work, tmp_path):
    src = tmp_path / "cut.json"
    src.write_text('{\n "m_1": ["fine"],\n "m_2": ["cut off')
    work.fails(BadInputError, src, src, "not valid JSON", "line 3", "column", "fix:")

    src = tmp_path / "list.json"
    src.write_text('[["m_1", "text"]]')
    work.fails(BadInputError, src, src, "top-level JSON is a list", "fix:")


def test_invalid_json_lines_all_reported(work, tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text('{"id": "m_1", "text": "ok"}\n{"id": "m_2", "text": \n'
                   '{"id": "m_3", "text": "ok"}\n{"id": 4, "text": "x"}\n["m_5"]\n'
                   '{"id": "m_6", "text": "ok"}\n')
    e = work.fails(BadInputsError, src, src, "line 2", "line 4", "line 5")
    assert len(e.errors) == 3


@pytest.mark.parametrize("data, segment, needle", [
    ({"m_1": ["ok"], "m_2": [1, 2]}, "m_2", "expected a string or a list of strings"),
    ({"m_1": ["ok"], "m_2": None}, "m_2", "expected a string or a list of strings"),
    ({"m_1": {"txt": ["ok"], "label": 1}, "m_2": {"txt": ["ok"], "label": "sad"}}, "m_2",
     "not a non-negative integer"),
    ({"m_1": {"txt": ["ok"], "label": 1}, "m_2": {"txt": ["ok"], "label": -1}}, "m_2",
     "not a non-negative integer"),
    ({"m_1": {"txt": ["ok"], "label": 1}, "m_2": {"text": ["ok"], "label": 0}}, "m_2",
     "txt"),
    ({"m_1": {"txt": ["ok"], "label": 1}, "m_2": {"txt": ["ok"]}}, None,
     "1 of 2 records have no label"),
    ({"": ["empty id"], "m_2": ["ok"]}, "", "reserved or empty"),
], ids=["not-strings", "null", "label-str", "label-negative", "no-txt", "label-missing",
        "empty-id"])
def test_malformed_records(work, tmp_path, data, segment, needle):
    src = captions(tmp_path, data)
    e = work.fails(BadInputsError, src, src, needle, "fix:")
    if segment is not None:
        assert e.errors[0].segment == segment
        assert {x.segment for x in e.errors} <= {segment, None}
        assert_names(e, f"segment {segment!r}")


# --------------------------------------------------------------------------------------------
# 3. captions vs features


def test_captions_and_features_that_do_not_match(work, tmp_path, feature_db, h5_ids):
    src = tmp_path / "caps.json"
    make_captions(h5_ids[:5] + ["No0042.Elsewhere_1", "No0042.Elsewhere_2"], src)
    r = create_txtdb(src, tmp_path / "partly", img_db=feature_db, min_faces=0)
    assert r.counts["no_features"] == 2 and r.counts["no_caption"] == 15
    assert r.counts["texts"] == 5
    assert_names("\n".join(r.warnings), "No0042.Elsewhere_1", "No0042.Elsewhere_2",
                 h5_ids[-1], "without a transcript")

    other = tmp_path / "other.json"
    make_captions([f"No0042.Elsewhere_{k}" for k in range(1, 4)], other)
    img_before = snapshot(feature_db.parent)
    e = work.fails(BadInputError, other, other, "none of the 3 transcripts", feature_db,
                   "No0042.Elsewhere_1", "--img-db", img_db=feature_db)
    assert e.file == other
    assert snapshot(feature_db.parent) == img_before

    nbb = json.loads((feature_db.parent / "nbb_th0.5_max36_min0.json").read_text())
    faceless = tmp_path / "faceless.json"
    make_captions([k[:-4] for k, n in nbb.items() if n == 0], faceless)
    work.fails(BadInputError, faceless, faceless, "no text is left", "no_faces 2",
               "--min-faces", img_db=feature_db)


def test_img_db_that_is_not_a_database(work, tmp_path, feature_db):
    src = tmp_path / "caps.json"
    make_captions(["No0000.Movie_0_1"], src)
    work.fails(BadInputError, src, feature_db.parent, "not a feature database", "fix:",
               img_db=feature_db.parent)


# --------------------------------------------------------------------------------------------
# 4. duplicate and colliding ids


def test_duplicate_id_in_json_object(work, tmp_path):
    src = tmp_path / "dup.json"
    src.write_text('{"m_1": ["first"], "m_2": ["ok"], "m_1": ["second"]}')
    e = work.fails(BadInputsError, src, src, "'m_1'", "more than once", "fix:")
    assert [x.segment for x in e.errors] == ["m_1"]

    refs = tmp_path / "refs.json"
    refs.write_text('{"u_1": {"txt": ["a"], "label": 0}, "u_1": {"txt": ["b"], "label": 1}}')
    e = work.fails(BadInputsError, refs, refs, "'u_1'", "more than once")
    assert [x.segment for x in e.errors] == ["u_1"]


def test_duplicate_id_in_json_lines(work, tmp_path):
    src = tmp_path / "dup.jsonl"
    src.write_text('{"id": "m_1", "text": "a"}\n{"id": "m_2", "text": "b"}\n'
                   '{"id": "m_1", "text": "c"}\n')
    e = work.fails(BadInputsError, src, src, "'m_1'", "2 times", "fix:")
    assert [x.segment for x in e.errors] == ["m_1"]


def test_slash_ids_that_collide_after_mapping(work, tmp_path):
    src = captions(tmp_path, {"val/dia0_utt0": ["a"], "val-dia0_utt0": ["b"], "val/x_1": ["c"]})
    e = work.fails(BadInputsError, src, src, "'val/dia0_utt0'", "'val-dia0_utt0'",
                   "same key", "fix:")
    assert [x.segment for x in e.errors] == ["val-dia0_utt0"]


def test_ids_with_and_without_npz_suffix_collide(work, tmp_path):
    """``m_1.npz`` names segment ``m_1`` (as in img_fname), so both ids are one segment."""
    src = captions(tmp_path, {"m_1": ["a"], "m_1.npz": ["b"], "m_2": ["c"]})
    e = work.fails(BadInputsError, src, src, "'m_1'", "'m_1.npz'", "fix:")
    assert [x.segment for x in e.errors] == ["m_1"]


def test_npz_suffix_in_an_id_names_the_segment(tmp_path):
    src = captions(tmp_path, {"m_1.npz": ["a b"], "val/d_2.npz": ["c"]})
    create_txtdb(src, tmp_path / "txt")
    db = TextDB(tmp_path / "txt")
    assert db.ids() == ["m_1", "val-d_2"]
    assert db["m_1"]["img_fname"] == "m_1.npz" and db.txt2img["val-d_2"] == "val-d_2.npz"


# --------------------------------------------------------------------------------------------
# 5. a vocabulary folder that is not a BERT vocabulary


@pytest.fixture(scope="module")
def bert_lines():
    return (bundled_vocab_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")


def make_vocab(folder, lines=None, raw: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if raw is not None:
        (folder / "vocab.txt").write_bytes(raw)
    elif lines is not None:
        (folder / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def test_vocab_folder_without_vocab_txt(work, tmp_path):
    src = captions(tmp_path, {"m_1": ["ok"]})
    folder = make_vocab(tmp_path / "model")
    work.fails(BadInputError, src, folder, "no vocab.txt", "--vocab", vocab=folder)
    work.fails(BadInputError, src, tmp_path / "nowhere", "no vocab.txt",
               vocab=tmp_path / "nowhere")


def test_vocab_without_mask(work, tmp_path, bert_lines):
    src = captions(tmp_path, {"m_1": ["ok"]})
    folder = make_vocab(tmp_path / "v", [t for t in bert_lines if t != "[MASK]"])
    work.fails(BadInputError, src, folder / "vocab.txt", "not a BERT WordPiece vocabulary",
               "[MASK] missing", "--vocab", vocab=folder)
    words = make_vocab(tmp_path / "w", ["the", "of", "and"])  # a word list, not BERT
    work.fails(BadInputError, src, words / "vocab.txt", "[PAD]", "[UNK]", "[CLS]", "[SEP]",
               "[MASK]", vocab=words)


def test_vocab_with_duplicated_tokens(work, tmp_path, bert_lines):
    src = captions(tmp_path, {"m_1": ["ok"]})
    folder = make_vocab(tmp_path / "v", bert_lines[:-1] + ["happy", "sad", ""])
    work.fails(BadInputError, src, folder / "vocab.txt", "2 token(s) appear twice", "--vocab",
               vocab=folder)


def test_vocab_not_utf8(work, tmp_path, bert_lines):
    src = captions(tmp_path, {"m_1": ["ok"]})
    raw = "\n".join(bert_lines).encode("utf-8").replace(b"\nhappy\n", b"\nh\xe4ppy\n")
    folder = make_vocab(tmp_path / "v", raw=raw)
    work.fails(BadInputError, src, folder / "vocab.txt", "not a UTF-8 text file", "--vocab",
               vocab=folder)


def test_vocab_with_unreadable_tokenizer_config(work, tmp_path, bert_lines):
    src = captions(tmp_path, {"m_1": ["ok"]})
    folder = make_vocab(tmp_path / "v", bert_lines)
    (folder / "tokenizer_config.json").write_text("[1, 2]")
    work.fails(BadInputError, src, folder / "tokenizer_config.json", "not a JSON object",
               vocab=folder)


def test_vocab_ids_agree_with_the_tokenizer(tmp_path):
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a\u2028b", "[MASK]", "!", ".", "i", "am"]
    folder = make_vocab(tmp_path / "v", toks)
    src = captions(tmp_path, {"m_1": ["i am [MASK] ."]})
    create_txtdb(src, tmp_path / "txt", vocab=folder)
    meta = json.loads((tmp_path / "txt" / "meta.json").read_text())
    assert TextDB(tmp_path / "txt")["m_1"]["input_ids"] == [8, 9, meta["MASK"], 7]
    assert meta["MASK"] == 5 and meta["vocab_size"] == 10


def test_custom_vocab_folder_is_used(tmp_path):
    """A small, valid, cased vocabulary: its ids end up in meta.json and the values."""
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ".", "i", "am", "Happy", "happy"]
    folder = make_vocab(tmp_path / "my-bert-cased", toks)
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    src = captions(tmp_path, {"m_1": ["i am [MASK] Happy happy HAPPY ."]})
    create_txtdb(src, tmp_path / "txt", vocab=folder)
    meta = json.loads((tmp_path / "txt" / "meta.json").read_text())
    assert meta["MASK"] == 4 and meta["v_range"] == [5, 11] and meta["do_lower_case"] is False
    assert meta["tokenizer"] == "my-bert-cased"
    assert TextDB(tmp_path / "txt")["m_1"]["input_ids"] == [7, 8, 4, 9, 10, 1, 6]


# --------------------------------------------------------------------------------------------
# 6. a lexicon with malformed lines


def test_lexicon_malformed_lines_all_reported(work, tmp_path):
    src = captions(tmp_path, {"m_1": ["i am happy ."]})
    lex = tmp_path / "lex.tsv"
    lex.write_text("happy\tjoy\nno tab here\nsad\tsadness\nsad\tsadness\t2\n\tjoy\n"
                   "# comment\ntwo words\tjoy\na\tb\tc\td\n\nangry\tanger\n")
    e = work.fails(BadInputError, src, lex, "5 malformed line(s)", "line 2:", "line 4:",
                   "line 5:", "line 7:", "line 8:", "fix:", lexicon=lex)
    assert "line 1:" not in str(e) and "line 3:" not in str(e) and "line 10:" not in str(e)

    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"happy\tjoy\nf\xe2ch\xe9\tanger\n")
    work.fails(BadInputError, src, bad, "line 2", "UTF-8", lexicon=bad)

    empty = tmp_path / "empty.tsv"
    empty.write_text("# nothing\n\nzero\tjoy\t0\n")
    work.fails(BadInputError, src, empty, "no word with a category", lexicon=empty)


# --------------------------------------------------------------------------------------------
# 7. splits that cannot be made


@pytest.fixture
def caps120(tmp_path):
    ids = [f"No{m:04d}.Movie_{m}_{s}" for m in range(3) for s in range(1, 41)]
    make_captions(ids, tmp_path / "caps.json", seed=5)
    return tmp_path / "caps.json"


@pytest.mark.parametrize("splits, needles", [
    (["val=200"], ["val=200", "asks for 200", "only 120", "lower the count of val"]),
    (["val=60", "test=61"], ["test=61", "only 60"]),
    (["val=100", "trn=30@train"], ["trn=30@train", "train holds 20"]),
    (["v=110", "w=10"], ["no segment is left for train"]),
    (["train=5"], ["'train' is what is left"]),
    (["val=3", "val=4"], ["split names repeat"]),
    (["val=0"], ["at least 1"]),
    (["val"], ["'val'", "needs NAME=VALUE"]),
    (["bad name=3"], ["'bad name'"]),
], ids=["too-many", "too-many-2", "monitor-too-many", "nothing-left", "train", "repeat",
        "zero", "no-value", "name"])
def test_split_errors(work, caps120, splits, needles):
    work.fails(BadInputError, caps120, *needles, "fix:", splits=splits)


def test_split_train_with_empty_value(work, caps120):
    work.fails(BadInputError, caps120, "'train' is what is left", splits=["train="])


def test_split_id_list_errors(work, caps120, tmp_path):
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("No0000.Movie_0_1\nNo0099.Typo_1\n")
    work.fails(BadInputError, caps120, unknown, "'No0099.Typo_1'", "not in the transcripts",
               splits=[f"test={unknown}"])
    work.fails(BadInputError, caps120, tmp_path / "missing.txt", "cannot read",
               splits=[f"test={tmp_path / 'missing.txt'}"])
    both = tmp_path / "both.txt"
    both.write_text("No0000.Movie_0_1\n")
    work.fails(BadInputError, caps120, "already in another split",
               splits=[f"a={both}", f"b={both}"])
    work.fails(BadInputError, caps120, "not in train", splits=[f"a={both}", f"m={both}@train"])
    unusable = captions(tmp_path, {"m_1": ["ok"], "m_2": ["ok"], "m_3": ["  "]}, "u.json")
    only_empty = tmp_path / "only_empty.txt"
    only_empty.write_text("m_3\n")
    work.fails(BadInputError, unusable, unusable, "split test would be empty",
               splits=[f"test={only_empty}"])
    notlist = tmp_path / "notlist.json"
    notlist.write_text('[1, 2]')
    work.fails(BadInputError, caps120, notlist, "JSON list", splits=[f"a={notlist}"])


# --------------------------------------------------------------------------------------------
# 8. a killed build, run again


KILL_CODE = ("import sys; from memodb.text.txtdb import create_txtdb; "
             "create_txtdb(sys.argv[1], sys.argv[2], splits=sys.argv[3:], seed=1)")
BIG_SPLITS = ["val=12000"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """24000 captions, and their uninterrupted databases (single and split)."""
    base = tmp_path_factory.mktemp("bigtxt")
    rng = random.Random(1)
    caps = {f"No{k // 500:04d}.Movie_{k % 500}": [" ".join(rng.choice(WORDS)
                                                         for _ in range(rng.randint(3, 16)))]
            for k in range(24000)}
    write_json(base / "caps.json", caps)
    create_txtdb(base / "caps.json", base / "ref" / "txt")
    create_txtdb(base / "caps.json", base / "ref_splits", splits=BIG_SPLITS, seed=1)
    return base




def files(folder) -> dict:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def test_killed_build_reruns_identically(tmp_path, big):
    out = tmp_path / "txt"
    partial = tmp_path / ".txt.partial"
    run_and_kill(KILL_CODE, [big / "caps.json", out], lambda: (partial / "data.mdb").exists())
    assert partial.is_dir() and not out.exists()

    r = create_txtdb(big / "caps.json", out)
    assert not r.skipped and r.counts["texts"] == 24000
    assert not list(tmp_path.glob(".*")), "a .partial or lock was left behind"
    assert files(out) == files(big / "ref" / "txt")
    assert create_txtdb(big / "caps.json", out).skipped


def test_killed_split_build_reruns_identically(tmp_path, big):
    out = tmp_path / "group"
    partial = out / ".val.partial"
    run_and_kill(KILL_CODE, [big / "caps.json", out, *BIG_SPLITS], lambda: (partial / "data.mdb").exists())
    assert partial.is_dir() and (out / "train" / "manifest.json").exists()
    assert not (out / "val").exists() and not (out / "splits.json").exists()
    train = snapshot(out / "train")

    r = create_txtdb(big / "caps.json", out, splits=BIG_SPLITS, seed=1)
    assert not r.skipped
    assert not list(out.glob(".*")) and not list(tmp_path.glob(".*"))
    assert snapshot(out / "train") == train  # the finished split was kept, not rebuilt
    assert files(out) == files(big / "ref_splits")


# --------------------------------------------------------------------------------------------
# 9. OUT_DIR already holds something else


def test_non_memo_folder_at_out_dir(tmp_path, caps120):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's files")
    (out / "data.mdb").write_bytes(b"not ours")
    before = snapshot(tmp_path)
    for replace in (False, True):
        with pytest.raises(OutputExistsError) as ei:
            create_txtdb(caps120, out, replace=replace)
        assert_names(ei.value, out, "manifest.json", "choose another OUT_DIR")
        assert snapshot(tmp_path) == before

    group = tmp_path / "group"
    (group / "train").mkdir(parents=True)
    (group / "train" / "notes.txt").write_text("a folder named train")
    before = snapshot(tmp_path)
    with pytest.raises(OutputExistsError) as ei:
        create_txtdb(caps120, group, splits=["val=10"], replace=True)
    assert_names(ei.value, group / "train", "manifest.json")
    assert snapshot(tmp_path) == before


def test_out_dir_is_a_file(tmp_path, caps120):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(OutputExistsError) as ei:
        create_txtdb(caps120, out)
    assert_names(ei.value, out)
    assert out.read_text() == "a file" and not list(tmp_path.glob(".*"))


def test_out_dir_holds_another_text_database(work, caps120):
    before = snapshot(work.root)
    with pytest.raises(OutputExistsError) as ei:
        create_txtdb(caps120, work.root / "prev")
    assert_names(ei.value, work.root / "prev", "different text database", work.good)
    with pytest.raises(OutputExistsError):
        create_txtdb(caps120, work.root / "group", splits=["val=3"], seed=1)
    work.unchanged(before)


# --------------------------------------------------------------------------------------------
# 10. regression tests of bugs found while writing this suite


def test_single_line_jsonl(tmp_path):
    src = tmp_path / "one.jsonl"
    src.write_text(json.dumps({"id": "dia0/utt0", "text": "Oh my God!"}) + "\n")
    r = create_txtdb(src, tmp_path / "txt")
    assert TextDB(tmp_path / "txt").ids() == ["dia0-utt0"]
    assert r.manifests[""]["layout"] == "jsonl"


def test_duplicate_key_inside_a_record_names_the_record(tmp_path):
    src = tmp_path / "refs.json"
    src.write_text('{"u_0": {"txt": ["a"], "label": 0}, '
                   '"u_1": {"txt": ["b"], "label": 1, "label": 2}}')
    with pytest.raises(BadInputsError) as ei:
        create_txtdb(src, tmp_path / "txt")
    assert [e.segment for e in ei.value.errors] == ["u_1"]
    assert "'label'" in str(ei.value)  # the repeated field is named as a field


def test_bad_transcripts_message_reads_well(tmp_path):
    src = captions(tmp_path, {"m_1": ["ok"], "m_2": [3]})
    with pytest.raises(BadInputsError) as ei:
        create_txtdb(src, tmp_path / "txt")
    assert "no text database was not written" not in str(ei.value)
