"""The hidden-state corpus (memodb.synth) gives every pre-training task something to learn, and
its cue strength sets how far the labels can be learnt from the faces."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from memodb.feature.sources import MOVIE_H5
from memodb.synth import (STATE_LABELS, STATE_LEXICON, STATE_WORDS, make_lexicon,
                          make_state_corpus, make_state_emotion_corpus)


def face_ceiling(root: Path, cue: float) -> tuple[float, float]:
    """(test accuracy of a nearest-centroid classifier on the segments' mean face, trained on
    sessions 1-4 and tested on session 5; share of captions with an emotion word) of a
    labelled corpus without label noise."""
    info = make_state_emotion_corpus(root / f"cue{cue}", per_speaker=20, cue=cue,
                                     label_noise=0.0, seed=3)
    x, y, session, emotional = [], [], [], 0
    words = {w for ws in STATE_WORDS.values() for w in ws}
    recs = [json.loads(line) for line in Path(info["utterances"]).read_text().splitlines()]
    for r in recs:
        movie, seg = r["id"].rsplit("_", 1)
        with h5py.File(Path(info["h5"]) / movie / MOVIE_H5) as f:
            x.append(f[movie][seg]["feat"][()].mean(0))
        y.append(STATE_LABELS.index(r["label"]))
        session.append(int(r["id"][3:5]))
        emotional += bool(words & set(r["text"].split()))
    x, y, session = np.array(x), np.array(y), np.array(session)
    train, test = session < 5, session == 5
    centroids = np.stack([x[train & (y == k)].mean(0) for k in range(len(STATE_LABELS))])
    pred = ((x[test, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == y[test]).mean()), emotional / len(recs)


def test_cue_strength_moves_the_ceiling(tmp_path):
    """Cue 0: faces and text say nothing (chance, no emotion word); the ceiling rises with
    the cue, to every test segment right at cue 1 (measured: 0.23, 0.68, 1.0)."""
    none, some, full = (face_ceiling(tmp_path, c) for c in (0.0, 0.1, 1.0))
    assert none[0] < 0.4 and none[1] == 0.0
    assert none[0] + 0.2 < some[0] < full[0] - 0.1
    assert full[0] == 1.0
    assert 0 < some[1] < full[1]


def test_labelled_corpus_fits_the_iemocap_protocols(tmp_path):
    from memodb.dataset.protocols import assign, verify

    info = make_state_emotion_corpus(tmp_path, per_speaker=4, seed=0)
    for name in ("iemocap-5fold", "iemocap-10fold"):
        a = assign(name, info["utterances"])
        assert not verify(a) and len(a.utterances) == 40 and not a.dropped
        assert sorted(set(a.labels.values())) == [0, 1, 2, 3]


@pytest.mark.slow
def test_golden_every_task_learns(tmp_path):
    """The quickstart's pre-training (memo.quickstart.PRETRAIN: 400 updates of the tiny
    model, mrfr 1 : itm 2) on its movies (4 x 100 segments): ITM on the validation texts is
    clearly above chance (measured 0.85, chance 0.5) and the MRFR loss falls by more than a
    quarter (mean of the first -> last 40 updates; measured 2.53 -> 1.57)."""
    from memo.quickstart import PRETRAIN, PRETRAIN_TASKS
    from memodb import build_dataset
    from memotrain.recipes.pretrain import pretrain

    make_state_corpus(tmp_path / "h5", tmp_path / "captions.json", movies=4, segments=100,
                      seed=0)
    make_lexicon(tmp_path / "lexicon.tsv", STATE_LEXICON)
    (tmp_path / "c.json").write_text(json.dumps({
        "name": "golden", "lexicon": "lexicon.tsv",
        "features": {"face": {"source": "h5", "conf_th": 0.5, "max_bb": 36}},
        "text": {"source": "captions.json", "faces_from": "face", "min_faces": 1,
                 "max_len": 30, "splits": ["val=40"], "seed": 0}}))
    built = build_dataset(tmp_path / "c.json", tmp_path / "ds", workers=1)
    assert built.report.ok
    face = next(s.path for s in built.steps if s.name == "face")
    txt = tmp_path / "ds" / "txt"
    steps = PRETRAIN["steps"]
    s = pretrain({**PRETRAIN, "output_dir": str(tmp_path / "pt"), "log_every": 0,
                  "val_every": steps, "save_every": 0,
                  "data": {**PRETRAIN["data"], "corpora": [{
                      "txt_db": str(txt / "train"), "img_db": face,
                      "val_txt_db": str(txt / "val"), "tasks": PRETRAIN_TASKS}]}}, console=None)
    mrfr = [x for n, t, x in s["losses"] if t == "mrfr"]
    first = np.mean([x for n, t, x in s["losses"] if t == "mrfr" and n <= 40])
    last = np.mean([x for n, t, x in s["losses"] if t == "mrfr" and n > steps - 40])
    assert mrfr and last < 0.75 * first
    val = [json.loads(line) for line in (tmp_path / "pt" / "metrics.jsonl").read_text()
           .splitlines()][-1]["val"]
    assert val["itm"]["acc"] >= 0.65
