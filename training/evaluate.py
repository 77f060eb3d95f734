"""Evaluation on the test split: loss, accuracy, top-k, per-class and averaged precision/recall/F1,
the confusion matrix, misclassified files, learning curves, and comparisons with baselines.

The pictures (confusion matrix, learning curves) come from :mod:`training.visualize.drawing`, imported when
they are drawn."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.files import write_json_atomic
from training.tables import format_table

EPS = 1e-7


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], top_k: int = 3
) -> dict[str, Any]:
    """All metrics of one set of predictions.

    Args:
        labels: true class indices, shape (N,).
        probabilities: predicted probabilities, shape (N, C).
        class_names: the C labels.
        top_k: k for top-k accuracy (reported when C > k).

    Returns:
        ``{"loss", "accuracy", "top{k}_accuracy"?, "macro": {...}, "weighted": {...},
        "per_class": {label: {precision, recall, f1, support}}, "confusion_matrix": [[...]], "count"}``.
    """
    from edge.evaluate import classification_metrics as count_metrics

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = len(class_names)
    preds = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, np.int64)
    # The same counting code runs on the device (shipyard-edge eval), so both sides report identical numbers.
    counted = count_metrics(labels, preds, class_names)
    out: dict[str, Any] = {
        "count": len(labels),
        "loss": float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], EPS, 1.0))))
        if len(labels)
        else 0.0,
        "accuracy": counted["accuracy"],
    }
    if n_classes > top_k:
        topk = np.argsort(-probabilities, axis=1)[:, :top_k]
        out[f"top{top_k}_accuracy"] = float(
            np.mean([lab in row for lab, row in zip(labels, topk, strict=True)])
        )
    out["macro"] = counted["macro"]
    out["weighted"] = counted["weighted"]
    out["per_class"] = {
        row["label"]: {k: row[k] for k in ("precision", "recall", "f1", "support")}
        for row in counted["per_class"]
    }
    out["confusion_matrix"] = counted["confusion"]
    return out


def majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Probabilities (one-hot) of always predicting the most frequent training class."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    probs = np.zeros((len(test_labels), num_classes))
    probs[:, int(counts.argmax())] = 1.0
    return probs


def predict_dataset(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Run a Keras model over a batched ``(images, labels)`` dataset; return (probabilities, labels)."""
    probs, labels = [], []
    for images, y in dataset:
        probs.append(model(images, training=False).numpy())
        labels.append(y.numpy())
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probs).astype(np.float32), np.concatenate(labels).astype(np.int64)


@dataclass
class Evaluation:
    """The result of evaluating one model on one split."""

    metrics: dict[str, Any]
    baseline: dict[str, Any]
    labels: list[str]
    misclassified: list[dict[str, Any]] = field(default_factory=list)
    compared: dict[str, Any] | None = None
    compared_name: str | None = None

    def summary(self) -> dict[str, float]:
        """The headline numbers (for the manifest and ``models list``)."""
        m = self.metrics
        keys = {k: v for k, v in m.items() if isinstance(v, float)}
        keys["macro_f1"] = m["macro"]["f1"]
        keys["weighted_f1"] = m["weighted"]["f1"]
        keys["macro_precision"] = m["macro"]["precision"]
        keys["macro_recall"] = m["macro"]["recall"]
        keys["test_count"] = m["count"]
        return keys

    def table(self) -> str:
        """Side-by-side table of this model, the majority baseline and (optionally) another package."""
        heads = ["metric", "model", "majority baseline", "diff"]
        if self.compared is not None:
            heads += [self.compared_name or "other", "model - other"]
        rows = []
        for key in _metric_keys(self.metrics):
            mine = _get(self.metrics, key)
            base = _get(self.baseline, key)
            row = [key, f"{mine:.4f}", f"{base:.4f}", f"{mine - base:+.4f}"]
            if self.compared is not None:
                other = _get(self.compared, key)
                row += ["n/a", "n/a"] if other is None else [f"{other:.4f}", f"{mine - other:+.4f}"]
            rows.append(row)
        per_class = [
            [name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
            for name, v in self.metrics["per_class"].items()
        ]
        return (
            format_table(heads, rows)
            + "\n\n"
            + format_table(["class", "precision", "recall", "f1", "support"], per_class)
        )


def _metric_keys(metrics: dict[str, Any]) -> list[str]:
    keys = ["accuracy"] + [k for k in metrics if k.startswith("top")] + ["loss"]
    return [*keys, "macro.precision", "macro.recall", "macro.f1", "weighted.f1"]


def _get(metrics: dict[str, Any], key: str) -> float | None:
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node)


def evaluate_predictions(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    train_labels: np.ndarray,
    paths: list[str] | None = None,
    top_k: int = 3,
) -> Evaluation:
    """Metrics of a model's predictions, with the majority-class baseline and the misclassified files."""
    metrics = classification_metrics(labels, probabilities, class_names, top_k)
    base_probs = majority_baseline(train_labels, labels, len(class_names))
    baseline = classification_metrics(labels, base_probs, class_names, top_k)
    wrong = []
    preds = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, np.int64)
    for i in np.flatnonzero(preds != labels):
        wrong.append(
            {
                "path": paths[i] if paths else str(i),
                "true": class_names[int(labels[i])],
                "predicted": class_names[int(preds[i])],
                "confidence": float(probabilities[i, preds[i]]),
            }
        )
    return Evaluation(metrics=metrics, baseline=baseline, labels=class_names, misclassified=wrong)


def write_evaluation(
    eval_dir: Path, evaluation: Evaluation, history: dict[str, list[float]] | None = None
) -> list[Path]:
    """Write metrics.json, confusion_matrix.json/.png, per_class.csv, misclassified.json, learning_curves.png.

    The pictures are drawn by :mod:`training.visualize.drawing` (the same drawers as ``plots/``).
    """
    from training.visualize.common import PlotSkipped
    from training.visualize.drawing import plot_confusion_matrix, plot_learning_curves

    eval_dir.mkdir(parents=True, exist_ok=True)
    payload = {"metrics": evaluation.metrics, "majority_baseline": evaluation.baseline}
    if evaluation.compared is not None:
        payload["compared"] = {"name": evaluation.compared_name, "metrics": evaluation.compared}
    matrix = {"labels": evaluation.labels, "matrix": evaluation.metrics["confusion_matrix"]}
    written = [
        write_json_atomic(eval_dir / "metrics.json", payload),
        write_json_atomic(eval_dir / "confusion_matrix.json", matrix),
        write_json_atomic(eval_dir / "misclassified.json", evaluation.misclassified),
    ]
    lines = ["class,precision,recall,f1,support"]
    for name, v in evaluation.metrics["per_class"].items():
        lines.append(f"{name},{v['precision']:.6f},{v['recall']:.6f},{v['f1']:.6f},{v['support']}")
    (eval_dir / "per_class.csv").write_text("\n".join(lines) + "\n")
    written.append(eval_dir / "per_class.csv")
    plot_confusion_matrix(
        evaluation.metrics["confusion_matrix"], evaluation.labels, eval_dir / "confusion_matrix.png"
    )
    written.append(eval_dir / "confusion_matrix.png")
    if history:
        with contextlib.suppress(PlotSkipped):  # a history without any curve to draw
            plot_learning_curves(history, eval_dir / "learning_curves.png")
            written.append(eval_dir / "learning_curves.png")
    return written
