"""``memo quickstart``: the whole chain on a small corpus generated in code.

Stages: generate the corpora and their dataset configs, trans2npz, then ``memo db build``
(face features straight from the h5 files, raw face crops, tokenised text databases with splits
and emotion words, check), stats, a short pre-training of the tiny model from scratch (mrfr,
itm) on movies whose faces and captions follow a hidden emotion state (memodb.synth), then
``memo db build`` of a labelled emotion corpus from the same generator with a weak signal under
the iemocap-5fold protocol, fine-tuning of the pre-trained model on folds 1 and 2, the results
table, the same from random initialisation and the gain of pre-training, the features of the
fold-1 test segments extracted with the selected model (``memo extract``), and the HTML report
of it all (``memo report``, where matplotlib is installed). Re-running in the same folder reuses what is built.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from memodb import CheckReport, build_dataset, trans2npz
from memodb.describe import feature_stats
from memodb.synth import (STATE_LEXICON, make_lexicon, make_openface, make_state_corpus,
                          make_state_emotion_corpus)

MOVIES, SEGMENTS, CLIPS = 4, 100, 6
PER_SPEAKER, CUE = 40, 0.3  # the labelled corpus: 5 sessions x 2 speakers x 40, a weak signal
CONFIG = {
    "name": "quickstart",
    "lexicon": "lexicon.tsv",
    "features": {
        "face": {"source": "h5", "conf_th": 0.5, "max_bb": 36},
        "rawimg": {"type": "rawimg", "source": "openface", "size": 64},
    },
    "text": {"source": "captions.json", "faces_from": "face", "min_faces": 1, "max_len": 30,
             "splits": ["val=40", "trn3k=10@train"], "seed": 0},
}

EMOTION = {  # the downstream corpus: IEMOCAP-style ids, split by the iemocap-5fold protocol
    "name": "emotion",
    "features": {"face": {"source": "emotion/h5", "conf_th": 0.5, "max_bb": 16}},
    "text": {"source": "emotion/utterances.jsonl", "protocol": "iemocap-5fold",
             "faces_from": "face", "min_faces": 0},
}

# itm and mrfr only: with mlm or melm in the same run, ITM stays at chance on this corpus
# (docs/LEARNING.md, "What is not solved")
PRETRAIN_TASKS = {"mrfr": 1, "itm": 2}
PRETRAIN = {
    "model": "tiny", "steps": 400, "seed": 0, "log_every": 25, "val_every": 200, "save_every": 200,
    "optim": {"lr": 3e-3, "warmup_steps": 30},
    "data": {"max_text_len": 30, "max_faces": 36, "batch_size": 16, "num_workers": 0},
}

FINETUNE = {
    "head": "emocls", "folds": [1, 2], "seeds": [0], "epochs": 12, "log_every": 0,
    "optim": {"lr": 2e-3, "warmup_ratio": 0.05}, "select": {"metric": "UA", "patience": 5},
    "eval_modalities": [["text"], ["faces"]],
}


@dataclass
class QuickstartResult:
    workdir: Path
    steps: list = field(default_factory=list)  # (stage, output path, one-line summary)
    report: CheckReport | None = None
    stats: dict | None = None
    pretrain: dict | None = None
    finetune: dict | None = None  # memotrain.recipes.finetune.finetune's summary
    html: Path | None = None  # the report (None without matplotlib)


def generate_corpus(corpus: Path) -> None:
    """The built-in corpus: Denseface h5 for a few movies, their segment lists, captions, an
    emotion lexicon, OpenFace-style crops and the dataset config. Written once; the marker
    file makes re-runs reuse it."""
    marker = corpus / ".complete"
    if marker.exists():
        return
    make_state_corpus(corpus / "h5", corpus / "captions.json", movies=MOVIES, segments=SEGMENTS,
                      seed=0, meta_dir=corpus / "meta")
    make_lexicon(corpus / "lexicon.tsv", STATE_LEXICON)
    make_openface(corpus / "openface", clips=CLIPS, frames=16, seed=0)
    (corpus / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")
    make_state_emotion_corpus(corpus / "emotion", per_speaker=PER_SPEAKER, faces=8, cue=CUE,
                              seed=0)
    (corpus / "emotion.json").write_text(json.dumps(EMOTION, indent=1) + "\n")
    marker.write_text("")


def quickstart(workdir="memo-quickstart", workers: int | None = None,
               progress: bool = False, log=print) -> QuickstartResult:
    workdir = Path(workdir)
    corpus = workdir / "corpus"
    res = QuickstartResult(workdir)

    def step(stage, path, summary):
        res.steps.append((stage, str(path), summary))
        log(f"[{len(res.steps)}] {stage:<16} {summary}  ->  {path}")

    generate_corpus(corpus)
    step("corpus", corpus, f"{MOVIES} movies x {SEGMENTS} segments (h5) and captions from a "
         f"hidden emotion state, lexicon, {CLIPS} OpenFace clips, config.json; a labelled "
         f"emotion corpus (5 sessions x 2 speakers x {PER_SPEAKER}, 4 classes, cue {CUE}), "
         "emotion.json")
    t = trans2npz(corpus / "h5", workdir / "npz", meta_dir=corpus / "meta", workers=workers,
                  progress=progress)
    step("trans2npz", t.out_dir, f"{t.written} written, {t.skipped} already there")
    dataset = workdir / "dataset"
    built = build_dataset(corpus / "config.json", dataset, workers=workers, progress=progress)
    for s in built.steps:
        step(f"build {s.name}", s.path, f"{s.summary}" + (" (up to date)" *
                                                            (s.status == "up to date")))
    res.report = built.report
    step("check", dataset / "check.json", "clean" if res.report.ok else
         f"{sum(len(d.problems) for d in res.report.databases)} problem(s)")
    face = next(s.path for s in built.steps if s.name == "face")
    res.stats = feature_stats(face)
    s = res.stats["nbb"]
    step("stats", face, f"faces per segment mean {s['mean']:.1f} median {s['median']:.0f} "
         f"p80 {s['p80']:.0f} max {s['max']}")
    if not res.report.ok:
        res.html = write_html(workdir, step, log)
        return res
    res.pretrain = pretrain_tiny(dataset, face, workdir / "pretrain", step, log)
    emotion = workdir / "emotion"
    built = build_dataset(corpus / "emotion.json", emotion, workers=workers, progress=progress)
    step("build emotion", emotion, f"{len(built.steps)} databases (face features, train / val "
         "/ test texts of the 5 iemocap-5fold folds), " + ("clean" if built.report.ok
                                                           else "PROBLEMS"))
    res.report = built.report
    if built.report.ok:
        res.finetune = finetune_tiny(emotion, workdir, step)
        extract_features(emotion, workdir, step)
    res.html = write_html(workdir, step, log)
    return res


def write_html(workdir: Path, step, log) -> Path | None:
    """The report of the run (``memo report`` of the folders it wrote), or a notice where
    matplotlib is missing."""
    import importlib.util

    from memodb.errors import BadInputError
    from memoreport.report import report_kind, write_report

    if importlib.util.find_spec("matplotlib") is None:
        log("report: not written, matplotlib is not installed (pip install "
            "'memo-emotion[report]')")
        return None
    paths = []
    for name in ("dataset", "pretrain", "emotion", "finetune"):
        try:
            report_kind(workdir / name)
            paths.append(workdir / name)
        except BadInputError:  # a stage that did not run
            continue
    out = write_report(paths, workdir / "report.html", title="memo quickstart")
    step("report", out, f"one HTML page ({', '.join(p.name for p in paths)}): open it in a "
         "browser")
    return out


def pretrain_tiny(dataset: Path, face: str, out: Path, step, log) -> dict:
    """Pre-train the tiny model from scratch on the dataset (:data:`PRETRAIN_TASKS`) and show
    each task's mean loss over the first and the last 40 updates, and the ITM accuracy on the
    validation texts (chance 50 %). A finished run is reused; an interrupted one resumes."""
    from memotrain.recipes.pretrain import pretrain

    cfg = {**PRETRAIN, "output_dir": str(out),
           "data": {**PRETRAIN["data"], "corpora": [{
               "txt_db": str(dataset / "txt" / "train"), "img_db": face,
               "val_txt_db": str(dataset / "txt" / "val"),
               "tasks": PRETRAIN_TASKS}]}}
    latest = out / "ckpt" / "latest"
    done = latest.exists() and int(latest.read_text()) >= cfg["steps"]
    summary = None if done else pretrain(cfg, resume=latest.exists(), console=None)
    if summary is None:
        step("pretrain", out, f"{cfg['steps']} updates already done (delete {out} to rerun)")
        return {}
    by_task: dict = {}
    for n, task, loss in summary["losses"]:
        by_task.setdefault(task, []).append((n, loss))
    parts = []
    for task, pts in sorted(by_task.items()):
        first = [x for n, x in pts if n <= 40]
        last = [x for n, x in pts if n > cfg["steps"] - 40]
        if first and last:
            parts.append(f"{task} {sum(first) / len(first):.2f} -> {sum(last) / len(last):.2f}")
    itm = (summary["val"] or {}).get("itm", {}).get("acc")
    step("pretrain", out, f"{summary['steps']} updates of the tiny model; mean loss, first "
         f"-> last 40 updates: " + ", ".join(parts)
         + ("" if itm is None else f"; val ITM accuracy {100 * itm:.1f} % (chance 50)"))
    return summary


def finetune_tiny(emotion: Path, workdir: Path, step) -> dict:
    """Fine-tune the pre-trained tiny model on folds 1 and 2 of the emotion corpus (selection
    on val UA, test once per fold), then the same from random initialisation, and print the
    gain (paired over the folds, with its 95 % interval). Finished runs are reused."""
    from memotrain.recipes.finetune import finetune
    from memotrain.results import compare

    face = next((emotion / "face").glob("feat_*"))
    txt = emotion / "txt"
    ckpt = workdir / "pretrain" / "ckpt" / f"model_step_{PRETRAIN['steps']}.pt"
    data = {"train": f"{txt}/fold{{fold}}/train", "val": f"{txt}/fold{{fold}}/val",
            "test": f"{txt}/fold{{fold}}/test", "img_db": str(face), "batch_size": 8,
            "max_text_len": 30}
    s = finetune({**FINETUNE, "init_checkpoint": str(ckpt), "data": data,
                  "output_dir": str(workdir / "finetune")})
    m, sd = s["summary"]["mean"], s["summary"]["std"]
    step("finetune", s["output_dir"], f"{s['summary']['n_runs']} folds, test UA "
         f"{100 * m['UA']:.1f} +- {100 * sd['UA']:.1f} (chance 25.0), WA {100 * m['WA']:.1f}, "
         f"WF1 {100 * m['WF1']:.1f}; table in results.tsv")
    scratch = finetune({**FINETUNE, "model": "tiny", "data": data,
                        "output_dir": str(workdir / "scratch")})
    c = compare(s["output_dir"], scratch["output_dir"], "UA")
    ci = "" if c["t"] is None else \
        f", 95 % CI [{100 * c['t'][0]:+.1f}, {100 * c['t'][1]:+.1f}] over {c['n']} folds"
    step("gain", scratch["output_dir"], f"from scratch test UA {100 * c['mean_b']:.1f}; "
         f"pre-training gains {100 * c['diff']:+.1f} UA points{ci}")
    s["gain"] = c
    return s


def extract_features(emotion: Path, workdir: Path, step) -> None:
    """Per-segment features of fold 1's test texts from its selected model (``best.pt``):
    pooled [CLS], text and face states, as feature databases."""
    from memotrain.recipes.extract import extract

    out = workdir / "features"
    if (out / "extract.json").exists():
        step("extract", out, "already extracted (delete it to rerun)")
        return
    r = extract(workdir / "finetune" / "fold1" / "seed0" / "best.pt",
                emotion / "txt" / "fold1" / "test", out,
                img_db=next((emotion / "face").glob("feat_*")))
    step("extract", out, f"{r.extracted} segments: {', '.join(r.modalities)} states of layer "
         f"{r.layer} with {r.labelled} labels (feature databases)")
