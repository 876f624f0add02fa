"""A small synthetic corpus in the upstream formats (docs/DATABASES.md, "Inputs"),
generated in code with a fixed seed, for ``memo quickstart``, the tests and the benchmarks:
Denseface h5 movies with ``has_active_spk.txt`` lists, captions, a lexicon, OpenFace crops and
a labelled emotion corpus with folds whose labels the faces and the text give away."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .feature.sources import MOVIE_H5

WORDS = ("i never thought we would see the sea again . you are late , and i am so angry "
         "with you . what a wonderful day ! please do not leave me here alone . "
         "she laughed and cried at the same time").split()


def segment_arrays(rng: np.random.Generator, n: int, dim: int = 342) -> dict:
    """Denseface-like datasets for one segment of ``n`` frames (h5 names)."""
    logits = rng.normal(size=(n, 8)).astype(np.float32)
    pred = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {
        "feat": rng.normal(size=(n, dim)).astype(np.float32),
        "trans1": rng.normal(size=(n, 216)).astype(np.float32),
        "trans2": rng.normal(size=(n, 300)).astype(np.float32),
        "pred": pred.astype(np.float32),
        "confidence": rng.uniform(0.2, 1.0, size=n).astype(np.float32),
        "frame_idx": np.sort(rng.choice(np.arange(5000), size=n, replace=False)).astype(np.int64),
    }


def _write_meta(meta_dir, movie: str, segments: int) -> None:
    """``<meta_dir>/<movie>/has_active_spk.txt`` listing segments 1..``segments``."""
    (Path(meta_dir) / movie).mkdir(parents=True, exist_ok=True)
    (Path(meta_dir) / movie / "has_active_spk.txt").write_text(
        "".join(f"{movie}/{s}\n" for s in range(1, segments + 1)))


def make_h5_corpus(root, movies: int = 3, segments: int = 20, faces: int = 30, seed: int = 0,
                   meta_dir=None, with_trans: bool = True) -> list[str]:
    """Write ``root/<movie>/has_active_spk_denseface_with_trans.h5``; return the segment ids.

    Face counts vary around ``faces`` (some segments have none). With ``meta_dir``, also write
    ``<meta_dir>/<movie>/has_active_spk.txt``.
    """
    import h5py

    rng = np.random.default_rng(seed)
    ids = []
    for m in range(movies):
        movie = f"No{m:04d}.Movie_{m}"
        (Path(root) / movie).mkdir(parents=True, exist_ok=True)
        with h5py.File(Path(root) / movie / MOVIE_H5, "w") as f:
            g = f.create_group(movie)
            for s in range(1, segments + 1):
                n = 0 if s % 9 == 0 else int(rng.integers(max(1, faces // 3), faces * 2))
                seg = g.create_group(str(s))
                for k, v in segment_arrays(rng, n).items():
                    if with_trans or not k.startswith("trans"):
                        seg.create_dataset(k, data=v)
                ids.append(f"{movie}_{s}")
        if meta_dir is not None:
            _write_meta(meta_dir, movie, segments)
    return ids


def make_captions(ids, path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    caps = {i: [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 15))))] for i in ids}
    Path(path).write_text(json.dumps(caps, indent=1))
    return caps


LEXICON = {"angry": "anger", "wonderful": "joy", "laughed": "joy", "cried": "sadness",
           "alone": "sadness", "late": "anger"}


def make_lexicon(path, lexicon: dict | None = None) -> dict:
    """An emotion lexicon file (word<TAB>category): ``lexicon`` or the tiny one over
    :data:`WORDS`."""
    lexicon = LEXICON if lexicon is None else lexicon
    Path(path).write_text("".join(f"{w}\t{c}\n" for w, c in lexicon.items()))
    return lexicon


def make_openface(root, clips: int = 4, frames: int = 12, size: int = 112, seed: int = 0) -> list:
    """OpenFace-style output (docs/DATABASES.md, "Inputs"): ``<clip>.csv`` and
    ``<clip>_aligned/*.bmp``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for c in range(clips):
        clip = f"No0000.Movie_0_{c + 1}"
        aligned = root / f"{clip}_aligned"
        aligned.mkdir(exist_ok=True)
        rows = ["frame, face_id, timestamp, confidence, success"]
        for fr in range(1, frames + 1):
            conf = float(rng.uniform(0.3, 1.0))
            rows.append(f"{fr}, 0, {fr / 10:.1f}, {conf:.3f}, 1")
            img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(aligned / f"frame_det_00_{fr:06d}.bmp")
        (root / f"{clip}.csv").write_text("\n".join(rows) + "\n")
        names.append(clip)
    return names


EMOTIONS = ("anger", "happy", "neutral", "sad")
# words that give a class away in the text of the emotion corpus (one list per class)
EMOTION_WORDS = (("angry", "furious", "mad"), ("happy", "glad", "wonderful"),
                 ("fine", "okay", "normal"), ("sad", "cried", "alone"))
FILLER = ("we", "the", "sea", "day", "at", "see", "you", "again", "time", "here", "what", "so")


def make_emotion_corpus(root, *, folds: int = 2, per_fold: int = 40, faces: int = 8,
                        signal: float = 1.5, text_signal: float = 0.8, seed: int = 0) -> dict:
    """A labelled IEMOCAP-style corpus in 4 classes (:data:`EMOTIONS`) with planted signals.

    One "session" (an h5 movie ``Ses0<f>``) per fold, ``per_fold`` segments each, labels
    balanced. Faces: Denseface-like features whose mean is shifted by ``signal`` on a block of
    dimensions owned by the class. Text: filler words plus, with probability ``text_signal``, a
    word of the class (:data:`EMOTION_WORDS`). Leave-one-session-out folds: fold ``f`` tests on
    session ``f``, validates on a fifth of the other sessions and trains on the rest.

    Writes ``root/h5/<session>/...h5`` and ``root/refs/<f>/{trn,val,tst}.json`` (downstream refs
    ``{id: {"txt": [text], "label": k}}``); returns ``{"h5": path, "refs": "root/refs/{fold}/",
    "folds": [1..folds], "labels": [...]}``.
    """
    import h5py

    rng = np.random.default_rng(seed)
    root = Path(root)
    sessions: list[list[tuple[str, int, str]]] = []
    for f in range(1, folds + 1):
        movie = f"Ses{f:02d}"
        (root / "h5" / movie).mkdir(parents=True, exist_ok=True)
        rows = []
        with h5py.File(root / "h5" / movie / MOVIE_H5, "w") as h5:
            g = h5.create_group(movie)
            for s in range(1, per_fold + 1):
                label = (s - 1) % len(EMOTIONS)
                n = int(rng.integers(max(1, faces // 2), faces * 2))
                arrays = segment_arrays(rng, n)
                arrays["confidence"][:] = np.maximum(arrays["confidence"], 0.6)
                block = 342 // len(EMOTIONS)
                arrays["feat"][:, label * block:(label + 1) * block] += signal
                seg = g.create_group(str(s))
                for k, v in arrays.items():
                    seg.create_dataset(k, data=v)
                words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
                if rng.random() < text_signal:
                    words.insert(int(rng.integers(0, len(words) + 1)),
                                 str(rng.choice(EMOTION_WORDS[label])))
                rows.append((f"{movie}_{s}", label, " ".join(words)))
        sessions.append(rows)
    for f in range(1, folds + 1):
        test = sessions[f - 1]
        rest = [r for k, rows in enumerate(sessions) if k != f - 1 for r in rows]
        val = rest[2::5]  # every class (5 and the 4 labels are coprime)
        train = [r for i, r in enumerate(rest) if i % 5 != 2]
        out = root / "refs" / str(f)
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in (("trn", train), ("val", val), ("tst", test)):
            refs = {i: {"txt": [text], "label": label} for i, label, text in rows}
            (out / f"{name}.json").write_text(json.dumps(refs, indent=1))
    return {"h5": str(root / "h5"), "refs": str(root / "refs" / "{fold}"),
            "folds": list(range(1, folds + 1)), "labels": list(EMOTIONS)}


CORPUS_LABELS = {"iemocap": ("ang", "hap", "exc", "neu", "sad", "fru", "sur", "xxx"),
                 "msp-improv": ("A", "H", "N", "S", "O", "X"),
                 "meld": ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")}


def make_utterances(corpus: str, path, *, per_speaker: int = 6, seed: int = 0) -> list[dict]:
    """A JSON-lines file of ``id, text, label`` in a corpus's own id format and labels
    (``iemocap``: ``Ses03F_impro02_M014``, 5 sessions; ``msp-improv``:
    ``MSP-IMPROV-S01A-F01-P-FM01``, 6 sessions; ``meld``: ``dia<D>_utt<U>`` with a ``split``
    field), ``per_speaker`` utterances per speaker (per split for MELD), labels drawn in turn.
    Returns the records."""
    rng = np.random.default_rng(seed)
    labels = CORPUS_LABELS[corpus]
    recs = []

    def text():
        return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))

    if corpus == "meld":
        for d, split in enumerate(("train", "dev", "test")):
            for u in range(per_speaker):
                recs.append({"id": f"dia{d * 10 + u // 3}_utt{u % 3}", "text": text(),
                             "label": labels[len(recs) % len(labels)], "split": split})
    else:
        for session in range(1, (5 if corpus == "iemocap" else 6) + 1):
            for gender in "FM":
                for u in range(per_speaker):
                    if corpus == "iemocap":
                        uid = f"Ses{session:02d}{'FM'[u % 2]}_impro{u // 2 + 1:02d}_" \
                              f"{gender}{u:03d}"
                    else:
                        uid = f"MSP-IMPROV-S{u + 1:02d}A-{gender}{session:02d}-" \
                              f"{'PRST'[u % 4]}-{'FM' if u % 2 else 'MF'}{u + 1:02d}"
                    recs.append({"id": uid, "text": text(),
                                 "label": labels[len(recs) % len(labels)]})
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return recs


# -- a corpus with something to learn ---------------------------------------------------------
#
# Every segment has a hidden emotion state (one of :data:`EMOTIONS`) that shapes both of its
# modalities. Faces: a smooth trajectory (AR(1) noise, low-pass) around the state's prototype
# (scaled by a per-segment intensity), plus the speaker's offset and white noise; the soft
# labels (``pred``, 8 expression classes) follow the state. Text: words drawn among neutral
# fillers, each an emotion word of the state (:data:`STATE_WORDS`, listed in
# :data:`STATE_LEXICON`) with a probability. The prototypes and the speakers' offsets come from
# one fixed "world" seed, so the unlabelled movies (:func:`make_state_corpus`) and the labelled
# corpus (:func:`make_state_emotion_corpus`) share them: what pre-training learns transfers.

STATE_WORDS = {"anger": ("angry", "furious", "mad", "hate", "shouted"),
               "happy": ("happy", "glad", "wonderful", "laughed", "love"),
               "neutral": ("fine", "okay", "normal", "usual", "calm"),
               "sad": ("sad", "cried", "alone", "lost", "sorry")}
# the lexicon category of each state's words (memo db build marks them for MELM)
STATE_LEXICON = {w: {"anger": "anger", "happy": "joy", "neutral": "neutral",
                     "sad": "sadness"}[s] for s, ws in STATE_WORDS.items() for w in ws}
NEUTRAL_WORDS = ("we", "the", "sea", "day", "at", "see", "you", "again", "time", "here", "what",
                 "so", "i", "it", "was", "to", "go", "home", "now", "there", "they", "this",
                 "that", "will", "come", "back", "and", "but", "not", "a")
PRED_CLASS = {"anger": 4, "happy": 1, "neutral": 0, "sad": 3}  # FER order: neu hap sur sad ang
WORLD_SEED = 20260  # the prototypes and speaker offsets every state corpus shares
FACE_DIM = 342


def _world(speakers: int, dim: int = FACE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(prototypes [4, dim], speaker offsets [speakers, dim]) of the fixed world."""
    rng = np.random.default_rng(WORLD_SEED)
    protos = rng.normal(size=(len(EMOTIONS), dim)).astype(np.float32)
    offsets = 0.7 * rng.normal(size=(max(speakers, 1), dim)).astype(np.float32)
    return protos, offsets


def state_segment(rng: np.random.Generator, state: int, n: int, cue: float,
                  offset: np.ndarray, protos: np.ndarray, smooth: float = 0.9) -> dict:
    """Denseface-like arrays of one segment of ``n`` frames in hidden ``state``: ``cue`` scales
    the prototype (0: the faces say nothing of the state)."""
    dim = protos.shape[1]
    intensity = cue * rng.uniform(0.5, 1.5)
    drift = np.empty((n, dim), dtype=np.float32)
    x = rng.normal(size=dim)
    for t in range(n):  # AR(1) with unit stationary variance
        x = smooth * x + np.sqrt(1 - smooth ** 2) * rng.normal(size=dim)
        drift[t] = x
    feat = intensity * protos[state] + offset + drift + 0.3 * rng.normal(size=(n, dim))
    logits = 0.5 * rng.normal(size=(n, 8))
    logits[:, PRED_CLASS[EMOTIONS[state]]] += 1.0 + 2.0 * intensity
    pred = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"feat": feat.astype(np.float32),
            "trans1": rng.normal(size=(n, 216)).astype(np.float32),
            "trans2": rng.normal(size=(n, 300)).astype(np.float32),
            "pred": pred.astype(np.float32),
            "confidence": rng.uniform(0.6, 1.0, size=n).astype(np.float32),
            "frame_idx": np.arange(n, dtype=np.int64) * 3}


def state_caption(rng: np.random.Generator, state: int, p_emotion: float) -> str:
    """3-12 words: each an emotion word of the state with probability ``p_emotion``, else a
    neutral filler."""
    words = STATE_WORDS[EMOTIONS[state]]
    return " ".join(str(rng.choice(words)) if rng.random() < p_emotion
                    else str(rng.choice(NEUTRAL_WORDS)) for _ in range(int(rng.integers(3, 13))))


def make_state_corpus(root, captions, *, movies: int = 4, segments: int = 50, faces: int = 16,
                      p_emotion: float = 0.5, seed: int = 0, meta_dir=None) -> list[str]:
    """Unlabelled movies for pre-training: ``root/<movie>/has_active_spk_denseface_with_trans.h5``
    (one speaker per movie; 3 to 2 x ``faces`` frames per segment) and the captions JSON
    ``captions`` (``{id: [text]}``), face and text of a segment from one hidden state (see
    above). With ``meta_dir``, also ``<meta_dir>/<movie>/has_active_spk.txt``. Returns the
    segment ids."""
    import h5py

    rng = np.random.default_rng(seed)
    protos, offsets = _world(movies)
    ids, caps = [], {}
    for m in range(movies):
        movie = f"No{m:04d}.Movie_{m}"
        (Path(root) / movie).mkdir(parents=True, exist_ok=True)
        with h5py.File(Path(root) / movie / MOVIE_H5, "w") as f:
            g = f.create_group(movie)
            for s in range(1, segments + 1):
                state = int(rng.integers(len(EMOTIONS)))
                n = int(rng.integers(3, 2 * faces))
                seg = g.create_group(str(s))
                for k, v in state_segment(rng, state, n, 1.0, offsets[m], protos).items():
                    seg.create_dataset(k, data=v)
                ids.append(f"{movie}_{s}")
                caps[ids[-1]] = [state_caption(rng, state, p_emotion)]
        if meta_dir is not None:
            _write_meta(meta_dir, movie, segments)
    Path(captions).write_text(json.dumps(caps, indent=1))
    return ids


STATE_LABELS = ("ang", "hap", "neu", "sad")  # IEMOCAP's codes of :data:`EMOTIONS`


def make_state_emotion_corpus(root, *, per_speaker: int = 20, faces: int = 8, cue: float = 0.3,
                              label_noise: float = 0.1, seed: int = 0) -> dict:
    """A labelled corpus from the hidden-state generator in IEMOCAP's layout, for the named
    protocols ``iemocap-5fold`` / ``iemocap-10fold``: 5 sessions x 2 speakers (F, M) x
    ``per_speaker`` utterances, ids ``Ses03F_impro01_M014``, labels ``ang hap neu sad`` (the
    state, flipped to another class with probability ``label_noise``).

    ``cue`` is the strength of the signal: it scales the face prototype and sets the chance of
    an emotion word in the text (``0.25 * cue`` per word); 0 leaves only speaker offsets and
    noise. Speakers are new (offsets of the world's speakers 100+), so a model cannot learn them
    from the pre-training movies. Writes ``root/h5/<dialog>/...h5`` and ``root/utterances.jsonl``
    (``id, text, label``); returns ``{"h5", "utterances", "labels", "states"}``
    (``states``: id -> hidden state index, for measuring the ceiling)."""
    import h5py

    rng = np.random.default_rng(seed)
    protos, offsets = _world(120)
    root = Path(root)
    recs, states = [], {}
    for session in range(1, 6):
        movie = f"Ses{session:02d}F_impro01"
        (root / "h5" / movie).mkdir(parents=True, exist_ok=True)
        with h5py.File(root / "h5" / movie / MOVIE_H5, "w") as h5:
            g = h5.create_group(movie)
            for k, gender in enumerate("FM"):
                offset = offsets[100 + 2 * (session - 1) + k]
                for u in range(per_speaker):
                    state = (u + k) % len(EMOTIONS)
                    seg = f"{gender}{u:03d}"
                    n = int(rng.integers(max(2, faces // 2), faces * 2))
                    grp = g.create_group(seg)
                    for name, v in state_segment(rng, state, n, cue, offset, protos).items():
                        grp.create_dataset(name, data=v)
                    label = state
                    if rng.random() < label_noise:
                        label = int((state + rng.integers(1, len(EMOTIONS))) % len(EMOTIONS))
                    uid = f"{movie}_{seg}"
                    states[uid] = state
                    recs.append({"id": uid, "text": state_caption(rng, state, 0.25 * cue),
                                 "label": STATE_LABELS[label]})
    path = root / "utterances.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return {"h5": str(root / "h5"), "utterances": str(path), "labels": list(STATE_LABELS),
            "states": states}
