"""Evaluation protocols: which utterances each fold trains, validates and tests on, and which
labels are kept (README "Protocols", docs/DATABASES.md "Protocols").

A protocol is named (:data:`PROTOCOLS`: ``iemocap-10fold``, ``iemocap-5fold``,
``msp-improv-12fold``, ``meld``) or a user file listing ``id fold split``. :func:`assign`
reads the utterances (one JSON-lines file of ``id, text, label`` and, where the id does not
say it, ``speaker`` / ``session``; ``split`` for MELD) and returns the :class:`Assignment`:
the label map applied (dropped labels counted), the split of every utterance in every fold,
and a hash of all that. :func:`verify` checks an assignment (no test speaker in its fold's
train or val, every utterance where the rule puts it); ``memo db build`` and ``memo db check``
both run it. Never imports torch.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from ..errors import BadInputError, BadInputsError
from ..store.ids import check_key, key_to_id, normalize_id

PROTOCOL_FILE = "protocol.json"  # in the dataset's txt/ folder: the assignment, for the check
SPLITS = ("train", "val", "test")
CODE = {"train": "t", "val": "v", "test": "e", None: "-"}  # a split per fold, one letter
SPLIT_OF = {v: k for k, v in CODE.items()}
HASH_CHARS = 12

# label maps: the corpus's own labels -> class names (class order = index); others dropped
LABEL_MAPS = {
    "iemocap-4class": {"classes": ["angry", "happy", "neutral", "sad"],
                       "map": {"ang": "angry", "hap": "happy", "exc": "happy",
                               "neu": "neutral", "sad": "sad"}},
    "iemocap-6class": {"classes": ["angry", "happy", "excited", "neutral", "sad", "frustrated"],
                       "map": {"ang": "angry", "hap": "happy", "exc": "excited",
                               "neu": "neutral", "sad": "sad", "fru": "frustrated"}},
    "msp-improv-4class": {"classes": ["angry", "happy", "neutral", "sad"],
                          "map": {"A": "angry", "H": "happy", "N": "neutral", "S": "sad"}},
    "meld-7class": {"classes": ["neutral", "joy", "surprise", "anger", "sadness", "disgust",
                                "fear"],
                    "map": {c: c for c in ("neutral", "joy", "surprise", "anger", "sadness",
                                           "disgust", "fear")}},
}


class Utterance(NamedTuple):
    id: str
    text: str
    label: str  # as the corpus writes it
    speaker: str | None
    session: int | None
    split: str | None  # MELD's official split (train / val / test)


# -- the id formats ---------------------------------------------------------------------------

_IEMOCAP = re.compile(r"^Ses(\d{2})[FM]_.+_([FM])\d{3}$")
_MSP = re.compile(r"^MSP-IMPROV-S\d{2}[A-Za-z]-([FM])(\d{2})-[A-Za-z]+-[A-Za-z]+\d+$")
_MELD = re.compile(r"^(?:(train|dev|test)[-_])?dia(\d+)_utt(\d+)$")
MELD_SPLITS = {"train": "train", "dev": "val", "val": "val", "test": "test"}


def iemocap_id(utt_id: str):
    """``Ses03F_impro02_M014`` -> ``("Ses03M", 3)``: the speaker is the letter before the final
    number, within the session; None for another format."""
    m = _IEMOCAP.match(utt_id)
    return (f"Ses{m[1]}{m[2]}", int(m[1])) if m else None


def msp_improv_id(utt_id: str):
    """``MSP-IMPROV-S01A-F01-P-FM01`` -> ``("F01", 1)``: the fourth dash field is the speaker,
    its number the session; None for another format."""
    m = _MSP.match(utt_id)
    return (f"{m[1]}{m[2]}", int(m[2])) if m else None


def meld_id(utt_id: str):
    """``dia12_utt3`` (or ``dev_dia12_utt3``) -> ``(None, None)`` (MELD's ids name no
    speaker); None for another format."""
    return (None, None) if _MELD.match(utt_id) else None


# -- the protocols ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Protocol:
    """A named protocol: its folds, its default label map, the id format its speakers come
    from and its rule."""
    name: str
    version: int
    folds: tuple
    label_map: str
    parse_id: Callable  # id -> (speaker, session), None for another format
    rule: Callable  # (utterances) -> {id: (split per fold)}
    speaker_independent: bool = True


def _two_speakers(utts, sessions: int) -> dict:
    """session -> its two speakers, sorted (IEMOCAP: F before M)."""
    by = {}
    for u in utts:
        by.setdefault(u.session, set()).add(u.speaker)
    bad = sorted((s for s in by if not isinstance(s, int) or not 1 <= s <= sessions), key=str)
    if bad:
        raise BadInputError(f"session(s) {bad} outside 1..{sessions}",
                            fix=f"give sessions numbered 1 to {sessions}")
    wrong = {s: sorted(v) for s, v in by.items() if len(v) != 2}
    if wrong:
        s = min(wrong)
        raise BadInputError(f"session {s} has {len(wrong[s])} speaker(s) {wrong[s]}; the "
                            "protocol needs two per session", fix="check the speaker fields")
    return {s: sorted(v) for s, v in by.items()}


def speaker_folds(sessions: int):
    """Fold 2s-1: test = session s's first speaker (IEMOCAP and MSP-IMPROV: the female one),
    val = its other speaker; fold 2s the reverse; train = the other sessions."""
    def rule(utts):
        pairs = _two_speakers(utts, sessions)
        out = {}
        for u in utts:
            row = []
            for fold in range(1, 2 * sessions + 1):
                s = (fold + 1) // 2
                if u.session != s:
                    row.append("train")
                    continue
                test = pairs[s][(fold + 1) % 2]  # odd fold: the first speaker
                row.append("test" if u.speaker == test else "val")
            out[u.id] = tuple(row)
        return out
    return rule


def session_folds(sessions: int):
    """Fold s: test = session s, val = session s+1 (session 1 after the last), train = the
    others: no speaker in two splits of a fold."""
    def rule(utts):
        _two_speakers(utts, sessions)
        out = {}
        for u in utts:
            out[u.id] = tuple("test" if u.session == f else
                              "val" if u.session == f % sessions + 1 else "train"
                              for f in range(1, sessions + 1))
        return out
    return rule


def official_split(utts):
    """One fold: MELD's own train / dev / test."""
    return {u.id: (u.split,) for u in utts}


PROTOCOLS = {p.name: p for p in (
    # sessions 1-5: fold 2s-1 tests session s's female speaker, validates on its male one
    Protocol("iemocap-10fold", 1, tuple(range(1, 11)), "iemocap-4class", iemocap_id,
             speaker_folds(5)),
    # fold s tests session s, validates on session s+1, trains on the other three
    Protocol("iemocap-5fold", 1, tuple(range(1, 6)), "iemocap-4class", iemocap_id,
             session_folds(5)),
    # sessions 1-6, the rule of iemocap-10fold
    Protocol("msp-improv-12fold", 1, tuple(range(1, 13)), "msp-improv-4class", msp_improv_id,
             speaker_folds(6)),
    # one fold: the official train / dev / test split; its characters speak in every split
    Protocol("meld", 1, (1,), "meld-7class", meld_id, official_split,
             speaker_independent=False),
)}


# -- reading ----------------------------------------------------------------------------------

def read_utterances(path, parse_id=None, *, need_split: bool = False) -> list[Utterance]:
    """The utterances of a JSON-lines file (``id, text, label`` + optional ``speaker``,
    ``session``, ``split``). Speaker and session come from the fields, else from the id
    (``parse_id``); an utterance with neither is an error, as is a field the id contradicts.
    Every problem of the file is reported at once."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the utterances ({exc})", file=path,
                            fix="give a UTF-8 JSON-lines file of id, text, label") from None
    errors, out, seen = [], [], set()
    allowed = {"id", "text", "label", "speaker", "session", "split"}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(BadInputError(f"line {n}: not valid JSON ({exc.msg})", file=path,
                                        fix="repair that line"))
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not rec["id"]:
            errors.append(BadInputError(f"line {n}: expected an object with a string 'id'",
                                        file=path, fix="repair that line"))
            continue
        raw = rec["id"]
        uid = key_to_id(normalize_id(raw)) if "/" in raw or raw.endswith(".npz") else raw
        try:
            check_key(uid, file=path)
        except BadInputError as exc:
            errors.append(exc)
            continue

        def bad(problem, fix):
            errors.append(BadInputError(f"line {n}: {problem}", file=path, segment=uid,
                                        fix=fix))

        extra = sorted(set(rec) - allowed)
        if extra:
            bad(f"unknown field(s) {extra}", f"use only {sorted(allowed)}")
            continue
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str):
            bad("'text' must be a string", "give the utterance's transcript")
            continue
        if not isinstance(label, str) or not label:
            bad(f"'label' must be the corpus's label string (got {label!r})",
                "write labels as the corpus does (e.g. neu, exc)")
            continue
        if uid in seen:
            bad("the id appears more than once", "keep one line per utterance"
                + ("; MELD numbers its dialogues again in each split: put the split before "
                   "the id (dev_dia0_utt0)" if need_split else ""))
            continue
        seen.add(uid)
        speaker, session, split = rec.get("speaker"), rec.get("session"), rec.get("split")
        parsed = parse_id(uid) if parse_id else None
        if parsed is not None:
            for name, given, said in (("speaker", speaker, parsed[0]),
                                      ("session", session, parsed[1])):
                if given is not None and said is not None and given != said:
                    bad(f"the {name} field says {given!r} but the id says {said!r}",
                        f"correct the {name} field or drop it")
            speaker = speaker if speaker is not None else parsed[0]
            session = session if session is not None else parsed[1]
        elif parse_id is not None and speaker is None:
            bad(f"the id {uid!r} is not in the {_FORMATS.get(parse_id, 'IEMOCAP or MSP-IMPROV')}"
                " format and the line has no speaker field",
                "give the corpus's standard ids, or speaker and session fields")
            continue
        if speaker is not None and not isinstance(speaker, str):
            bad(f"'speaker' must be a string (got {speaker!r})", "name the speaker")
            continue
        if session is not None and (isinstance(session, bool) or not isinstance(session, int)):
            bad(f"'session' must be an integer (got {session!r})", "number the sessions 1, 2, ..")
            continue
        if need_split or split is not None:
            m = _MELD.match(uid)
            said = MELD_SPLITS.get(m[1]) if m and m[1] else None
            if split is None:
                split = m[1] if said else None
            if split not in MELD_SPLITS:
                bad(f"'split' must be train, dev or test (got {split!r})",
                    "give every utterance its official split")
                continue
            if said is not None and MELD_SPLITS[split] != said:
                bad(f"the split field says {split!r} but the id says {m[1]!r}",
                    "correct the split field")
                continue
            split = MELD_SPLITS[split]
        out.append(Utterance(uid, text, label, speaker, session, split))
    if errors:
        raise BadInputsError(errors, "the protocol's text databases")
    if not out:
        raise BadInputError("no utterance in the file", file=path,
                            fix="give one JSON object per line: id, text, label")
    return out


_FORMATS = {iemocap_id: "IEMOCAP (Ses03F_impro02_M014)",
            msp_improv_id: "MSP-IMPROV (MSP-IMPROV-S01A-F01-P-FM01)",
            meld_id: "MELD (dia12_utt3)"}


def read_protocol_file(path) -> tuple[tuple, dict]:
    """A user protocol: lines ``id fold split`` (tab or spaces; ``#`` comments; split train,
    val or test) -> (folds in order of appearance, {id: {fold: split}})."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the protocol file ({exc})", file=path,
                            fix="give a UTF-8 file of lines: id fold split") from None
    folds, table, errors = {}, {}, []
    for n, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in SPLITS:
            errors.append(BadInputError(f"line {n}: expected 'id fold split' with split "
                                        f"train, val or test (got {line.strip()!r})",
                                        file=path, fix="repair that line"))
            continue
        uid, fold, split = parts
        uid = key_to_id(normalize_id(uid)) if "/" in uid or uid.endswith(".npz") else uid
        fold = int(fold) if fold.isdigit() else fold
        if not re.match(r"^[A-Za-z0-9_.-]+$", str(fold)):
            errors.append(BadInputError(f"line {n}: fold {fold!r} must be letters, digits, "
                                        "'_', '.' or '-'", file=path, fix="rename the fold"))
            continue
        folds.setdefault(fold, None)
        if table.setdefault(uid, {}).setdefault(fold, split) != split:
            errors.append(BadInputError(f"line {n}: fold {fold} lists the id twice, in "
                                        f"{table[uid][fold]} and {split}", file=path,
                                        segment=uid, fix="keep one split per id and fold"))
    if errors:
        raise BadInputsError(errors, "the protocol's text databases")
    if not table:
        raise BadInputError("the protocol file lists no id", file=path,
                            fix="give lines: id fold split")
    return tuple(folds), table


# -- the assignment ---------------------------------------------------------------------------

@dataclass
class Assignment:
    """What a protocol makes of a corpus: per utterance its class and its split in each fold
    (None: not in that fold), the utterances dropped by the label map, and the hash."""
    name: str
    version: int | None
    folds: tuple
    label_map: str | dict
    classes: list
    utterances: list  # Utterance, kept ones only, in file order
    labels: dict  # id -> class index
    splits: dict  # id -> tuple of split per fold
    dropped: dict = field(default_factory=dict)  # corpus label -> count (not in the map)
    speaker_independent: bool = True
    hash: str = ""

    def fold_ids(self, fold) -> dict:
        """{split: ids in file order} of one fold."""
        i = self.folds.index(fold)
        out = {s: [] for s in SPLITS}
        for u in self.utterances:
            split = self.splits[u.id][i]
            if split is not None:
                out[split].append(u.id)
        return out

    def record(self) -> dict:
        """The short record kept in ``dataset.json``, ``splits.json`` and every result."""
        return {"name": self.name, "version": self.version, "hash": self.hash,
                "label_map": self.label_map if isinstance(self.label_map, str) else "custom",
                "classes": self.classes, "folds": list(self.folds)}

    def to_json(self) -> dict:
        """``txt/protocol.json``: the record, the dropped counts and every utterance's
        corpus label, speaker, session, official split and splits (one letter per fold)."""
        return {"kind": "protocol", **self.record(), "label_map": self.label_map,
                "speaker_independent": self.speaker_independent, "dropped": self.dropped,
                "utterances": [[u.id, u.label, u.speaker, u.session, u.split,
                                "".join(CODE[s] for s in self.splits[u.id])]
                               for u in self.utterances]}


def assignment_hash(name, version, classes, folds, labels: dict, splits: dict) -> str:
    """The first 12 hex digits of a SHA-256 over the protocol's name, version, classes, folds
    and, id by id (sorted), the class and the split in each fold."""
    h = hashlib.sha256(json.dumps([name, version, list(classes), [str(f) for f in folds]])
                       .encode())
    for uid in sorted(splits):
        h.update(f"\n{uid}\t{labels[uid]}\t{''.join(CODE[s] for s in splits[uid])}".encode())
    return h.hexdigest()[:HASH_CHARS]


def label_map(spec, default: str | None):
    """(name or dict, class names, corpus label -> class index) of a named map or a
    ``{corpus label: class}`` object (classes in order of first appearance)."""
    spec = spec if spec is not None else default
    if spec is None:
        raise BadInputError("a user protocol needs a label map", options=("label_map",),
                            fix=f"set {{label_map}} to one of {sorted(LABEL_MAPS)} or an "
                                "object {corpus label: class}")
    if isinstance(spec, str):
        if spec not in LABEL_MAPS:
            raise BadInputError(f"unknown label map {spec!r} ({{label_map}})",
                                options=("label_map",),
                                fix=f"use one of {sorted(LABEL_MAPS)} or an object "
                                    "{corpus label: class}")
        m = LABEL_MAPS[spec]
        classes, mapping = m["classes"], m["map"]
    else:
        mapping = dict(spec)
        if not mapping or not all(isinstance(v, str) and v for v in mapping.values()):
            raise BadInputError("the label map ({label_map}) must map corpus labels to class "
                                "names",
                                options=("label_map",), fix="give {label_map} as "
                                                            "{\"exc\": \"happy\", ...}")
        classes = list(dict.fromkeys(mapping.values()))
    index = {c: i for i, c in enumerate(classes)}
    return spec, list(classes), {k: index[v] for k, v in mapping.items()}


def assign(protocol: str, source, *, label_map_spec=None, base_dir=".") -> Assignment:
    """Apply a protocol (a name of :data:`PROTOCOLS` or a user protocol file, relative to
    ``base_dir``) to the utterances of ``source``. The label map is the protocol's own unless
    ``label_map_spec`` names another or gives one. Raises BadInputError on an utterance
    without a speaker or a session, an utterance a user file leaves out, and any
    :func:`verify` problem."""
    named = PROTOCOLS.get(protocol)
    if named is not None:
        utts = read_utterances(source, named.parse_id, need_split=named.name == "meld")
        name, version, folds = named.name, named.version, named.folds
        spec, classes, index = label_map(label_map_spec, named.label_map)
    else:
        pfile = Path(base_dir) / protocol
        if not pfile.is_file():
            raise BadInputError(f"protocol {protocol!r} ({{protocol}}) is neither a named "
                                "protocol nor a file", options=("protocol",),
                                fix=f"set {{protocol}} to one of {sorted(PROTOCOLS)} or a file "
                                    "of lines: id fold split")
        folds, table = read_protocol_file(pfile)
        utts = read_utterances(source, _guess_format)
        name, version = f"file:{pfile.name}", None
        spec, classes, index = label_map(label_map_spec, None)
    kept = [u for u in utts if u.label in index]
    dropped: dict = {}
    for u in utts:
        if u.label not in index:
            dropped[u.label] = dropped.get(u.label, 0) + 1
    if not kept:
        raise BadInputError(f"no utterance has a label of the map ({', '.join(sorted(index))}); "
                            f"the file has {', '.join(sorted(dropped))}", file=source,
                            options=("label_map",), fix="choose the {label_map} of this corpus")
    labels = {u.id: index[u.label] for u in kept}
    if named is not None:
        try:
            splits = named.rule(kept)
        except BadInputError as exc:
            raise BadInputError(f"protocol {name}: {exc.problem}", file=source,
                                fix=exc.fix) from None
    else:
        missing = [u.id for u in kept if u.id not in table]
        if missing:
            raise BadInputError(f"{len(missing)} utterance(s) are not in the protocol file "
                                f"{pfile} (e.g. {missing[0]!r})", file=source,
                                fix="list every utterance of the corpus, or remove it "
                                    "from the source")
        known = {u.id for u in utts}
        stray = sorted(set(table) - known)
        if stray:
            raise BadInputError(f"{len(stray)} id(s) of the protocol file are not in the "
                                f"utterances (e.g. {stray[0]!r})", file=pfile,
                                fix="check that the file belongs to this corpus")
        splits = {u.id: tuple(table[u.id].get(f) for f in folds) for u in kept}
    a = Assignment(name, version, tuple(folds), spec, classes, kept, labels, splits, dropped,
                   named.speaker_independent if named else True)
    a.hash = assignment_hash(name, version, classes, a.folds, labels, splits)
    problems = verify(a)
    if problems:
        code, message, uid = problems[0]
        more = f" ({len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise BadInputError(f"protocol {name}: {message}{more}", file=source, segment=uid,
                            fix="check the speaker and session fields"
                                + (" and the protocol file" if named is None else ""))
    for fold in a.folds:
        for split, ids in a.fold_ids(fold).items():
            if not ids:
                raise BadInputError(f"protocol {name}: fold {fold} has no {split} utterance",
                                    file=source, fix="check the protocol file and the labels")
    return a


def _guess_format(uid: str):
    """Speaker and session of a user protocol's utterance: from any known id format."""
    for parse in (iemocap_id, msp_improv_id):
        got = parse(uid)
        if got is not None:
            return got
    return None


def verify(a: Assignment) -> list[tuple]:
    """Problems of an assignment, as ``(code, message, id)``: a fold whose test speaker is in
    its train or val split (``protocol_speaker_leak``), and, for a named protocol, an utterance
    whose split differs from the rule's (``protocol_misplaced``)."""
    problems = []
    named = PROTOCOLS.get(a.name)
    if named is not None:
        try:
            want = named.rule(a.utterances)
        except BadInputError as exc:
            return [("protocol_misplaced", exc.problem, None)]
        for u in a.utterances:
            if want[u.id] != a.splits[u.id]:
                got = "".join(CODE[s] for s in a.splits[u.id])
                problems.append(("protocol_misplaced", f"splits {got} per fold, but the rule "
                                 f"of {a.name} gives {''.join(CODE[s] for s in want[u.id])}",
                                 u.id))
    if a.speaker_independent:
        by_id = {u.id: u for u in a.utterances}
        for i, fold in enumerate(a.folds):
            test, rest = {}, {}
            for uid, row in a.splits.items():
                spk = by_id[uid].speaker
                if row[i] == "test":
                    test.setdefault(spk, uid)
                elif row[i] is not None:
                    rest.setdefault(spk, (uid, row[i]))
            for spk in sorted(set(test) & set(rest), key=str):
                uid, split = rest[spk]
                problems.append(("protocol_speaker_leak", f"fold {fold}: speaker {spk!r} is "
                                 f"in test and in {split}", uid))
    return problems


def from_json(body: dict) -> Assignment:
    """The :class:`Assignment` of a ``protocol.json`` (for the check)."""
    utts, labels, splits = [], {}, {}
    _, classes, index = label_map(body["label_map"], None)
    for uid, label, speaker, session, split, row in body["utterances"]:
        utts.append(Utterance(uid, "", label, speaker, session, split))
        labels[uid] = index[label]
        splits[uid] = tuple(SPLIT_OF[c] for c in row)
    return Assignment(body["name"], body["version"], tuple(body["folds"]), body["label_map"],
                      classes, utts, labels, splits, body.get("dropped", {}),
                      body.get("speaker_independent", True), body["hash"])


def protocol_of(db_path) -> dict | None:
    """The protocol record (name, version, hash, fold, ...) of a text database built by a
    protocol: from its group's ``splits.json``; None otherwise."""
    try:
        body = json.loads((Path(db_path).parent / "splits.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rec = body.get("protocol") if isinstance(body, dict) else None
    return rec if isinstance(rec, dict) else None
