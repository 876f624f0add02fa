"""Fine-tuning results across folds and seeds: the aggregate, its files and its table.

Each run reports the split it was asked to (``test`` when the config has a test db, else
``val``) at the step selected on validation. :func:`aggregate` gives, per fold, the mean over
seeds, and over every run the mean and the standard deviation (sample std, ``ddof=1``; 0 for a
single run) of WA, UA, WF1, F1 and each class's recall, plus the same for every
``eval_modalities`` ablation. :func:`write` saves ``results.json`` (runs + summary) and
``results.tsv`` (one row per run, per-fold means, mean, std: paste it into a spreadsheet);
:class:`Console` prints the progress lines and the rich table (percentages).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from memodb.store.manifest import write_json_atomic

METRICS = ("WA", "UA", "WF1", "F1")


def _stats(rows: list[dict]) -> tuple[dict, dict]:
    """Mean and std over ``rows`` (metric dicts) of METRICS and per-class ``recall``."""
    mean, std = {}, {}
    for k in METRICS:
        v = np.array([r[k] for r in rows], dtype=float)
        mean[k], std[k] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
    rec = np.array([r["recall"] for r in rows], dtype=float)
    mean["recall"] = rec.mean(0).tolist()
    std["recall"] = (rec.std(0, ddof=1) if len(rec) > 1 else np.zeros(rec.shape[1])).tolist()
    return mean, std


def aggregate(runs: list[dict]) -> dict:
    """The summary of finished runs (see the module doc)."""
    if not runs:
        return {}
    split = runs[0]["report"]
    rows = [r["splits"][split] for r in runs]
    folds = []
    for fold in dict.fromkeys(r["fold"] for r in runs):
        mine = [r["splits"][split] for r in runs if r["fold"] == fold]
        mean, std = _stats(mine)
        folds.append({"fold": fold, "runs": len(mine), "mean": mean, "std": std})
    mean, std = _stats(rows)
    val_mean, _ = _stats([r["splits"]["val"] for r in runs])
    ablations = {}
    for key in dict.fromkeys(k for r in runs for k in r.get("ablations", {})):
        ab = [r["ablations"][key][split] for r in runs if key in r.get("ablations", {})]
        m, s = _stats(ab)
        ablations[key] = {"mean": m, "std": s, "runs": len(ab)}
    return {"split": split, "labels": runs[0]["labels"], "n_runs": len(runs),
            "selection_metric": runs[0]["metric"], "folds": folds, "mean": mean, "std": std,
            "val_mean": val_mean, "ablations": ablations}


def write(out: Path, runs: list[dict], summary: dict) -> None:
    """``results.json`` and ``results.tsv`` in ``out`` (atomically)."""
    write_json_atomic(Path(out) / "results.json", {"runs": runs, "summary": summary}, indent=1)
    if not runs:
        return
    split, labels = summary["split"], summary["labels"]
    head = ["fold", "seed", "split", "step", *METRICS, *(f"recall_{n}" for n in labels)]
    lines = ["\t".join(head)]

    def row(fold, seed, step, m):
        cells = [fold, seed, split, step, *(f"{m[k]:.4f}" for k in METRICS),
                 *(f"{x:.4f}" for x in m["recall"])]
        lines.append("\t".join("" if c is None else str(c) for c in cells))

    for r in runs:
        row(r["fold"], r["seed"], r["step"], r["splits"][split])
    if any(f["runs"] > 1 for f in summary["folds"]) and len(summary["folds"]) > 1:
        for f in summary["folds"]:
            row(f["fold"], "mean", None, f["mean"])
    row("all", "mean", None, summary["mean"])
    row("all", "std", None, summary["std"])
    write_json_atomic(Path(out) / "results.tsv", "\n".join(lines) + "\n")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


class Console:
    """Progress lines and the results table on stderr (rich)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            import sys

            from rich.console import Console as RichConsole

            # a log file gets the whole table, not one cut to 80 columns
            self.c = RichConsole(stderr=True, highlight=False,
                                 width=None if sys.stderr.isatty() else 160)

    def _print(self, x):
        if self.enabled:
            self.c.print(x)

    def start_run(self, fold, seed, n_train, n_val, total, mods, head, device, precision):
        where = f"fold {fold} " if fold is not None else ""
        self._print(f"[bold]finetune[/] {where}seed {seed}: {n_train} train / {n_val} val "
                    f"examples, {total} updates, head {head}, {'+'.join(mods)}, {precision} "
                    f"on {device}")

    def log(self, rec, total):
        self._print(f"  step [cyan]{rec['step']}[/]/{total} loss {rec['loss']:.4f} "
                    f"lr {rec['lr']:.2e}" + (f" [red]skipped {rec['skipped']}[/]"
                                             if rec["skipped"] else ""))

    def val(self, step, res, metric, improved):
        self._print(f"  val step {step}: " + " ".join(f"{k} {_pct(res[k])}" for k in METRICS)
                    + (f" [green]best {metric}[/]" if improved else ""))

    def skip(self, result):
        where = f"fold {result['fold']} " if result["fold"] is not None else ""
        self._print(f"finetune {where}seed {result['seed']}: finished before, reused")

    def done_run(self, result):
        split = result["report"]
        m = result["splits"][split]
        self._print(f"  selected step {result['step']} (of {result['steps']}"
                    + (", stopped early" if result["early_stopped"] else "") + f"): {split} "
                    + " ".join(f"{k} {_pct(m[k])}" for k in METRICS))

    def table(self, summary, metric):
        if not self.enabled or not summary:
            return
        from rich import box
        from rich.table import Table
        labels = summary["labels"]
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"{summary['split']} results (%), selected on val {metric}; "
                        f"{summary['n_runs']} run(s); class columns: recall")
        t.add_column("fold", no_wrap=True)
        t.add_column("runs", justify="right")
        for k in (*METRICS, *labels):
            t.add_column(k, justify="right", no_wrap=True)

        def cells(m):
            return [_pct(v) for v in (*(m[k] for k in METRICS), *m["recall"])]

        for f in summary["folds"]:
            t.add_row(str(f["fold"] if f["fold"] is not None else "-"), str(f["runs"]),
                      *cells(f["mean"]))
        t.add_section()
        n = summary["n_runs"]
        t.add_row("mean", str(n), *cells(summary["mean"]), style="bold")
        if n > 1:
            t.add_row("std", str(n), *cells(summary["std"]))
        for key, ab in summary["ablations"].items():
            t.add_row(f"{key} only", str(ab["runs"]), *cells(ab["mean"]))
        self.c.print(t)
