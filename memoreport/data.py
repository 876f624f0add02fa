"""What each plot and table of a report shows, computed from the files memo writes (no
drawing, no torch): a dataset folder through :mod:`memodb.describe` and its ``check.json``,
a pre-training run's ``metrics.jsonl``, a fine-tuning output's ``results.json`` and each run's
``result.json`` / ``metrics.jsonl``. Curves are lists of ``(step, value)``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memodb.dataset.build import CHECK_FILE
from memodb.errors import BadInputError
from memodb.store.manifest import DATASET_FILE
from memotrain.finetuneconfig import run_name

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"  # memotrain.results.write


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"not readable JSON ({exc})", file=path,
                            fix="re-run the command that wrote it") from None


def read_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (none when the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            assert isinstance(rec, dict) and "step" in rec
        except (ValueError, AssertionError):
            raise BadInputError(f"line {n} is not a metrics record (a JSON object with a "
                                "step)", file=path,
                                fix="delete the damaged line or re-run the training") from None
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- dataset folders

def dataset_data(folder) -> dict:
    """A dataset folder: its name, every database's statistics (feature databases: faces per
    segment; text databases: lengths, labels, lexicon, faces) and the check's verdict
    (``check.json``; the folder is checked now where it has none)."""
    from memodb.describe import feature_stats, text_stats

    folder = Path(folder)
    body = read_json(folder / DATASET_FILE)
    features, texts = [], []
    for name, entry in sorted((body.get("databases") or {}).items()):
        path = folder / entry["path"]
        if entry.get("kind") == "text":
            texts.append({"name": name, "stats": text_stats(path)})
        else:
            features.append({"name": name, "kind": entry.get("kind"),
                             "stats": feature_stats(path)})
    if (folder / CHECK_FILE).is_file():
        check = read_json(folder / CHECK_FILE)
    else:
        from memodb import check as run_check

        check = run_check([folder]).to_dict()
    return {"name": body.get("name", folder.name), "features": features, "texts": texts,
            "check": check}


def face_histogram(stats: dict) -> tuple[list[int], list[int]]:
    """(faces per segment, segments) of a feature database's statistics."""
    hist = stats["nbb"].get("histogram") or []
    return [h["faces"] for h in hist], [h["segments"] for h in hist]


def length_histograms(texts: list[dict]) -> tuple[list[str], dict[str, list[int]]]:
    """The length bins and, per text database, its texts per bin."""
    if not texts:
        return [], {}
    bins = [b["bin"] for b in texts[0]["stats"]["length"]["histogram"]]
    return bins, {t["name"]: [b["count"] for b in t["stats"]["length"]["histogram"]]
                  for t in texts}


def label_counts(texts: list[dict]) -> tuple[list[str], dict[str, list[int]]]:
    """The label names and, per labelled text database (``fold1/train``...), its texts per
    label; unnamed labels show as their number."""
    names: dict = {}
    per: dict = {}
    for t in texts:
        labels = t["stats"]["labels"]
        if not labels:
            continue
        row = {}
        for c in labels["counts"]:
            key = c["name"] if c["name"] is not None else str(c["label"])
            names.setdefault(key, c["label"])
            row[key] = c["count"]
        per[t["name"].removeprefix("txt/")] = row
    order = sorted(names, key=names.get)
    return order, {db: [row.get(k, 0) for k in order] for db, row in per.items()}


def lexicon_rows(texts: list[dict]) -> list[list]:
    """Per text database with emotion words: texts with one, their share, the emotion
    pieces' share of all pieces, the pieces per category."""
    rows = []
    for t in texts:
        lex = t["stats"]["lexicon"]
        if lex is None:
            continue
        cats = ", ".join(f"{c['name'] or c['type_id']} {c['pieces']}" for c in lex["categories"]
                         if c["pieces"])
        rows.append([t["name"], lex["texts_with_emotion"], f"{100 * lex['texts_fraction']:.1f}%",
                     f"{100 * lex['pieces_fraction']:.1f}%", cats or "-"])
    return rows


def check_rows(check: dict) -> list[list]:
    """One row per checked database or folder: path, kind, verdict, problems, warnings."""
    return [[d["path"], d["kind"], "OK" if d["ok"] else "FAIL", len(d["problems"]),
             len(d["warnings"])] for d in check.get("databases", [])]


# ----------------------------------------------------------------------------- pre-training runs

def pretrain_curves(records: list[dict]) -> dict:
    """The curves of a pre-training ``metrics.jsonl``: ``loss`` (``all`` and per task),
    ``lr`` and ``grad_norm`` (per optimizer: transformer, cnn), ``skipped`` (updates skipped
    so far) and ``val`` (metric -> task -> curve)."""
    out: dict = {"loss": {}, "lr": {}, "grad_norm": {}, "skipped": [], "val": {}}

    def add(group: dict, name: str, step, value):
        if value is not None:
            group.setdefault(name, []).append((step, value))

    for r in records:
        s = r["step"]
        if "loss" in r:
            add(out["loss"], "all", s, r["loss"])
            for task, v in (r.get("tasks") or {}).items():
                add(out["loss"], task, s, v)
            add(out["lr"], "transformer", s, r.get("lr"))
            add(out["lr"], "cnn", s, r.get("cnn_lr"))
            add(out["grad_norm"], "transformer", s, r.get("grad_norm"))
            add(out["grad_norm"], "cnn", s, r.get("cnn_grad_norm"))
            if r.get("skipped") is not None:
                out["skipped"].append((s, r["skipped"]))
        for task, metrics in (r.get("val") or {}).items():
            for k, v in metrics.items():
                if k != "targets":
                    add(out["val"].setdefault(k, {}), task, s, v)
    return out


def task_colors(curves: dict) -> dict[str, str]:
    """One colour per task for every plot of a run (tasks sorted by name; ``all`` black)."""
    tasks = sorted({t for t in curves["loss"] if t != "all"}
                   | {t for per in curves["val"].values() for t in per})
    return {"all": "black", **{t: f"C{i % 10}" for i, t in enumerate(tasks)}}


# ----------------------------------------------------------------------------- fine-tuning

def finetune_data(folder) -> dict:
    """A fine-tuning output: ``results.json`` (runs and summary) and, per run, its
    ``metrics.jsonl`` records (keyed like the runs, by position)."""
    folder = Path(folder)
    body = read_json(folder / RESULTS_FILE)
    runs = body.get("runs") or []
    records = []
    for r in runs:
        records.append(read_records(folder / run_name(r["fold"], r["seed"]) / METRICS_FILE))
    return {"runs": runs, "summary": body.get("summary") or {}, "records": records}


def run_label(run: dict) -> str:
    return (f"fold {run['fold']} " if run["fold"] is not None else "") + f"seed {run['seed']}"


def confusions(runs: list[dict]) -> dict[str, np.ndarray]:
    """The confusion matrices of the selected models on the reported split: per fold (summed
    over its seeds), then ``all`` (summed over every run)."""
    out: dict = {}
    for r in runs:
        cm = np.asarray(r["splits"][r["report"]]["confusion"], dtype=np.int64)
        key = "all folds" if r["fold"] is None else f"fold {r['fold']}"
        out[key] = out.get(key, 0) + cm
    total = sum(out.values())
    if len(out) > 1:
        out["all folds"] = total
    return out


def recalls(summary: dict) -> dict[str, list[float]]:
    """Per-class recall of the reported split: per fold (mean over seeds) and the mean."""
    out = {("all runs" if f["fold"] is None else f"fold {f['fold']}"): f["mean"]["recall"]
           for f in summary.get("folds", [])}
    if len(out) != 1 or "all runs" not in out:
        out["mean"] = summary["mean"]["recall"]
    return out


CI_ROWS = (("t", "95 % CI (t)"), ("bootstrap", "95 % CI (fold bootstrap)"))


def intervals(summary: dict, metrics) -> dict[str, dict]:
    """The summary's 95 % intervals (``summary["ci"][metric][kind]``, memotrain.results) as
    table rows: ``{row name: {metric: [lo, hi]}}``; kinds without any interval (one run) are
    left out."""
    ci = summary.get("ci") or {}
    out = {}
    for kind, name in CI_ROWS:
        row = {m: ci[m][kind] for m in metrics if ci.get(m, {}).get(kind) is not None}
        if row:
            out[name] = row
    return out


def results_rows(summary: dict, metrics) -> tuple[list[str], list[list[str]]]:
    """The results table (percentages): a row per fold, the mean, the std, the intervals the
    summary holds, a row per modality ablation."""
    labels = summary["labels"]
    ivs = intervals(summary, metrics)
    head = ["", "runs", *metrics, *(f"recall {n}" for n in labels)]

    def pct(x):
        return f"{100 * x:.2f}"

    def cells(m):
        return [pct(m[k]) for k in metrics] + [pct(x) for x in m["recall"]]

    rows = [[f"fold {f['fold']}" if f["fold"] is not None else "-", str(f["runs"]), *cells(f["mean"])]
            for f in summary["folds"]]
    n = str(summary["n_runs"])
    rows.append(["mean", n, *cells(summary["mean"])])
    rows.append(["std", n, *cells(summary["std"])])
    for name, iv in ivs.items():
        rows.append([name, n, *(f"{pct(iv[k][0])} - {pct(iv[k][1])}" if k in iv else ""
                                for k in metrics), *([""] * len(labels))])
    for key, ab in summary.get("ablations", {}).items():
        rows.append([f"{key} only", str(ab["runs"]), *cells(ab["mean"])])
    return head, rows


def val_curves(data: dict, metric: str) -> dict[str, dict]:
    """Per run (``fold 1 seed 0``): the validation curve of ``metric``, the training loss
    curve and the selected step."""
    out = {}
    for run, records in zip(data["runs"], data["records"]):
        out[run_label(run)] = {
            "val": [(r["step"], r["val"][metric]) for r in records if metric in r.get("val", {})],
            "loss": [(r["step"], r["loss"]) for r in records if "loss" in r],
            "selected": run["step"]}
    return out
