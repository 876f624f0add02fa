"""Text-database values: ``lz4.frame.compress(msgpack.packb(example, use_bin_type=True))``.

:func:`encode_example` is the reference encoder. :class:`FastEncoder` produces the very same
bytes (a test holds it to that) without building Python lists per text: a msgpack array is a
header followed by its elements' encodings, so each word's pieces, ids, word index and emotion
fields are packed once per distinct word and a text's value is a concatenation of those
fragments. That is what makes building 200k texts fast.

The whole-word layout (``wwm``, the original whole-word-masking builder's) nests
``input_ids`` and ``toked_caption`` per word and stores no ``word_ids``;
:func:`flat_input_ids` gives any stored ``input_ids`` as pieces plus word indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import lz4.frame
import msgpack

from ..errors import DatabaseError
from .ids import id_to_key

FIELDS = ("id", "dataset", "file_path", "img_fname", "toked_caption", "input_ids", "word_ids")
LAYOUTS = ("flat", "wwm")  # input_ids as one list of pieces (+ word_ids), or nested per word
EMO_FIELDS = ("emo_input_ids", "emo_labels", "emo_type_ids")


@dataclass
class Encoded:
    """One tokenised text: pieces, their ids, the index of the (whitespace) word each piece
    came from, and per piece the emotion categories of its word (empty tuple: none)."""

    ids: list
    pieces: list
    word_ids: list
    emotions: list | None = None

    def __len__(self):
        return len(self.ids)

    def truncate(self, n: int) -> None:
        del self.ids[n:], self.pieces[n:], self.word_ids[n:]
        if self.emotions is not None:
            del self.emotions[n:]


def assemble(words, cache: dict, emotions: bool) -> Encoded:
    """One text's encoding from the word cache (every word already learnt)."""
    ents = [e for e in map(cache.__getitem__, words) if e[0]]
    return Encoded([i for e in ents for i in e[0]], [p for e in ents for p in e[1]],
                   [k for k, e in enumerate(ents) for _ in e[0]],
                   [c for e in ents for c in e[2]] if emotions else None)


def _per_word(values, word_ids) -> list:
    out: list = []
    last = None
    for v, w in zip(values, word_ids):
        if w != last:
            out.append([])
            last = w
        out[-1].append(v)
    return out


def encode_example(text_id: str, label, enc, lex, dataset: str, layout: str = "flat") -> bytes:
    """The compatible LMDB value of one text (``enc``: an :class:`Encoded`); ``layout``
    ``wwm`` nests pieces and ids per word (no ``word_ids``)."""
    img_fname = id_to_key(text_id)
    ex = {"id": text_id, "dataset": dataset, "file_path": img_fname, "img_fname": img_fname}
    if layout == "wwm":
        ex.update(toked_caption=_per_word(enc.pieces, enc.word_ids),
                  input_ids=_per_word(enc.ids, enc.word_ids))
    else:
        ex.update(toked_caption=enc.pieces, input_ids=enc.ids, word_ids=enc.word_ids)
    if label is not None:
        ex["target"] = label
    if lex is not None:
        emo = [(i, cats) for i, cats in zip(enc.ids, enc.emotions) if cats]
        ex["emo_input_ids"] = [i for i, _ in emo]
        ex["emo_labels"] = [list(c) for _, c in emo]
        ex["emo_type_ids"] = [lex.type_id(c) for c in enc.emotions]
    return lz4.frame.compress(msgpack.packb(ex, use_bin_type=True))


def decode_example(buf) -> dict:
    try:
        return msgpack.unpackb(lz4.frame.decompress(buf), raw=False)
    except Exception as exc:  # lz4 and msgpack raise several types on damaged bytes
        raise DatabaseError(f"not an lz4-compressed msgpack text example ({exc})") from None


def flat_input_ids(input_ids) -> tuple[list, list | None]:
    """Stored ``input_ids`` -> (piece ids, the word index of each piece or None). A flat list
    is returned as it is (word indices: None, see ``word_ids``); a list of per-word lists (the
    whole-word layout) is flattened and gives the word indices. Raises :class:`DatabaseError`
    naming the first malformed word (not a non-empty list of integers)."""
    if type(input_ids) is not list or not input_ids or type(input_ids[0]) is not list:
        return input_ids, None
    ids, words = [], []
    for k, word in enumerate(input_ids):
        if type(word) is not list or not word or not all(type(i) is int for i in word):
            raise DatabaseError(f"'input_ids' is nested per word (whole-word layout) but word "
                                f"{k} is {word!r}, not a non-empty list of integers")
        ids += word
        words += [k] * len(word)
    return ids, words


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


_KEYS = {k: msgpack.packb(k) for k in (*FIELDS, "target", *EMO_FIELDS)}


class FastEncoder:
    """Encode texts given as whitespace words, byte-identical to :func:`encode_example`.

    ``cache`` is the tokenizer's word cache (:meth:`WordPieceTokenizer.learn`), ``lex`` the
    lexicon or None. Texts longer than ``max_len`` pieces (truncated) and the ``wwm`` layout
    take the reference path.
    """

    def __init__(self, cache: dict, lex, dataset: str, max_len: int, layout: str = "flat"):
        self.cache, self.lex, self.max_len, self.layout = cache, lex, max_len, layout
        self.dataset = msgpack.packb(dataset)
        self._frags: dict = {}
        self._ints: dict = {}
        self._word_index: list = []

    def _int(self, i: int) -> bytes:
        b = self._ints.get(i)
        if b is None:
            b = self._ints[i] = msgpack.packb(i)
        return b

    def _frag(self, word: str):
        """(pieces, packed pieces, packed ids, emotion pieces, packed emotion ids / labels /
        type ids) of one word."""
        ids, pieces, emo = self.cache[word]
        packed = (len(ids), b"".join(msgpack.packb(p) for p in pieces),
                  b"".join(self._int(i) for i in ids))
        if self.lex is not None:
            marked = [(i, c) for i, c in zip(ids, emo) if c]
            packed += (len(marked), b"".join(self._int(i) for i, _ in marked),
                       b"".join(msgpack.packb(list(c)) for _, c in marked),
                       b"".join(self._int(self.lex.type_id(c)) for c in emo))
        self._frags[word] = packed
        return packed

    def prepare(self) -> None:
        """Pack every word of the cache now (before forking workers, which then share them)."""
        for word in self.cache:
            if word not in self._frags:
                self._frag(word)

    def encode(self, text_id: str, label, words) -> bytes:
        frags = self._frags
        try:
            fs = [f for f in map(frags.__getitem__, words) if f[0]]
        except KeyError:  # not prepared
            fs = [f for f in (frags.get(w) or self._frag(w) for w in words) if f[0]]
        n = sum([f[0] for f in fs])
        if n > self.max_len or self.layout != "flat":
            enc = assemble(words, self.cache, self.lex is not None)
            enc.truncate(self.max_len)
            return encode_example(text_id, label, enc, self.lex, msgpack.unpackb(self.dataset),
                                  self.layout)
        while len(self._word_index) < len(fs):
            self._word_index.append(self._int(len(self._word_index)))
        head = _array_header(n)
        img = msgpack.packb(id_to_key(text_id))
        n_keys = len(FIELDS) + (label is not None) + 3 * (self.lex is not None)
        parts = [bytes((0x80 | n_keys,)), _KEYS["id"], msgpack.packb(text_id),
                 _KEYS["dataset"], self.dataset, _KEYS["file_path"], img, _KEYS["img_fname"], img,
                 _KEYS["toked_caption"], head, *[f[1] for f in fs],
                 _KEYS["input_ids"], head, *[f[2] for f in fs],
                 _KEYS["word_ids"], head,
                 *[w * f[0] for w, f in zip(self._word_index, fs)]]
        if label is not None:
            parts += [_KEYS["target"], msgpack.packb(label)]
        if self.lex is not None:
            m = _array_header(sum(f[3] for f in fs))
            parts += [_KEYS["emo_input_ids"], m, *[f[4] for f in fs],
                      _KEYS["emo_labels"], m, *[f[5] for f in fs],
                      _KEYS["emo_type_ids"], head, *[f[6] for f in fs]]
        return lz4.frame.compress(b"".join(parts))
