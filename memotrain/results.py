"""Fine-tuning results across folds and seeds: the aggregate, its files and its table.

Each run reports the split it was asked to (``test`` when the config has a test db, else
``val``) at the step selected on validation. :func:`aggregate` gives, per fold, the mean over
seeds, and over every run the mean and the standard deviation (sample std, ``ddof=1``; 0 for a
single run) of WA, UA, WF1, F1 and each class's recall, plus the same for every
``eval_modalities`` ablation. :func:`write` saves ``results.json`` (runs + summary) and
``results.tsv`` (one row per run, per-fold means, mean, std: paste it into a spreadsheet);
:class:`Console` prints the progress lines and the rich table (percentages).

For a reader of the figures, the summary also holds per metric the 95 % confidence interval
of the mean (``ci``: t over all runs, and a bootstrap over folds; :mod:`memotrain.stats`), the
folds and seeds, and the evaluation protocol (name, version, hash) the text databases were
built by. :func:`report_line` writes the sentence for a paper; :func:`compare` pairs two
result folders run by run. Both work on finished folders without torch::

    from memotrain.results import compare, load_results, report_line
    print(report_line(load_results("runs/ft")["summary"], "UA"))
    print("\n".join(format_comparison(compare("runs/prompt", "runs/ft", "UA"))))
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memodb.dataset.protocols import PROTOCOLS
from memodb.errors import MemoError
from memodb.store.manifest import write_json_atomic
from memotrain.stats import mean_ci, paired_comparison

METRICS = ("WA", "UA", "WF1", "F1")
RESULTS_FILE = "results.json"


class ResultsError(MemoError):
    """A results folder that cannot be read or compared."""


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
    fold_of = [r["fold"] for r in runs]
    ci = {k: {c: v for c, v in mean_ci([row[k] for row in rows], fold_of).items()
              if c in ("t", "bootstrap")} for k in METRICS}
    return {"split": split, "labels": runs[0]["labels"], "n_runs": len(runs),
            "n_folds": len(folds), "seeds": sorted(set(r["seed"] for r in runs)),
            "selection_metric": runs[0]["metric"], "protocol": common_protocol(runs),
            "folds": folds, "mean": mean, "std": std, "ci": ci, "val_mean": val_mean,
            "ablations": ablations}


def common_protocol(runs: list[dict]) -> dict | None:
    """The protocol record (name, version, hash, label map) every run was evaluated under;
    None when a run has none or the runs disagree."""
    keys = ("name", "version", "hash", "label_map")
    recs = [{k: (r.get("protocol") or {}).get(k) for k in keys} for r in runs]
    first = recs[0]
    return first if first["hash"] and all(r == first for r in recs) else None


def protocol_tag(protocol: dict | None) -> str:
    """``iemocap-10fold@1a2b3c4d5e6f`` (the label map added when not the protocol's own)."""
    if not protocol:
        return "no protocol recorded"
    named = PROTOCOLS.get(protocol["name"])
    own = named is not None and protocol.get("label_map") == named.label_map
    return protocol["name"] + ("" if own else f"+{protocol.get('label_map')}") \
        + f"@{protocol['hash']}"


def _runs_phrase(summary: dict) -> str:
    folds = summary["folds"]
    per = {f["runs"] for f in folds}
    if len(per) == 1 and len(summary["seeds"]) == per.pop():
        return f"{len(folds)} fold{'s' * (len(folds) != 1)} x {len(summary['seeds'])} " \
               f"seed{'s' * (len(summary['seeds']) != 1)}"
    return f"{summary['n_runs']} runs over {len(folds)} fold{'s' * (len(folds) != 1)}"


def report_line(summary: dict, metric: str = "UA") -> str:
    """The sentence for a paper: ``UA 80.8 ± 0.9 (95 % CI, 10 folds x 3 seeds,
    iemocap-10fold@<hash>)`` (percent; ± the half width of the t interval over all runs)."""
    mean, t = 100 * summary["mean"][metric], summary["ci"][metric]["t"]
    where = f"{_runs_phrase(summary)}, {protocol_tag(summary.get('protocol'))}"
    if t is None:
        return f"{metric} {mean:.1f} (one run, no interval; {where})"
    return f"{metric} {mean:.1f} ± {100 * (t[1] - t[0]) / 2:.1f} (95 % CI, {where})"


def summary_lines(summary: dict) -> list[str]:
    """What ``memo train finetune`` and ``memo results show`` print: the runs, the split,
    the selection metric and the protocol, then per metric the mean with both intervals, then
    the paper line of the selection metric."""
    def interval(ci):
        return "-" if ci is None else f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"

    p = summary.get("protocol")
    lines = [f"{summary['n_runs']} run(s) ({_runs_phrase(summary)}), {summary['split']} split, "
             f"selected on val {summary['selection_metric']}, protocol "
             + (f"{p['name']} v{p['version']} hash {p['hash']}" if p else "none recorded")]
    for k in METRICS:
        ci = summary["ci"][k]
        lines.append(f"  {k:<4} {100 * summary['mean'][k]:6.2f}  95 % CI t {interval(ci['t'])}"
                     f"  fold bootstrap {interval(ci['bootstrap'])}")
    lines.append(report_line(summary, summary["selection_metric"]))
    return lines


def load_results(folder) -> dict:
    """``{"runs", "summary"}`` of a fine-tuning output folder (its ``results.json``)."""
    path = Path(folder) / RESULTS_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(body, dict) and isinstance(body.get("runs"), list)
    except (OSError, ValueError, AssertionError) as exc:
        raise ResultsError(f"{path}: not a fine-tuning results file ({exc or 'no runs list'}); "
                           "give the output_dir of memo train finetune") from None
    if not body["runs"]:
        raise ResultsError(f"{path}: no finished run")
    return body


def compare(a, b, metric: str = "UA", *, require_protocol: bool = True) -> dict:
    """Pair the runs of two fine-tuning folders (same fold, same seed) and compare ``metric``
    on the split both report: :func:`memotrain.stats.paired_comparison` of ``a - b``. Both
    folders must hold the same runs on the same split, with the same protocol hash (with
    ``require_protocol``, a folder without a protocol is refused too): otherwise the
    differences would compare different test sets. Returns ``{"a", "b", "metric", "split",
    "protocol", "pairs": [{"fold", "seed", "a", "b"}], **comparison}``."""
    if metric not in METRICS:
        raise ResultsError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    ra, rb = load_results(a), load_results(b)
    pa, pb = common_protocol(ra["runs"]), common_protocol(rb["runs"])
    for folder, p in ((a, pa), (b, pb)):
        if p is None and require_protocol:
            raise ResultsError(f"{folder}: its runs record no common protocol (text "
                               "databases built without \"protocol\", or from several "
                               "builds); compare only results of one named protocol: rebuild "
                               "with a protocol and fine-tune again")
    if pa != pb and (pa or pb):
        raise ResultsError(f"the folders were evaluated under different protocols: {a} "
                           f"{protocol_tag(pa)}, {b} {protocol_tag(pb)}; their test sets "
                           "differ, so their runs cannot be paired")
    split = {ra["runs"][0]["report"], rb["runs"][0]["report"]}
    if len(split) != 1:
        raise ResultsError(f"{a} reports {ra['runs'][0]['report']}, {b} "
                           f"{rb['runs'][0]['report']}: compare results on the same split")
    split = split.pop()
    ka = {(r["fold"], r["seed"]): r["splits"][split][metric] for r in ra["runs"]}
    kb = {(r["fold"], r["seed"]): r["splits"][split][metric] for r in rb["runs"]}
    for x, y, fx in ((ka, kb, a), (kb, ka, b)):
        only = sorted(set(x) - set(y), key=str)
        if only:
            raise ResultsError(f"{fx} has {len(only)} run(s) the other folder lacks (e.g. fold "
                               f"{only[0][0]} seed {only[0][1]}); run the same folds and "
                               "seeds in both")
    keys = list(ka)
    c = paired_comparison([ka[k] for k in keys], [kb[k] for k in keys], [k[0] for k in keys])
    return {"a": str(a), "b": str(b), "metric": metric, "split": split, "protocol": pa,
            "pairs": [{"fold": k[0], "seed": k[1], "a": ka[k], "b": kb[k]} for k in keys],
            **c.to_dict()}


def format_comparison(c: dict) -> list[str]:
    """The lines ``memo results compare`` prints (percentage points)."""
    def interval(ci):
        return "-" if ci is None else f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"

    def p(x):
        return "-" if x is None else f"{x:.4g}"

    m = c["metric"]
    return [f"{c['n']} paired runs ({c['folds']} folds), {c['split']} {m}, "
            f"{protocol_tag(c['protocol'])}",
            f"  A {c['a']}: {100 * c['mean_a']:.2f}",
            f"  B {c['b']}: {100 * c['mean_b']:.2f}",
            f"  A - B: {100 * c['diff']:+.2f} points, 95 % CI t {interval(c['t'])}, fold "
            f"bootstrap {interval(c['bootstrap'])}",
            f"  Wilcoxon signed-rank p = {p(c['wilcoxon_p'])}, permutation p = "
            f"{p(c['permutation_p'])} (two-sided)"]


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
            half = [_pct((c["t"][1] - c["t"][0]) / 2) for c in (summary["ci"][k] for k in METRICS)]
            t.add_row("95 % CI ±", str(n), *half, *[""] * len(labels))
        for key, ab in summary["ablations"].items():
            t.add_row(f"{key} only", str(ab["runs"]), *cells(ab["mean"]))
        self.c.print(t)
