"""Emotion-recognition metrics against values computed by hand."""
import pytest

from memotrain.metrics import confusion, evaluate

# 4 classes (anger, happy, neutral, sad); class 3 is never predicted.
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
PREDS = [0, 0, 1, 1, 2, 2, 2, 2, 0, 2]


def test_confusion_rows_are_references():
    cm = confusion(LABELS, PREDS, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 3, 0], [0, 0, 1, 0]]


def test_scores_by_hand_with_a_class_absent_from_predictions():
    r = evaluate(LABELS, PREDS, 4)
    # WA: 2 + 1 + 3 + 0 correct of 10
    assert r["WA"] == pytest.approx(0.6)
    # recalls: 2/3, 1/2, 3/4, 0/1 -> UA = mean
    assert r["recall"] == pytest.approx([2 / 3, 1 / 2, 3 / 4, 0.0])
    assert r["UA"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 0) / 4)
    # precisions: 2/3, 1/2, 3/5, 0 (never predicted: 0, not NaN)
    assert r["precision"] == pytest.approx([2 / 3, 1 / 2, 3 / 5, 0.0])
    f1 = [2 / 3, 1 / 2, 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4), 0.0]
    assert r["f1"] == pytest.approx(f1)
    assert r["F1"] == pytest.approx(sum(f1) / 4)
    assert r["WF1"] == pytest.approx((3 * f1[0] + 2 * f1[1] + 4 * f1[2] + 1 * f1[3]) / 10)
    assert r["support"] == [3, 2, 4, 1]


def test_a_class_absent_from_the_references_is_left_out_of_ua_and_f1():
    r = evaluate([0, 0, 1, 1], [0, 2, 1, 1], 3)
    assert r["UA"] == pytest.approx((1 / 2 + 1) / 2)  # class 2 has no reference
    assert r["F1"] == pytest.approx((2 / 3 + 1) / 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="outside"):
        confusion([0, 4], [0, 1], 4)
    with pytest.raises(ValueError, match="predictions"):
        confusion([0, 1], [0], 4)
