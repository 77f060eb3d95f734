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


def test_cross_validation_verb_reports_mean_and_spread_over_stratified_folds(small_demo_dir, tmp_path):
    import json
    from pathlib import Path

    from _support import TINY_TRAIN, run_cli

    from edge.manifest import read_manifest
    from training.config import DataConfig
    from training.data import scan_dataset

    config = tmp_path / "cv.yaml"
    config.write_text("model:\n  name: cv-tiny\n")
    sets = [a for kv in [*TINY_TRAIN, "train.epochs=2", "train.version=v1"] for a in ("--set", kv)]
    res = run_cli("evaluate", "--folds", "2", str(config), str(small_demo_dir), "--output", str(tmp_path / "runs"),
                  "--quiet", *sets)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = Path(res.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / "runs" / "cv-tiny" / "cv-v1"
    saved = json.loads((folder / "crossval.json").read_text())
    assert saved["k"] == 2 and len(saved["packages"]) == 2
    accuracy = saved["metrics"]["accuracy"]
    assert accuracy["values"] == [f["accuracy"] for f in saved["folds"]]
    assert accuracy["mean"] == pytest.approx(np.mean(accuracy["values"]))
    assert accuracy["std"] == pytest.approx(np.std(accuracy["values"]))
    assert accuracy["mean"] > 0.5  # three classes: well above chance
    table = res.stdout.splitlines()
    assert table[0].split() == ["metric", "fold", "1", "fold", "2", "mean", "std"]
    assert next(line for line in table if line.startswith("accuracy")).split()[-2:] == [
        f"{accuracy['mean']:.4f}", f"{accuracy['std']:.4f}"
    ]
    # each fold is scored on its held-out fold: together they are the train+val images, each once, per class
    scan = scan_dataset(small_demo_dir, DataConfig(path=small_demo_dir))
    pool = len(scan.splits["train"]) + len(scan.splits["val"])
    manifests = [read_manifest(p) for p in saved["packages"]]
    assert [m.metrics["evaluated_on"] for m in manifests] == ["val", "val"]
    assert sum(m.dataset.split_counts["val"] for m in manifests) == pool
    for label in manifests[0].labels:
        per_fold = [m.dataset.class_counts["val"][label] for m in manifests]
        assert abs(per_fold[0] - per_fold[1]) <= 1  # stratified


def test_cross_validation_needs_two_folds(tmp_path):
    from _support import run_cli

    config = tmp_path / "cv.yaml"
    config.write_text("model:\n  name: cv-tiny\n")
    res = run_cli("evaluate", "--folds", "1", str(config))
    assert res.returncode == 2 and "at least 2 folds" in res.stderr
