"""Confidence intervals and paired comparisons of fine-tuning results, against scipy and
values computed by hand; ``memo results show`` / ``compare`` on generated result folders
written in the layout ``memo train finetune`` produces."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as st

from memo.cli import main
from memotrain import metrics as M
from memotrain import results as R
from memotrain.stats import fold_bootstrap, mean_ci, paired_comparison, t_interval

LABELS = ["angry", "happy", "neutral", "sad"]
PROTOCOL = {"name": "iemocap-10fold", "version": 1, "hash": "0123456789ab",
            "label_map": "iemocap-4class", "classes": LABELS,
            "folds": list(range(1, 11))}


def test_t_interval_is_scipys():
    v = [0.80, 0.83, 0.78, 0.81, 0.79, 0.84]
    want = st.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=st.sem(v))
    assert t_interval(v) == pytest.approx(list(want))
    # by hand: t(0.975, 2) = 4.302653
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (hi - lo) / 2 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)
    assert t_interval([0.5]) is None


def test_fold_bootstrap_resamples_whole_folds():
    folds = [1, 1, 2, 2, 3, 3, 4]
    v = np.array([0.7, 0.72, 0.8, 0.78, 0.6, 0.66, 0.9])
    rng = np.random.default_rng(0)
    draws = rng.integers(0, 4, size=(10_000, 4))
    groups = [v[[i for i, f in enumerate(folds) if f == k]] for k in (1, 2, 3, 4)]
    means = [np.concatenate([groups[j] for j in row]).mean() for row in draws]
    want = np.quantile(means, [0.025, 0.975])
    assert fold_bootstrap(v, folds) == pytest.approx(list(want))
    assert fold_bootstrap(v, [1] * 7) is None  # one fold: nothing to resample
    lo, hi = fold_bootstrap(v, folds)
    assert lo <= v.mean() <= hi
    ci = mean_ci(v, folds)
    assert ci["n"] == 7 and ci["folds"] == 4 and ci["mean"] == pytest.approx(v.mean())


def test_paired_comparison_against_scipy_and_by_hand():
    a = np.array([0.81, 0.79, 0.84, 0.80, 0.77, 0.83])
    b = np.array([0.78, 0.80, 0.80, 0.76, 0.77, 0.79])
    folds = [1, 1, 2, 2, 3, 3]
    c = paired_comparison(a, b, folds)
    d = a - b
    assert c.n == 6 and c.folds == 3 and c.diff == pytest.approx(d.mean())
    assert c.mean_a - c.mean_b == pytest.approx(c.diff)
    assert c.t == pytest.approx(t_interval(d))
    assert c.wilcoxon_p == pytest.approx(st.wilcoxon(a, b).pvalue)
    # 2^6 sign flips: the exact two-sided permutation p-value, enumerated by hand
    flips = [abs(np.mean(d * np.array(s))) >= abs(d.mean()) - 1e-12
             for s in itertools.product((1, -1), repeat=len(d))]
    assert c.permutation_p == pytest.approx(np.mean(flips))
    same = paired_comparison(a, a, folds)
    assert same.diff == 0 and same.wilcoxon_p == 1.0 and same.permutation_p == 1.0
    with pytest.raises(ValueError, match="equal"):
        paired_comparison(a, b[:3], folds)


# -- result folders as memo train finetune writes them --------------------------------------

def run(fold, seed, ua_shift=0.0, protocol=PROTOCOL):
    """One run's result.json: scores of generated predictions (accuracy grows with the fold,
    the seed and ``ua_shift``)."""
    rng = np.random.default_rng(100 * fold + seed)
    labels = rng.integers(0, 4, size=200)
    right = rng.random(200) < 0.55 + 0.02 * fold + 0.01 * seed + ua_shift
    preds = np.where(right, labels, (labels + 1) % 4)
    brief = M.evaluate(labels, preds, 4)
    return {"fold": fold, "seed": seed, "step": 10, "steps": 20, "early_stopped": False,
            "metric": "UA", "labels": LABELS, "head": "emocls", "modalities": ["text"],
            "skipped": 0, "protocol": None if protocol is None else {**protocol, "fold": fold},
            "splits": {"val": brief, "test": brief}, "ablations": {}, "report": "test"}


def write_folder(path, folds=range(1, 11), seeds=(0, 1, 2), **kw):
    runs = [run(f, s, **kw) for f in folds for s in seeds]
    path.mkdir(parents=True)
    R.write(path, runs, R.aggregate(runs))
    return runs


def test_summary_intervals_and_the_paper_line(tmp_path):
    runs = write_folder(tmp_path / "a")
    s = R.load_results(tmp_path / "a")["summary"]
    ua = [r["splits"]["test"]["UA"] for r in runs]
    assert s["ci"]["UA"]["t"] == pytest.approx(t_interval(ua))
    assert s["ci"]["UA"]["bootstrap"] == pytest.approx(fold_bootstrap(ua, [r["fold"] for r in
                                                                           runs]))
    assert s["n_folds"] == 10 and s["seeds"] == [0, 1, 2] and s["selection_metric"] == "UA"
    assert s["protocol"] == {k: PROTOCOL[k] for k in ("name", "version", "hash", "label_map")}
    half = 100 * (s["ci"]["UA"]["t"][1] - s["ci"]["UA"]["t"][0]) / 2
    assert R.report_line(s, "UA") == (f"UA {100 * np.mean(ua):.1f} ± {half:.1f} (95 % CI, "
                                      "10 folds x 3 seeds, iemocap-10fold@0123456789ab)")
    one = R.aggregate([run(1, 0)])
    assert R.report_line(one, "WA").startswith("WA ") and "one run, no interval" in \
        R.report_line(one, "WA")
    mixed = R.aggregate([run(1, 0), run(2, 0, protocol={**PROTOCOL, "hash": "ffffffffffff"})])
    assert mixed["protocol"] is None and "no protocol recorded" in R.report_line(mixed)


def test_cli_results_show(tmp_path):
    write_folder(tmp_path / "a", folds=(1, 2), seeds=(0, 1))
    r = CliRunner().invoke(main, ["results", "show", str(tmp_path / "a"), "--metric", "WF1"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == ("4 run(s) (2 folds x 2 seeds), test split, selected on val UA, "
                        "protocol iemocap-10fold v1 hash 0123456789ab")
    assert lines[2].startswith("  UA ") and "95 % CI t [" in lines[2] \
        and "fold bootstrap [" in lines[2]
    assert lines[-1].startswith("WF1 ") and lines[-1].endswith(
        "(95 % CI, 2 folds x 2 seeds, iemocap-10fold@0123456789ab)")
    bad = CliRunner().invoke(main, ["results", "show", str(tmp_path)])
    assert bad.exit_code == 1 and "not a fine-tuning results file" in bad.output


def test_cli_results_compare(tmp_path):
    a = write_folder(tmp_path / "a", folds=(1, 2, 3), seeds=(0, 1), ua_shift=0.1)
    b = write_folder(tmp_path / "b", folds=(1, 2, 3), seeds=(0, 1))
    r = CliRunner().invoke(main, ["results", "compare", str(tmp_path / "a"),
                                  str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    diff = np.mean([x["splits"]["test"]["UA"] - y["splits"]["test"]["UA"] for x, y in
                    zip(a, b)])
    assert r.output.splitlines()[0] == ("6 paired runs (3 folds), test UA, "
                                        "iemocap-10fold@0123456789ab")
    assert f"A - B: {100 * diff:+.2f} points, 95 % CI t [" in r.output
    assert "Wilcoxon signed-rank p = " in r.output and "permutation p = " in r.output
    js = CliRunner().invoke(main, ["results", "compare", str(tmp_path / "a"),
                                   str(tmp_path / "b"), "--json", "--metric", "WA"])
    c = json.loads(js.output)
    assert c["metric"] == "WA" and c["n"] == 6 and [p["fold"] for p in c["pairs"]] == \
        [1, 1, 2, 2, 3, 3]
    assert c["wilcoxon_p"] == pytest.approx(st.wilcoxon([p["a"] for p in c["pairs"]],
                                                        [p["b"] for p in c["pairs"]]).pvalue)


def test_compare_refuses_other_protocols_and_unpaired_runs(tmp_path):
    write_folder(tmp_path / "a", folds=(1, 2), seeds=(0,))
    write_folder(tmp_path / "other", folds=(1, 2), seeds=(0,),
                 protocol={**PROTOCOL, "hash": "ffffffffffff"})
    write_folder(tmp_path / "none", folds=(1, 2), seeds=(0,), protocol=None)
    write_folder(tmp_path / "fewer", folds=(1,), seeds=(0,))

    def compare(x, y):
        return CliRunner().invoke(main, ["results", "compare", str(tmp_path / x),
                                         str(tmp_path / y)])

    r = compare("a", "other")
    assert r.exit_code == 1
    assert "different protocols" in r.output and "iemocap-10fold@0123456789ab" in r.output \
        and "iemocap-10fold@ffffffffffff" in r.output and "cannot be paired" in r.output
    r = compare("a", "none")
    assert r.exit_code == 1 and "record no common protocol" in r.output
    r = compare("a", "fewer")
    assert r.exit_code == 1 and "1 run(s) the other folder lacks (e.g. fold 2 seed 0)" in \
        r.output
    c = R.compare(tmp_path / "none", tmp_path / "none", require_protocol=False)
    assert c["diff"] == 0 and c["protocol"] is None
