"""Matplotlib helpers and the drawers of the data and training pictures.

Each ``plot_*`` function writes one PNG (Agg backend) and returns the data it plotted. The evaluation
(``eval/confusion_matrix.png``, ``eval/learning_curves.png``) and the ``plots/`` folder share these drawers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.config import AugmentConfig
from training.visualize.common import PlotSkipped

DPI = 90
#: The evaluation's confusion matrix has always been drawn finer than the other pictures.
CONFUSION_DPI = 100
#: Shown on the augmentation picture when the config enables no augmentation.
DEMO_AUGMENT = AugmentConfig(horizontal_flip=True, rotation=0.05, zoom=0.1, translation=0.1, contrast=0.3)


# -------------------------------------------------------------------------------------- matplotlib


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = DPI) -> None:
    """Write ``fig`` as a PNG at ``path`` (creating its folder) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def colors(n: int) -> list:
    """``n`` distinct colours (tab10, or tab20 beyond ten)."""
    cmap = pyplot().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def mosaic(
    tiles: np.ndarray, cols: int, pad: int = 2, fill: float = 255.0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Lay images out in a grid (one array, drawn with one ``imshow``: much faster than subplots).

    Args:
        tiles: ``(N, H, W, C)`` images; NaN tiles are left empty.
        cols: tiles per row.
        pad: pixels between tiles.
        fill: value of the padding and of empty cells.

    Returns:
        (the grid image, the top-left ``(x, y)`` pixel of each tile).
    """
    n, h, w, c = tiles.shape
    rows = max(1, -(-n // max(cols, 1)))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=np.float32)
    corners = []
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        if not np.isnan(tiles[i]).all():
            out[y : y + h, x : x + w] = tiles[i]
        corners.append((x, y))
    return out, corners


# ------------------------------------------------------------------------------------------ data plots


def plot_class_histogram(
    class_counts: dict[str, dict[str, int]], labels: list[str], path: Path
) -> dict[str, Any]:
    """Images per class in the train, validation and test splits, as grouped bars side by side.

    Args:
        class_counts: ``{split: {label: count}}`` (the manifest's ``dataset.class_counts``).
        labels: the class names, in model order.
        path: the PNG to write.

    Returns:
        ``{"labels", "splits", "counts": {split: [count per label]}}``.
    """
    plt = pyplot()
    splits = [s for s in ("train", "val", "test") if sum(class_counts.get(s, {}).values())]
    counts = {s: [int(class_counts[s].get(label, 0)) for label in labels] for s in splits}
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * n * max(len(splits), 1) + 2), 3.6))
    width = 0.8 / max(len(splits), 1)
    x = np.arange(n)
    for i, split in enumerate(splits):
        bars = ax.bar(
            x + (i - (len(splits) - 1) / 2) * width,
            counts[split],
            width,
            label=f"{split} ({sum(counts[split])} images)",
        )
        if n <= 20:
            ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, labels, rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return {"labels": list(labels), "splits": splits, "counts": counts}


def plot_image_rows(
    images: np.ndarray, row_names: list[str], path: Path, title: str, *, mask: np.ndarray | None = None
) -> dict[str, Any]:
    """A grid of images, one row per class.

    Args:
        images: ``(rows, cols, H, W, 3)`` uint8.
        row_names: a label per row.
        path: the PNG to write.
        title: the figure title.
        mask: ``(rows, cols)`` bool, False for empty cells (a class with fewer images).

    Returns:
        ``{"rows", "cols", "shown"}`` (number of images drawn).
    """
    plt = pyplot()
    rows, cols, h, w = images.shape[:4]
    tiles = images.reshape(rows * cols, h, w, -1).astype(np.float32)
    if mask is not None:
        tiles[~mask.reshape(-1)] = np.nan
    grid, corners = mosaic(tiles, cols)
    scale = max(0.6, min(1.4, 48 / max(h, w)))
    fig, ax = plt.subplots(figsize=(cols * scale * w / 40 + 1.6, rows * scale * h / 40 + 0.8))
    ax.imshow(grid.astype(np.uint8), interpolation="nearest")
    ax.set_yticks([corners[r * cols][1] + h / 2 for r in range(rows)], row_names)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    save_figure(fig, path)
    return {"rows": rows, "cols": cols, "shown": int(mask.sum()) if mask is not None else rows * cols}


def augment_images(images: np.ndarray, augment: AugmentConfig, seed: int) -> np.ndarray:
    """Apply the training augmentation (:func:`training.data.make_augmenter`) to uint8 images.

    Returns:
        The augmented images, uint8, rounded and clipped as the training pipeline does.
    """
    from training._tf import tf
    from training.data import make_augmenter

    augmenter = make_augmenter(augment, seed=seed)
    if augmenter is None:
        return images.copy()
    out = augmenter(tf.cast(images, tf.float32), training=True)
    return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8).numpy()


def describe_augment(augment: AugmentConfig) -> str:
    """The enabled augmentations as text, e.g. ``rotation 0.05, zoom 0.1``."""
    parts = []
    for key, value in augment.model_dump().items():
        if value is True:
            parts.append(key.replace("_", " "))
        elif value:
            parts.append(f"{key} {value:g}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------- training plots


def phase_boundary(history: dict[str, list[float]]) -> float | None:
    """The x position (epochs count from 1) between head training and fine-tuning, or ``None``."""
    phase = history.get("phase")
    if not phase or len(set(phase)) < 2:
        return None
    return float(np.argmax(np.asarray(phase) > 1)) + 0.5


def best_epoch(history: dict[str, list[float]], monitor: str) -> int | None:
    """The best epoch (from 1) by ``monitor`` (highest for an accuracy, else lowest), or ``None``."""
    if not history.get(monitor):
        return None
    values = np.asarray(history[monitor])
    return int((np.argmax(values) if "acc" in monitor else np.argmin(values)) + 1)


def plot_learning_curves(
    history: dict[str, list[float]], path: Path, monitor: str = "val_loss"
) -> dict[str, Any]:
    """Loss and every metric (training and validation), and the learning rate, per epoch.

    The fine-tuning phase is shaded with its boundary marked; the best epoch by ``monitor`` is starred.
    Draws both ``eval/learning_curves.png`` and ``plots/learning_curves.png``.

    Returns:
        ``{"epochs", "panels", "boundary", "best_epoch", "learning_rate"}``.

    Raises:
        PlotSkipped: the history is empty.
    """
    skip = ("epoch", "lr", "learning_rate", "phase")
    names = [k for k in history if not k.startswith("val_") and k not in skip and history[k]]
    if not names:
        raise PlotSkipped("the package has no training history (logs/history.json)")
    n_epochs = len(history[names[0]])
    lr = history.get("learning_rate") or history.get("lr")
    panels = names + (["learning rate"] if lr else [])
    boundary = phase_boundary(history)
    best = best_epoch(history, monitor)
    from matplotlib.ticker import MaxNLocator

    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        if name == "learning rate":
            ax.plot(np.arange(1, n_epochs + 1), lr, marker=".", color="tab:red")
            ax.set_yscale("log")
        else:
            _draw_curve(ax, history, name, best)
        if boundary is not None:
            _shade_fine_tuning(ax, boundary, n_epochs)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.35 / len(panels), right=0.99, bottom=0.15, top=0.9, wspace=0.28)
    save_figure(fig, path)
    return {
        "epochs": n_epochs,
        "panels": panels,
        "boundary": boundary,
        "best_epoch": best,
        "learning_rate": list(lr or []),
    }


def _draw_curve(ax, history: dict[str, list[float]], name: str, best: int | None) -> None:
    """One metric's training and validation curves, the best epoch starred on the validation curve."""
    epochs = np.arange(1, len(history[name]) + 1)
    ax.plot(epochs, history[name], marker=".", label="train")
    val = history.get(f"val_{name}")
    if val:
        ax.plot(epochs, val, marker=".", label="validation")
        if best is not None:
            ax.plot(
                [best],
                [val[best - 1]],
                marker="*",
                markersize=12,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                label=f"best epoch ({best})",
            )
    ax.legend(fontsize=7)


def _shade_fine_tuning(ax, boundary: float, n_epochs: int) -> None:
    ax.axvspan(boundary, n_epochs + 0.5, color="#ddf4ff", zorder=0)
    ax.axvline(boundary, color="grey", linestyle="--")
    ax.text(boundary, ax.get_ylim()[1], " fine-tuning", fontsize=7, va="top", color="#444")


def plot_val_predictions(recording: dict[str, Any], labels: list[str], path: Path) -> dict[str, Any]:
    """The predicted classes on the validation images at each epoch (stacked shares), beside the truth.

    Returns:
        ``{"epochs", "counts" (epochs x classes), "true_counts", "images"}``.

    Raises:
        PlotSkipped: nothing was recorded.
    """
    rows = recording.get("epochs") or []
    if not rows:
        raise PlotSkipped("no validation predictions were recorded; train with report.record=true")
    epochs = [int(r["epoch"]) for r in rows]
    counts = np.asarray([r["counts"] for r in rows], dtype=np.int64)
    true = np.asarray(recording["true_counts"], dtype=np.int64)
    total = max(int(true.sum()), 1)
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.32 * (len(epochs) + 2) + 2.5), 3.8))
    x = [str(e) for e in epochs] + ["true"]
    data = np.vstack([counts, true[None, :]]) / total
    bottom = np.zeros(len(x))
    for c, (name, color) in enumerate(zip(labels, colors(len(labels)), strict=True)):
        ax.bar(
            x,
            data[:, c],
            bottom=bottom,
            color=color,
            label=name,
            width=0.85,
            edgecolor=["none"] * len(epochs) + ["black"],
        )
        bottom += data[:, c]
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of predictions")
    ax.set_title(
        f"Predicted classes on {total} {recording.get('split', 'validation')} images per epoch (last bar: true classes)",
        fontsize=9,
    )
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", ncol=1 if len(labels) <= 15 else 2)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return {"epochs": epochs, "counts": counts, "true_counts": true, "images": total}


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """The ``(true, predicted)`` count matrix of integer class indices."""
    flat = np.asarray(labels, np.int64) * n_classes + np.asarray(predicted, np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def row_normalized(matrix: np.ndarray) -> np.ndarray:
    """Each row of a count matrix divided by its sum (a row of zeros stays zeros)."""
    return matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)


def plot_confusion_matrix(
    matrix: np.ndarray | list[list[int]], labels: list[str], path: Path
) -> dict[str, Any]:
    """Counts and row-normalized confusion matrices side by side, as a PNG.

    Draws both ``eval/confusion_matrix.png`` and ``plots/confusion.png``.

    Args:
        matrix: ``(true, predicted)`` counts.
        labels: the class names.
        path: the PNG to write.

    Returns:
        ``{"matrix" (true x predicted counts), "normalized"}``.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    norm = row_normalized(cm)
    n = len(labels)
    size = max(4.0, 0.5 * n + 2)
    fig, axes = pyplot().subplots(1, 2, figsize=(2 * size, size))
    panels = ((axes[0], cm, "counts", "{:.0f}"), (axes[1], norm, "normalized by true class", "{:.2f}"))
    for ax, data, title, fmt in panels:
        ax.imshow(data, cmap="Blues")
        ax.set_title(f"Confusion matrix ({title})")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
        if n <= 20:
            top = data.max() or 1
            for i in range(n):
                for j in range(n):
                    color = "white" if data[i, j] > top / 2 else "black"
                    ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    save_figure(fig, path, dpi=CONFUSION_DPI)
    return {"matrix": cm, "normalized": norm}


def plot_per_class(per_class: dict[str, dict[str, float]], path: Path) -> dict[str, Any]:
    """Precision, recall and F1 per class as grouped bars (support in the tick labels).

    Returns:
        ``{"per_class": {label: {precision, recall, f1, support}}}``.
    """
    names = list(per_class)
    n = len(names)
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.55 * n + 2), 3.6))
    x = np.arange(n)
    for i, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [per_class[k][metric] for k in names], 0.27, label=metric)
    ax.set_xticks(x, [f"{k}\n(n={per_class[k]['support']})" for k in names], fontsize=7)
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title("Precision, recall and F1 per class (test split)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    save_figure(fig, path)
    return {"per_class": per_class}


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    path: Path,
    *,
    paths: list[str] | None = None,
    limit: int = 24,
) -> dict[str, Any]:
    """The wrongly classified images (most confident mistakes first) with true and predicted label.

    Returns:
        ``{"total_wrong", "entries": [{"index", "path", "true", "predicted", "confidence"}]}`` (at most
        ``limit`` entries, the ones drawn).
    """
    preds = probabilities.argmax(axis=1)
    conf = probabilities.max(axis=1)
    wrong = np.flatnonzero(preds != labels)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")]
    entries = [
        {
            "index": int(i),
            "path": paths[i] if paths is not None else str(int(i)),
            "true": class_names[int(labels[i])],
            "predicted": class_names[int(preds[i])],
            "confidence": float(conf[i]),
        }
        for i in wrong[:limit]
    ]
    if entries:
        _draw_mistakes(images, entries, len(wrong), len(labels), path)
    else:
        _draw_no_mistakes(len(labels), path)
    return {"total_wrong": len(wrong), "entries": entries}


def _draw_no_mistakes(total: int, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(5, 1.6))
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        f"No misclassified images: all {total} test images are right",
        ha="center",
        va="center",
        fontsize=11,
        color="#1a7f37",
    )
    save_figure(fig, path)


def _draw_mistakes(
    images: np.ndarray, entries: list[dict[str, Any]], wrong: int, total: int, path: Path
) -> None:
    """A grid of the ``entries`` images titled with their true and predicted labels."""
    cols = min(len(entries), 6)
    rows = -(-len(entries) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(1.75 * cols + 0.2, 2.0 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, entry in zip(axes.ravel(), entries, strict=False):
        ax.imshow(images[entry["index"]], interpolation="nearest")
        ax.set_title(
            f"true {entry['true']}\npred {entry['predicted']} ({entry['confidence']:.2f})",
            fontsize=7,
            color="#cf222e",
        )
    fig.suptitle(
        f"{wrong} misclassified of {total} test images"
        + (f" (the {len(entries)} most confident shown)" if wrong > len(entries) else ""),
        fontsize=9,
    )
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.4 / fig.get_figheight(), hspace=0.5, wspace=0.1
    )
    save_figure(fig, path)
