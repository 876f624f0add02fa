"""``memo report``: one HTML file for what each path is. :data:`KINDS` is the dispatch: a kind's
name, how a folder of that kind is recognised, and the function writing its section (data from
:mod:`memoreport.data`, drawings from :mod:`memoreport.plots`); a new kind of folder is one more
entry."""
from __future__ import annotations

from pathlib import Path

from memodb.errors import BadInputError, MemoError
from memodb.store.files import atomic_write
from memodb.store.manifest import DATASET_FILE
from memotrain.results import METRICS, report_line

from . import data as D
from .page import Page


class ReportError(MemoError):
    """A report cannot be drawn (matplotlib is missing)."""


# ----------------------------------------------------------------------------- dataset folders

def dataset_section(page: Page, path: Path) -> None:
    from . import plots as P

    d = D.dataset_data(path)
    page.heading(f"Dataset {d['name']}: {path}")
    ok = d["check"].get("ok")
    page.text(f"memo db check: {'clean' if ok else 'PROBLEMS'}", "ok" if ok else "fail")
    page.heading("Check", 3)
    page.table(["database / folder", "kind", "verdict", "problems", "warnings"],
               D.check_rows(d["check"]))
    for db in d["check"].get("databases", []):
        for p in db["problems"][:20]:
            page.text(f"{db['path']}: error [{p['code']}] "
                      + (f"{p['segment']}: " if p.get("segment") else "") + p["message"], "fail")
    page.heading("Faces per segment", 3)
    for f in d["features"]:
        s = f["stats"]
        n = s["nbb"]
        page.text(f"{f['name']} ({f['kind']}): {s['segments']} segments ({s['empty']} without "
                  f"frames); faces per segment mean {n['mean']:.1f}, median {n['median']:.0f}, "
                  f"p80 {n['p80']:.0f}, max {n['max']}")
        x, y = D.face_histogram(s)
        page.image(P.bars(x, y, f"{f['name']}: faces per segment", "faces (frames kept)",
                          "segments"), f"{f['name']} faces per segment")
    if not d["texts"]:
        return
    page.heading("Text lengths", 3)
    bins, per = D.length_histograms(d["texts"])
    page.image(P.grouped_bars(bins, per, "texts per length (WordPiece pieces)", "texts"),
               "text length histograms")
    names, counts = D.label_counts(d["texts"])
    if counts:
        page.heading("Labels per split and fold", 3)
        page.table(["text database", *names, "texts"],
                   [[db, *row, sum(row)] for db, row in counts.items()])
        page.image(P.grouped_bars(list(counts), dict(zip(names, zip(*counts.values()))),
                                  "texts per label", "texts"), "label counts")
    rows = D.lexicon_rows(d["texts"])
    if rows:
        page.heading("Lexicon coverage", 3)
        page.table(["text database", "texts with an emotion word", "share of texts",
                    "share of pieces", "pieces per category"], rows)


# ----------------------------------------------------------------------------- pre-training runs

def pretrain_section(page: Page, path: Path) -> None:
    from . import plots as P

    records = D.read_records(path / D.METRICS_FILE)
    c = D.pretrain_curves(records)
    page.heading(f"Pre-training run: {path}")
    latest = path / "ckpt" / "latest"
    if latest.is_file():
        page.text(f"last saved state: update {latest.read_text().strip()}")
    if not c["loss"] and not c["val"]:
        page.text(f"{D.METRICS_FILE} holds no log line (log_every and val_every 0): no curves",
                  "note")
        return
    colors = D.task_colors(c)
    if c["loss"]:
        page.heading("Training loss per task", 3)
        page.text("mean loss of the updates since the previous log line; all: every task")
        page.image(P.lines(c["loss"], "training loss", "loss", colors=colors),
                   "training loss per task")
        page.heading("Learning rate", 3)
        page.image(P.lines(c["lr"], "learning rate", "lr"), "learning rate")
        page.heading("Gradient norm", 3)
        page.text("before clipping, of the log line's update")
        page.image(P.lines(c["grad_norm"], "gradient norm", "norm", logy=True),
                   "gradient norm")
        page.heading("Skipped updates", 3)
        skipped = c["skipped"][-1][1] if c["skipped"] else 0
        page.text(f"{skipped} update(s) skipped (non-finite loss or gradients)",
                  "fail" if skipped else "ok")
        page.image(P.lines({"skipped": c["skipped"]}, "updates skipped so far", "updates",
                           step=True), "skipped updates")
    if c["val"]:
        page.heading("Validation", 3)
        for metric, per_task in c["val"].items():
            page.image(P.lines(per_task, f"validation {metric}", metric, colors=colors,
                               legend=True), f"validation {metric} per task")


# ----------------------------------------------------------------------------- fine-tuning

def finetune_section(page: Page, path: Path) -> None:
    from . import plots as P

    d = D.finetune_data(path)
    s = d["summary"]
    page.heading(f"Fine-tuning output: {path}")
    if not d["runs"]:
        page.text(f"{D.RESULTS_FILE} holds no finished run", "note")
        return
    labels, split, metric = s["labels"], s["split"], s["selection_metric"]
    page.text(f"{s['n_runs']} run(s); models selected on validation {metric}; "
              f"{split} split reported")
    if s.get("ci"):  # results written before the intervals have none
        page.text(report_line(s, metric))
    page.heading("Results (%)", 3)
    head, rows = D.results_rows(s, METRICS)
    page.table(head, rows)
    page.heading("Per-class recall", 3)
    page.image(P.grouped_bars(labels, D.recalls(s), f"{split} recall per class", "recall",
                              ylim=(0, 1)), "per-class recall")
    page.heading("Confusion matrices of the selected models", 3)
    for name, cm in D.confusions(d["runs"]).items():
        page.image(P.matrix(cm, labels, f"{split}, {name}"), f"confusion matrix {name}",
                   inline=True)
    curves = D.val_curves(d, metric)
    page.heading("Validation curves", 3)
    page.text(f"validation {metric} per fold and seed; circles: the selected step")
    page.image(P.lines({k: v["val"] for k, v in curves.items()}, f"validation {metric}",
                       metric, marks={k: v["selected"] for k, v in curves.items()}),
               f"validation {metric} per fold and seed")
    if any(v["loss"] for v in curves.values()):
        page.image(P.lines({k: v["loss"] for k, v in curves.items()}, "training loss",
                           "loss"), "training loss per fold and seed")


# ----------------------------------------------------------------------------- prep outputs

def prep_section(page: Page, path: Path) -> None:
    from . import plots as P

    d = D.prep_data(path)
    page.heading(f"memo prep output: {path}")
    page.heading("Filter counts", 3)
    page.text("subtitle lines, lines dropped by the text filters, then the segments left after "
              "each filter (the lists of meta/<movie>/)")
    head, rows = D.filter_rows(d["movies"])
    page.table(head, rows)
    for name, message in d["bad"].items():
        page.text(f"not prepared: {name}: {message}", "fail")
    for m in d["movies"]:
        o = m["options"]
        page.heading(f"Movie {m['name']}", 3)
        page.text(f"{m['movie']} (subtitles: {m['subtitles']}); speaker rule "
                  f"{o['speaker_rule']}, VAD {o['vad']}")
        for note in D.prep_notes(o):
            page.text(note, "note")
        page.table(["segment", "seconds", "text", "faces", "speaker",
                    "speaker rule counts per kept track"], D.segment_rows(m))
        segs = D.sheet_segments(m)
        if len(segs) < len(m["segments"]):
            page.text(f"contact sheets of {len(segs)} of the {len(m['segments'])} segments, "
                      "evenly spread", "note")
        page.text("Contact sheets: boxes around each face's landmarks, the speaker's thick "
                  "and green; under them the mouth opening of each track (the inner-lip gap "
                  "over the eye distance, the speaker rule's measure) and the voice activity "
                  "(the VAD the stage used), the shown frames dotted.")
        images, notes = [], []
        for seg in segs:
            sheet = D.segment_sheet(path, m, seg)
            notes += [n for n in sheet["notes"] if n not in notes]
            images.append((P.contact_sheet(sheet, seg["segment"]),
                           f"contact sheet {seg['segment']}"))
        for note in notes:
            page.text(note, "note")
        for png, alt in images:
            page.image(png, alt)


# ----------------------------------------------------------------------------- dispatch

KINDS = [  # (name, is this folder one?, its section)
    ("dataset folder", lambda p: (p / DATASET_FILE).is_file(), dataset_section),
    ("fine-tuning output", lambda p: (p / D.RESULTS_FILE).is_file(), finetune_section),
    ("pre-training run", lambda p: (p / D.METRICS_FILE).is_file()
     or (p / "ckpt" / "latest").is_file(), pretrain_section),
    ("memo prep output", lambda p: (p / D.PREP_FILE).is_file(), prep_section),
]


def report_kind(path) -> str:
    """The kind of folder ``path`` is (a :data:`KINDS` name); BadInputError naming it when it
    is none."""
    path = Path(path)
    for name, test, _ in KINDS:
        if path.is_dir() and test(path):
            return name
    raise BadInputError("not a folder memo report knows: a dataset folder (dataset.json), a "
                        "pre-training run (metrics.jsonl or ckpt/latest), a fine-tuning "
                        "output (results.json) or a memo prep output (prep.json)", file=path,
                        fix="give one of these folders (memo db build, memo train pretrain / "
                            "finetune, memo prep write them)")


def write_report(paths, out="report.html", title: str | None = None) -> Path:
    """One HTML file with a section for each of ``paths`` (any of :data:`KINDS`), written
    atomically to ``out``; returns its path."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError("matplotlib is not installed; memo report draws with it (pip "
                          "install 'memo-emotion[report]')") from None
    paths = [Path(p) for p in paths]
    kinds = [report_kind(p) for p in paths]  # every path recognised before any work
    page = Page(title or "memo report: " + ", ".join(p.name or str(p) for p in paths))
    sections = {name: section for name, _, section in KINDS}
    for path, kind in zip(paths, kinds):
        sections[kind](page, path)
    out = Path(out)
    with atomic_write(out) as f:
        f.write(page.render())
    return out
