"""What pre-training buys: fine-tuning from the pre-trained tiny model against fine-tuning from
random initialisation, at a few fractions of the labels, on a corpus where it can help.

Both corpora come from the hidden-state generator (``memodb.synth``: a segment's faces and
caption follow one hidden emotion state; prototypes and speaker offsets shared):

1. unlabelled movies (``--segments`` spread over ``--movies``), built with ``memo db build`` and used to
   pre-train the tiny model for ``--steps`` updates on ``mrfr`` and ``itm`` (the quickstart's
   tasks, memo.quickstart.PRETRAIN_TASKS);
2. a labelled IEMOCAP-style corpus (5 sessions x 2 speakers x ``--per-speaker``, a weak signal
   of strength ``--cue``) whose train / val / test split per fold is the ``iemocap-5fold``
   protocol's (``memodb.dataset.protocols.assign``). For each ``--fractions`` entry the train
   split of every fold is cut to that fraction, stratified by class (at least one per class),
   the same cut for both inits; val and test stay whole.

For every fraction: ``memo train finetune`` over ``--folds`` x ``--seeds`` from the pre-trained
checkpoint, then from random initialisation (baseline, same folds, seeds, data and schedule),
test UA with its 95 % t interval over the runs, and the paired difference (pre-trained -
scratch, ``memotrain.results.compare``: mean, 95 % paired t interval, Wilcoxon p). The
text databases carry no protocol record (the cut train splits are not the protocol's), so the
comparison is made with ``require_protocol=False``; the folds are the protocol's.

The ratio column is pre-trained UA / scratch UA.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from memodb import build_dataset
from memodb.dataset.protocols import assign
from memodb.synth import (STATE_LEXICON, make_lexicon, make_state_corpus,
                          make_state_emotion_corpus)

from .common import parser, ratio, report, scratch

DOC = __doc__


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def per_movie(args) -> int:
    return -(-args.segments // args.movies)


def pretrain_corpus(root: Path, args) -> tuple[str, str, str]:
    """Build the unlabelled movies: (train txt db, val txt db, face db)."""
    c = root / "movies"
    c.mkdir(parents=True)
    make_state_corpus(c / "h5", c / "captions.json", movies=args.movies,
                      segments=per_movie(args), faces=16, seed=args.seed)
    make_lexicon(c / "lexicon.tsv", STATE_LEXICON)
    val = max(4, args.movies * per_movie(args) // 10)
    (c / "config.json").write_text(json.dumps({
        "name": "movies", "lexicon": "lexicon.tsv",
        "features": {"face": {"source": "h5", "conf_th": 0.5, "max_bb": 36}},
        "text": {"source": "captions.json", "faces_from": "face", "min_faces": 1,
                 "max_len": 30, "splits": [f"val={val}"], "seed": 0}}))
    built = build_dataset(c / "config.json", root / "movies_ds", workers=args.workers)
    assert built.report.ok, built.report.to_json()
    face = next(s.path for s in built.steps if s.name == "face")
    txt = root / "movies_ds" / "txt"
    return str(txt / "train"), str(txt / "val"), str(face)


def run_pretrain(root: Path, args, dbs) -> tuple[str, dict, float | None]:
    """Pre-train; (checkpoint, {task: (first, last) mean loss over a tenth of the updates},
    the validation ITM accuracy or None)."""
    from memo.quickstart import PRETRAIN, PRETRAIN_TASKS
    from memotrain.recipes.pretrain import pretrain

    txt, val, face = dbs
    cfg = {**PRETRAIN, "steps": args.steps, "seed": args.seed, "log_every": 0,
           "val_every": args.steps, "save_every": 0, "output_dir": str(root / "pretrain"),
           "optim": {**PRETRAIN["optim"], "warmup_steps": max(1, args.steps // 12)},
           "data": {**PRETRAIN["data"], "corpora": [{"txt_db": txt, "img_db": face,
                                                      "val_txt_db": val,
                                                      "tasks": PRETRAIN_TASKS}]}}
    s = pretrain(cfg, console=None)
    curves = {}
    for task in PRETRAIN_TASKS:
        pts = [x for n, t, x in s["losses"] if t == task]
        curves[task] = (float(np.mean(pts[:max(1, len(pts) // 10)])),
                        float(np.mean(pts[-max(1, len(pts) // 10):])))
    return s["checkpoint"], curves, (s["val"] or {}).get("itm", {}).get("acc")


def fraction_dataset(root: Path, a, h5: str, folds: list, fraction: float,
                     seed: int, workers: int) -> tuple[Path, str]:
    """Refs per fold (the assignment ``a``'s splits) with the train split cut to ``fraction``
    (stratified by class, at least one each), built with ``memo db build``: (txt folder,
    face db)."""
    name = f"frac{fraction:g}"
    refs = root / name / "refs"
    text = {u.id: u.text for u in a.utterances}
    for fold in folds:
        ids = a.fold_ids(fold)
        rng = np.random.default_rng(seed * 1000 + fold)
        keep = []
        for k in range(len(a.classes)):
            mine = [i for i in ids["train"] if a.labels[i] == k]
            n = max(1, round(fraction * len(mine)))
            keep += [mine[j] for j in sorted(rng.choice(len(mine), size=n, replace=False))]
        ids["train"] = keep
        out = refs / str(fold)
        out.mkdir(parents=True, exist_ok=True)
        for split, short in (("train", "trn"), ("val", "val"), ("test", "tst")):
            (out / f"{short}.json").write_text(json.dumps(
                {i: {"txt": [text[i]], "label": a.labels[i]} for i in ids[split]}))
    cfg = root / name / "config.json"
    cfg.write_text(json.dumps({
        "name": name, "features": {"face": {"source": h5, "conf_th": 0.5, "max_bb": 16}},
        "text": {"sources": {"train": "refs/{fold}/trn.json", "val": "refs/{fold}/val.json",
                             "test": "refs/{fold}/tst.json"},
                 "folds": folds, "labels": a.classes, "faces_from": "face", "min_faces": 0}}))
    built = build_dataset(cfg, root / name / "ds", workers=workers)
    assert built.report.ok, built.report.to_json()
    face = next(s.path for s in built.steps if s.name == "face")
    return root / name / "ds" / "txt", str(face)


def run_finetune(out: Path, args, txt: Path, face: str, init: dict) -> dict:
    from memo.quickstart import FINETUNE
    from memotrain.recipes.finetune import finetune
    from memotrain.results import Console

    cfg = {**FINETUNE, **init, "folds": ints(args.folds), "seeds": ints(args.seeds),
           "epochs": args.epochs, "eval_modalities": [], "output_dir": str(out),
           "data": {"train": f"{txt}/fold{{fold}}/train", "val": f"{txt}/fold{{fold}}/val",
                    "test": f"{txt}/fold{{fold}}/test", "img_db": face, "batch_size": 8,
                    "max_text_len": 30}}
    return finetune(cfg, console=Console(enabled=False))


def pct(x) -> str:
    return f"{100 * x:.1f}"


def interval(ci) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def main(argv=None) -> str:
    from memotrain.results import compare, load_results

    p = parser(DOC, segments=400, movies=4)
    p.add_argument("--steps", type=int, default=400, help="pre-training updates")
    p.add_argument("--per-speaker", type=int, default=40, help="labelled utterances per speaker")
    p.add_argument("--cue", type=float, default=0.3, help="signal strength of the labelled corpus")
    p.add_argument("--fractions", default="0.05,0.1,1", help="fractions of the train labels")
    p.add_argument("--folds", default="1,2,3,4,5", help="iemocap-5fold folds")
    p.add_argument("--seeds", default="0,1", help="fine-tuning seeds per fold")
    p.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs")
    args = p.parse_args(argv)
    folds = ints(args.folds)
    t0 = time.perf_counter()
    with scratch(args, "gain") as root:
        ckpt, curves, itm = run_pretrain(root, args, pretrain_corpus(root, args))
        t_pre = time.perf_counter() - t0
        info = make_state_emotion_corpus(root / "emotion", per_speaker=args.per_speaker,
                                         faces=8, cue=args.cue, seed=args.seed + 1)
        a = assign("iemocap-5fold", info["utterances"])
        rows = []
        for frac in [float(x) for x in args.fractions.split(",")]:
            txt, face = fraction_dataset(root, a, info["h5"], folds, frac, args.seed,
                                         args.workers)
            n_train = len(json.loads((root / f"frac{frac:g}" / "refs" / str(folds[0]) /
                                      "trn.json").read_text()))
            pre = run_finetune(root / f"ft_pre_{frac:g}", args, txt, face,
                               {"init_checkpoint": ckpt})
            base = run_finetune(root / f"ft_scratch_{frac:g}", args, txt, face,
                                {"model": "tiny"})
            c = compare(pre["output_dir"], base["output_dir"], "UA", require_protocol=False)
            ci = {k: load_results(d)["summary"]["ci"]["UA"]["t"]
                  for k, d in (("pre", pre["output_dir"]), ("base", base["output_dir"]))}
            wil = "-" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
            rows.append([f"{100 * frac:g} % ({n_train})", pct(c["mean_b"]) + " " +
                         interval(ci["base"]).replace("+", ""),
                         pct(c["mean_a"]) + " " + interval(ci["pre"]).replace("+", ""),
                         f"{100 * c['diff']:+.1f} {interval(c['t'])}", wil,
                         ratio(c["mean_a"] / max(c["mean_b"], 1e-9))])
        total = time.perf_counter() - t0
    notes = [f"`python -m bench.pretraining_gain{''.join(' ' + a for a in argv or [])}`",
             f"pre-training: {args.movies} movies x {per_movie(args)} segments, {args.steps} "
             "updates of the tiny model on " + ", ".join(
                 f"{t} {a:.2f} -> {b:.2f}" for t, (a, b) in curves.items())
             + " (mean loss, first -> last tenth of its updates)"
             + ("" if itm is None else f"; val ITM accuracy {100 * itm:.1f} % (chance 50)")
             + f"; {t_pre:.0f} s",
             f"labelled corpus: 5 sessions x 2 speakers x {args.per_speaker}, cue {args.cue}, "
             f"iemocap-5fold folds {args.folds} x seeds {args.seeds}, {args.epochs} epochs; "
             "UA in % with its 95 % t interval over the runs; chance 25",
             "gain: pre-trained - scratch, paired by (fold, seed), 95 % paired t interval; "
             f"ratio = pre-trained UA / scratch UA; the whole benchmark took {total:.0f} s"]
    return report("pretraining_gain", "Pre-training gain: test UA, from scratch vs pre-trained",
                  ["train labels (per fold)", "scratch UA", "pre-trained UA",
                   "gain (UA points)", "Wilcoxon p", "ratio"], rows, notes)


if __name__ == "__main__":
    main()
