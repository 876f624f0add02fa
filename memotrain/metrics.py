"""Emotion-recognition metrics from a confusion matrix (no torch, no scikit-learn).

- WA (weighted accuracy): plain accuracy, correct / all.
- UA (unweighted accuracy): the mean of the per-class recalls over the classes present in the
  reference labels (a class absent from the references has no recall and is left out; a class
  absent from the *predictions* counts with recall 0).
- F1 per class, macro F1 (mean over the classes present in the references) and WF1 (F1
  weighted by each class's support). A class never predicted has precision 0 (not NaN).
"""
from __future__ import annotations

import numpy as np


def confusion(labels, preds, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = reference label, column = prediction."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.shape[0]} labels but {preds.shape[0]} predictions")
    bad = (labels < 0) | (labels >= n_classes) | (preds < 0) | (preds >= n_classes)
    if bad.any():
        raise ValueError(f"labels / predictions outside 0..{n_classes - 1}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def scores(cm: np.ndarray) -> dict:
    """WA, UA, F1 (macro), WF1, and per class recall / precision / F1 / support."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = support.sum()
    return {
        "WA": float(tp.sum() / total) if total else 0.0,
        "UA": float(recall[present].mean()) if present.any() else 0.0,
        "F1": float(f1[present].mean()) if present.any() else 0.0,
        "WF1": float((f1 * support).sum() / total) if total else 0.0,
        "recall": recall.tolist(), "precision": precision.tolist(), "f1": f1.tolist(),
        "support": support.astype(int).tolist(),
    }


def evaluate(labels, preds, n_classes: int) -> dict:
    """:func:`scores` of the predictions, with the confusion matrix (as lists)."""
    cm = confusion(labels, preds, n_classes)
    return {**scores(cm), "confusion": cm.tolist()}
