"""Statistics of results over folds x seeds: the 95 % confidence interval of a mean (Student's
t over the runs, and a bootstrap that resamples whole folds), and the paired comparison of two
systems run for run (mean difference, its intervals, Wilcoxon signed-rank and sign-flip
permutation tests). Plain functions over numbers, no torch; scipy gives the distributions and
the tests. Used by :mod:`memotrain.results` and importable on their own::

    from memotrain.stats import mean_ci, paired_comparison
    mean_ci([0.80, 0.82, 0.79], folds=[1, 2, 3])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95
RESAMPLES = 10_000  # bootstrap and permutation resamples
SEED = 0  # the bootstrap and the permutation test draw from a fixed seed: same input, same CI


def t_interval(values, confidence: float = CONFIDENCE) -> list[float] | None:
    """``[low, high]``: mean ± t(1 - alpha/2, n - 1) * s / sqrt(n) over ``values`` (every run
    one value); None for fewer than two values."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    mean = float(v.mean())
    half = float(st.t.ppf((1 + confidence) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return [mean - half, mean + half]


def fold_bootstrap(values, folds, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = SEED) -> list[float] | None:
    """``[low, high]``: the percentile interval of the mean over runs when the folds are drawn
    with replacement, each drawn fold bringing all of its runs (its seeds), ``resamples``
    times; ``folds[i]`` is the fold of ``values[i]``. Seeds of one fold share their test set,
    so folds, not runs, are the independent units. None for fewer than two folds."""
    v = np.asarray(values, dtype=float)
    names = list(dict.fromkeys(folds))
    if len(names) < 2:
        return None
    pos = {f: i for i, f in enumerate(names)}
    which = np.array([pos[f] for f in folds])
    sums = np.bincount(which, weights=v, minlength=len(names))
    counts = np.bincount(which, minlength=len(names)).astype(float)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)]


def mean_ci(values, folds, confidence: float = CONFIDENCE) -> dict:
    """``{"mean", "n", "folds", "t": [low, high] | None, "bootstrap": [low, high] | None}``
    of one metric over the runs (``folds[i]``: the fold of run ``i``)."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "n": int(len(v)), "folds": len(set(folds)),
            "t": t_interval(v, confidence), "bootstrap": fold_bootstrap(v, folds, confidence)}


@dataclass
class PairedComparison:
    """Two systems compared on the same runs (same fold, same seed), ``a - b``."""
    n: int  # pairs
    folds: int
    mean_a: float
    mean_b: float
    diff: float  # mean of the differences (= mean_a - mean_b)
    t: list | None  # paired t interval of the mean difference
    bootstrap: list | None  # fold bootstrap interval of the mean difference
    wilcoxon_p: float | None  # two-sided Wilcoxon signed-rank test (None: fewer than 2 pairs)
    permutation_p: float | None  # two-sided sign-flip permutation test of the mean difference
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict:
        return asdict(self)


def paired_comparison(a, b, folds, confidence: float = CONFIDENCE,
                      resamples: int = RESAMPLES, seed: int = SEED) -> PairedComparison:
    """Compare paired scores ``a[i]`` and ``b[i]`` (the same fold ``folds[i]`` and seed):
    the mean difference, its t and fold-bootstrap intervals, the Wilcoxon signed-rank p-value
    (1.0 when every difference is 0) and the permutation p-value (the signs of the differences
    flipped at random, ``resamples`` times; every one of the 2^n flips when that is fewer)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores need two equal, non-empty lists ({a.shape}, {b.shape})")
    d = a - b
    wil = perm = None
    if len(d) >= 2:
        if np.all(d == 0):
            wil = perm = 1.0
        else:
            wil = float(st.wilcoxon(a, b).pvalue)
            perm = float(st.permutation_test(
                (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), vectorized=True,
                permutation_type="samples", n_resamples=resamples, alternative="two-sided",
                random_state=seed).pvalue)
    return PairedComparison(int(len(d)), len(set(folds)), float(a.mean()), float(b.mean()),
                            float(d.mean()), t_interval(d, confidence),
                            fold_bootstrap(d, folds, confidence, resamples, seed), wil, perm,
                            confidence)
