"""Evaluation metrics: checked against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import classification_metrics, evaluate_predictions


def _onehot(preds, n):
    out = np.full((len(preds), n), 0.05 / (n - 1))
    out[np.arange(len(preds)), preds] = 0.95
    return out


def test_metrics_match_sklearn_and_hand_counts():
    from sklearn.metrics import f1_score, precision_score, recall_score

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    p = np.array([0, 1, 0, 1, 1, 2, 0, 2, 2, 2])
    m = classification_metrics(y, _onehot(p, 3), ["a", "b", "c"], top_k=2)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert m["per_class"]["a"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                   "f1": pytest.approx(2 / 3), "support": 3}
    for avg in ("macro", "weighted"):
        assert m[avg]["precision"] == pytest.approx(precision_score(y, p, average=avg))
        assert m[avg]["recall"] == pytest.approx(recall_score(y, p, average=avg))
        assert m[avg]["f1"] == pytest.approx(f1_score(y, p, average=avg))
    assert m["top2_accuracy"] >= m["accuracy"]
    assert m["loss"] == pytest.approx(-np.mean(np.log(np.where(p == y, 0.95, 0.025))))


def test_baseline_and_misclassified_files():
    y = np.array([0, 1, 1, 1])
    probs = _onehot(np.array([0, 0, 1, 1]), 2)
    ev = evaluate_predictions(y, probs, ["cat", "dog"], train_labels=np.array([1, 1, 0]), paths=["a", "b", "c", "d"])
    assert ev.baseline["accuracy"] == pytest.approx(0.75)  # majority class "dog" from the training labels
    assert ev.misclassified == [{"path": "b", "true": "dog", "predicted": "cat", "confidence": pytest.approx(0.95)}]
    table = ev.table()
    accuracy_row = next(line for line in table.splitlines() if line.startswith("accuracy"))
    assert accuracy_row.split() == ["accuracy", "0.7500", "0.7500", "+0.0000"]
