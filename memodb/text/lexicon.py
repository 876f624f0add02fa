"""Emotion lexicons: word -> categories, for the emotion-word masking task (melm).

Two line formats, one per file or mixed (blank lines and ``#`` comments are skipped):

- ``word<TAB>category`` (a plain TSV; a word may appear on several lines);
- ``word<TAB>emotion<TAB>0|1``, the NRC word-level format: only rows marked 1 count.

A word's categories keep the order of the file. Words are normalised the way the tokenizer
normalises text (lower case, no accents) so ``Happy`` in the lexicon matches ``happy``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError

MAX_REPORTED = 20


@dataclass(frozen=True)
class Lexicon:
    path: Path
    sha256: str
    categories: tuple  # sorted; emo_type_ids are 1 + index here (0: not an emotion word)
    words: dict  # normalised word -> tuple of categories (file order)

    def type_id(self, cats: tuple) -> int:
        """The single category id stored per piece: the word's first category."""
        return 1 + self.categories.index(cats[0]) if cats else 0

    def summary(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "words": len(self.words),
                "categories": list(self.categories)}


def read_lexicon(path, normalize=str.lower) -> Lexicon:
    """Parse a lexicon file; every malformed line is reported at once (line number, text)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read the lexicon ({exc.strerror})", file=path,
                            options=("lexicon",), fix="check the {lexicon} path") from None
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BadInputError(f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x})", file=path,
                            fix="re-encode the lexicon as UTF-8") from None
    words: dict[str, list] = {}
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        problem = None
        if len(fields) == 2:
            word, cat = fields
        elif len(fields) == 3:
            word, cat, flag = fields
            if flag not in ("0", "1"):
                problem = f"third field {flag!r} is not 0 or 1 (NRC format)"
            elif flag == "0":
                continue
        else:
            problem = f"{len(fields)} tab-separated fields; expected word<TAB>category or " \
                      "word<TAB>emotion<TAB>0|1"
        if problem is None and (not word or not cat):
            problem = "empty word or category"
        if problem is None and len(word.split()) != 1:
            problem = f"{word!r} is not a single word"
        if problem:
            bad.append(f"line {n}: {problem}: {line[:60]!r}")
            continue
        cats = words.setdefault(normalize(word), [])
        if cat not in cats:
            cats.append(cat)
    if bad:
        more = f"; ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        raise BadInputError(f"{len(bad)} malformed line(s): " + "; ".join(bad[:MAX_REPORTED])
                            + more, file=path, fix="fix or delete those lines")
    if not words:
        raise BadInputError("the lexicon holds no word with a category", file=path,
                            fix="check the file format (word<TAB>category)")
    categories = tuple(sorted({c for cats in words.values() for c in cats}))
    return Lexicon(path=path.resolve(), sha256=hashlib.sha256(data).hexdigest(),
                   categories=categories, words={w: tuple(c) for w, c in words.items()})
