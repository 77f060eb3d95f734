"""Pictures of the data, the network and the training: PNG files in the package's ``plots/`` folder.

One registry, :data:`PLOTS`, names every picture; :func:`write_plots` (called at the end of
``shipyard train``), ``shipyard plot`` and ``shipyard report`` loop over it and look entries up by
name. Each entry's ``make(ctx, path)`` draws one PNG with matplotlib (Agg backend) and returns the
data it plotted (the confusion matrix, the 2-D embedding coordinates, the histograms...), so that tests
and the report can check what a picture shows. A picture that cannot be made is a row with the reason
(``skipped``: something it needs is not there; ``failed``: an error), never a crash.

Three pictures need data recorded while training, by :func:`recording_callbacks` (on by default, see
``report.record``), which stays cheap:

* :class:`HistogramRecorder`: every ``report.record_every`` epochs (and before the first and after the
  last epoch of each phase) histograms of a few layers' weights and biases, of their activations on a
  fixed batch of validation images and of the loss gradients for those weights (inference mode, so
  the model's state and the random streams of training are untouched); also written to TensorBoard
  (``logs/tensorboard/histograms``, the HISTOGRAMS tab). Saved as ``logs/histograms.json``.
* :class:`PredictionRecorder`: every epoch, the histogram of predicted classes on (at most
  ``report.val_prediction_images`` of) the validation split, in ``logs/val_predictions.json``.

Both save their file after every record (atomically), so a killed run keeps what it recorded and a
resumed run continues it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.config import ConfigError
from edge.manifest import InputContract, Manifest, read_manifest
from training.config import AugmentConfig, TrainingConfig, saved_training_config

log = logging.getLogger("shipyard.visualize")

PLOTS_DIR = "plots"
INDEX_FILE = f"{PLOTS_DIR}/index.json"
HISTOGRAMS_FILE = "logs/histograms.json"
PREDICTIONS_FILE = "logs/val_predictions.json"
TENSORBOARD_HISTOGRAMS = "logs/tensorboard/histograms"
#: Shown on the augmentation picture when the config enables no augmentation.
DEMO_AUGMENT = AugmentConfig(horizontal_flip=True, rotation=0.05, zoom=0.1, translation=0.1, contrast=0.3)
DPI = 90
BINS = 30
#: Epochs drawn on one histogram picture at most (evenly spaced, first and last included).
MAX_EPOCHS_SHOWN = 6
MAX_FILTERS = 64


class PlotSkipped(Exception):
    """A picture cannot be made here (its data is missing); the message says what to do."""


# -------------------------------------------------------------------------------------- matplotlib


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
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
    plt = _plt()
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
    _save(fig, path)
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
    plt = _plt()
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
    _save(fig, path)
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


def project_2d(embeddings: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Map embeddings to 2-D: UMAP (when umap-learn is installed), t-SNE (scikit-learn) or PCA.

    Args:
        embeddings: ``(N, D)``.
        method: ``auto`` (UMAP if installed, else t-SNE), ``umap``, ``tsne`` or ``pca``. Fewer than 5
            points always use PCA.
        seed: the random state.

    Returns:
        (``(N, 2)`` coordinates, the method used).

    Raises:
        ConfigError: ``umap`` was asked for and umap-learn is not installed.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    if n < 5 or method == "pca":
        centered = x - x.mean(axis=0)
        if n < 2:
            return np.zeros((n, 2)), "pca"
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        coords = centered @ vt[:2].T
        if coords.shape[1] < 2:
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        return coords, "pca"
    if method == "umap":
        if importlib.util.find_spec("umap") is None:
            raise ConfigError("report.embedding_method = 'umap' needs umap-learn: pip install umap-learn")
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed)
        return np.asarray(reducer.fit_transform(x)), "umap"
    from sklearn.manifold import TSNE

    # Exact t-SNE is faster than Barnes-Hut below a few hundred points (measured 0.9 s against 2.3 s CPU for
    # 270 points); 350 iterations (250 of them early exaggeration) settle the map; one job avoids contention.
    tsne = TSNE(
        n_components=2,
        perplexity=float(max(2.0, min(30.0, (n - 1) / 3))),
        init="pca",
        random_state=seed,
        method="exact" if n <= 500 else "barnes_hut",
        max_iter=350,
        n_jobs=1,
    )
    return np.asarray(tsne.fit_transform(x)), "t-SNE"


def plot_embedding(
    coords: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    path: Path,
    *,
    predicted: np.ndarray | None = None,
    method: str = "t-SNE",
    split: str = "test",
) -> dict[str, Any]:
    """A 2-D map of embeddings, coloured by true class, or (with ``predicted``) by right/wrong.

    Returns:
        ``{"points": N, "coords", "labels", "correct"?}``.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    labels = np.asarray(labels)
    out: dict[str, Any] = {"points": len(coords), "coords": coords, "labels": labels, "method": method}
    if predicted is None:
        for i, (name, color) in enumerate(zip(class_names, _colors(len(class_names)), strict=True)):
            sel = labels == i
            if sel.any():
                ax.scatter(
                    coords[sel, 0], coords[sel, 1], s=14, color=color, label=f"{name} ({int(sel.sum())})"
                )
        ax.set_title(
            f"Penultimate-layer embeddings of the {split} split ({method}), by true class", fontsize=9
        )
        ax.legend(fontsize=7, markerscale=1.2, ncol=1 if len(class_names) <= 12 else 2, loc="best")
    else:
        correct = np.asarray(predicted) == labels
        out["correct"] = correct
        ax.scatter(
            coords[correct, 0],
            coords[correct, 1],
            s=12,
            color="#2da44e",
            alpha=0.6,
            label=f"correct ({int(correct.sum())})",
        )
        ax.scatter(
            coords[~correct, 0],
            coords[~correct, 1],
            s=34,
            color="#cf222e",
            marker="x",
            label=f"wrong ({int((~correct).sum())})",
        )
        ax.set_title(
            f"Penultimate-layer embeddings of the {split} split ({method}), right or wrong", fontsize=9
        )
        ax.legend(fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.93)
    _save(fig, path)
    return out


# --------------------------------------------------------------------------------------- network plots


def layer_table(model) -> list[dict[str, Any]]:
    """One row per layer: name, type, output shape, parameters, trainable, inbound layers."""
    rows = []
    for layer in model.layers:
        try:
            shape = layer.output_shape
        except (AttributeError, RuntimeError):
            shape = "?"
        inbound = []
        for node in getattr(layer, "_inbound_nodes", []) or []:
            layers = node.inbound_layers
            for inner in layers if isinstance(layers, list | tuple) else [layers]:
                inbound.append(inner.name)
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": str(shape).replace("None", "N"),
                "params": int(layer.count_params()) if layer.built else 0,
                "trainable": bool(layer.trainable and layer.trainable_weights),
                "inbound": inbound,
            }
        )
    return rows


def graphviz_available() -> tuple[bool, str]:
    """Whether ``tf_keras.utils.plot_model`` can draw: pydot importable and Graphviz's ``dot`` on PATH."""
    if importlib.util.find_spec("pydot") is None:
        return False, "pydot is not installed (pip install pydot)"
    if shutil.which("dot") is None:
        return False, "Graphviz's 'dot' is not on PATH (apt-get install graphviz)"
    return True, ""


def plot_structure(model, path: Path) -> dict[str, Any]:
    """The network's structure: a Graphviz graph (``plot_model``), else a layer table as an image.

    Never raises for a missing pydot or Graphviz: the table is drawn instead and ``reason`` says why.

    Returns:
        ``{"method": "graphviz" | "table", "layers": layer_table(model), "reason"?}``.
    """
    rows = layer_table(model)
    ok, reason = graphviz_available()
    if ok:
        from training._tf import keras

        try:
            keras.utils.plot_model(
                model,
                to_file=str(path),
                show_shapes=True,
                show_layer_names=True,
                show_trainable=True,
                dpi=72 if len(rows) <= 40 else 48,
                rankdir="TB",
            )
            return {"method": "graphviz", "layers": rows}
        except Exception as exc:  # a Graphviz failure falls back to the table
            reason = f"plot_model failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    plt = _plt()
    head = f"{'layer':<28} {'type':<24} {'output shape':<22} {'params':>9}  trainable"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name'][:28]:<28} {r['type'][:24]:<24} {r['output_shape'][:22]:<22} {r['params']:>9,}  "
            f"{'yes' if r['trainable'] else 'no'}"
        )
    total = sum(r["params"] for r in rows)
    lines += ["-" * len(head), f"{len(rows)} layers, {total:,} parameters"]
    fig = plt.figure(figsize=(9.5, 0.6 + 0.16 * len(lines)))
    fig.text(0.01, 0.99, "\n".join(lines), family="monospace", fontsize=8, va="top")
    fig.text(0.99, 0.99, f"(layer table: {reason})", fontsize=7, va="top", ha="right", color="#6e7781")
    _save(fig, path)
    return {"method": "table", "layers": rows, "reason": reason}


def first_conv_layer(model):
    """The first ``Conv2D`` layer (not depthwise) of a model, or ``None``."""
    from training._tf import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and type(layer).__name__ != "DepthwiseConv2D":
            return layer
    return None


def plot_filters(model, path: Path) -> dict[str, Any]:
    """The first convolution layer's filters as images (RGB when it sees the 3 input channels).

    Each filter is scaled symmetrically around zero (grey = 0), so that colours compare across filters.

    Returns:
        ``{"layer", "kernel" (kh, kw, in, out), "shown", "mode": "rgb" | "mean"}``.

    Raises:
        PlotSkipped: the model has no Conv2D layer.
    """
    from training.models import PREPROCESS_PREFIX

    layer = first_conv_layer(model)
    if layer is None:
        raise PlotSkipped("the model has no Conv2D layer")
    kernel = np.asarray(layer.get_weights()[0], dtype=np.float64)
    kh, kw, cin, cout = kernel.shape
    shown = min(cout, MAX_FILTERS)
    filters = np.moveaxis(kernel[..., :shown], -1, 0)  # (shown, kh, kw, cin)
    bgr = any(lyr.name == PREPROCESS_PREFIX + "bgr" for lyr in model.layers)
    if cin == 3:
        mode = "rgb"
        if bgr:
            filters = filters[..., ::-1]
        scale = np.abs(filters).reshape(shown, -1).max(axis=1).reshape(shown, 1, 1, 1)
        tiles = 0.5 + filters / (2 * np.maximum(scale, 1e-12))
    else:
        mode = "mean"
        mean = filters.mean(axis=-1, keepdims=True)
        scale = np.abs(mean).reshape(shown, -1).max(axis=1).reshape(shown, 1, 1, 1)
        tiles = 0.5 + mean / (2 * np.maximum(scale, 1e-12))
    cols = int(np.ceil(np.sqrt(shown)))
    grid, _ = mosaic(tiles, cols, pad=1, fill=1.0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(9.0, 0.55 * cols + 1.5), min(9.0, 0.55 * (-(-shown // cols)) + 1.0)))
    if mode == "rgb":
        ax.imshow(np.clip(grid, 0, 1), interpolation="nearest")
    else:
        ax.imshow(grid[..., 0], cmap="RdBu_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    what = "RGB" if mode == "rgb" else f"mean over {cin} input channels"
    ax.set_title(f"{layer.name}: {shown} of {cout} filters, {kh}x{kw}, {what}; grey = 0", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.45 / fig.get_figheight())
    _save(fig, path)
    return {"layer": layer.name, "kernel": kernel, "shown": shown, "mode": mode}


def maximize_activation(
    model,
    *,
    layer: str | None = None,
    units: list[int] | None = None,
    steps: int = 40,
    step_size: float = 3.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Inputs that maximize a class score or a channel, by gradient ascent on the input pixels.

    Starts from grey plus seeded noise (``numpy.random.default_rng(seed)``), steps along the gradient
    normalized per image, clips to 0..255 and blurs every other step (keeps the image smooth). The
    model runs in inference mode. Without ``layer`` the objective is each class's logit (the input of
    the final softmax), with ``layer`` the mean of one channel of that layer's output.

    Args:
        model: a model built by :func:`training.models.build_model` (input pixels 0..255).
        layer: a layer name, or ``None`` for the class logits.
        units: classes (or channels) to maximize, one image each; default: the first 10.
        steps: gradient-ascent steps.
        step_size: pixel units per step of the normalized gradient.
        seed: the seed of the starting noise.

    Returns:
        ``{"images": uint8 (U, H, W, 3), "units", "layer", "before", "after"}`` with the objective
        before and after the ascent.

    Raises:
        ConfigError: an unknown layer, or a unit out of range.
    """
    from training._tf import keras, tf
    from training.models import OUTPUT_NAME

    h, w = (int(d) for d in model.input_shape[1:3])
    if layer is None:
        out_layer = model.get_layer(OUTPUT_NAME)
        features = keras.Model(model.inputs, out_layer.input)
        kernel, bias = (tf.constant(v, tf.float32) for v in out_layer.get_weights()[:2])
        size = int(kernel.shape[1])

        def objective_all(x):
            return tf.matmul(tf.cast(features(x, training=False), tf.float32), kernel) + bias

    else:
        try:
            target = model.get_layer(layer)
        except ValueError:
            names = [lyr.name for lyr in model.layers]
            raise ConfigError(
                f"report.maximize_layer = {layer!r} is not a layer of the model; some layers: {', '.join(names[-8:])}"
            ) from None
        probe = keras.Model(model.inputs, target.output)
        size = int(target.output_shape[-1])

        def objective_all(x):
            out = tf.cast(probe(x, training=False), tf.float32)
            return tf.reduce_mean(out, axis=list(range(1, len(out.shape) - 1))) if len(out.shape) > 2 else out

    units = list(range(min(size, 10))) if units is None else list(units)
    bad = [u for u in units if not 0 <= u < size]
    if bad:
        raise ConfigError(
            f"report.maximize_units {bad} are out of range: {layer or 'the output'} has {size} units"
        )
    index = tf.constant(np.stack([np.arange(len(units)), units], axis=1), tf.int32)
    rng = np.random.default_rng(seed)
    x = tf.constant(np.clip(128.0 + rng.normal(0.0, 4.0, (len(units), h, w, 3)), 0, 255), tf.float32)

    @tf.function
    def ascend(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            act = tf.gather_nd(objective_all(x), index)
            total = tf.reduce_sum(act)
        grad = tape.gradient(total, x)
        grad /= tf.math.reduce_std(grad, axis=[1, 2, 3], keepdims=True) + 1e-8
        return tf.clip_by_value(x + step_size * grad, 0.0, 255.0), act

    def value(x):
        return tf.gather_nd(objective_all(x), index).numpy()

    before = value(x)
    for i in range(steps):
        x, _ = ascend(x)
        if (i + 1) % 2 == 0 and i + 1 < steps:
            x = 0.4 * x + 0.6 * tf.nn.avg_pool2d(x, 3, 1, "SAME")
    after = value(x)
    images = np.round(x.numpy()).astype(np.uint8)
    return {"images": images, "units": units, "layer": layer, "before": before, "after": after}


def plot_maximized(result: dict[str, Any], names: list[str], path: Path) -> dict[str, Any]:
    """Draw :func:`maximize_activation`'s images with each unit's name and objective before/after.

    Each image is contrast-stretched for display (2nd to 98th percentile).
    """
    plt = _plt()
    images = result["images"].astype(np.float32)
    lo = np.percentile(images, 2, axis=(1, 2, 3), keepdims=True)
    hi = np.percentile(images, 98, axis=(1, 2, 3), keepdims=True)
    shown = np.clip((images - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    n = len(images)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 0.2, 2.1 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    what = "logit of class" if result["layer"] is None else f"{result['layer']} channel"
    for i, ax in enumerate(axes.ravel()[:n]):
        ax.imshow(shown[i], interpolation="nearest")
        ax.set_title(f"{what} {names[i]}\n{result['before'][i]:.2f} → {result['after'][i]:.2f}", fontsize=7)
    fig.suptitle("Inputs that maximize each unit (gradient ascent on the pixels, fixed seed)", fontsize=9)
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.4 / fig.get_figheight(), hspace=0.45, wspace=0.1
    )
    _save(fig, path)
    return {**result, "names": names}


def _pick(records: list[dict[str, Any]], k: int = MAX_EPOCHS_SHOWN) -> list[dict[str, Any]]:
    if len(records) <= k:
        return records
    idx = sorted(set(np.linspace(0, len(records) - 1, k).round().astype(int).tolist()))
    return [records[i] for i in idx]


def plot_recorded_histograms(recording: dict[str, Any], kind: str, path: Path) -> dict[str, Any]:
    """Histograms of weights, activations or gradients of the recorded layers at several epochs.

    Args:
        recording: the content of ``logs/histograms.json`` (see :class:`HistogramRecorder`).
        kind: ``weights``, ``activations`` or ``gradients``.
        path: the PNG to write.

    Returns:
        ``{"layers", "epochs" (drawn), "panels": {"layer/name": [histogram per drawn epoch]}}``.

    Raises:
        PlotSkipped: nothing was recorded.
    """
    records = [r for r in recording.get("records", []) if r.get(kind)]
    if not records:
        raise PlotSkipped(f"no {kind} were recorded while training; train with report.record=true")
    picked = _pick(records)
    layers = [name for name in recording.get("layers", []) if any(name in r[kind] for r in picked)]
    panels: dict[str, list[dict[str, Any]]] = {}
    for name in layers:
        entry = next(r[kind][name] for r in picked if name in r[kind])
        subnames = [None] if kind == "activations" else list(entry)
        for sub in subnames:
            key = name if sub is None else f"{name}/{sub}"
            panels[key] = [
                (r[kind].get(name) if sub is None else r[kind].get(name, {}).get(sub)) for r in picked
            ]
    plt = _plt()
    cols = max(1, max((sum(1 for k in panels if k.split("/")[0] == name) for name in layers), default=1))
    height = 2.3 * len(layers) + 0.6
    fig = plt.figure(figsize=(4.2 * cols, height))
    cmap = plt.get_cmap("viridis")
    for row, name in enumerate(layers):
        keys = [k for k in panels if k.split("/")[0] == name]
        for col, key in enumerate(keys):
            ax = fig.add_subplot(len(layers), cols, row * cols + col + 1)  # only the panels that exist
            ax.locator_params(nbins=5)
            for j, (rec, hist) in enumerate(zip(picked, panels[key], strict=True)):
                if not hist:
                    continue
                color = cmap(j / max(len(picked) - 1, 1))
                if hist.get("std") == 0:  # every value the same (zero biases before training): a line
                    ax.axvline(
                        hist["min"],
                        color=color,
                        linestyle=":",
                        label=f"epoch {rec['epoch']} (all {hist['min']:.3g})",
                    )
                    continue
                edges = np.asarray(hist["edges"])
                counts = np.asarray(hist["counts"], dtype=np.float64)
                density = counts / max(counts.sum(), 1) / np.maximum(np.diff(edges), 1e-30)
                ax.stairs(density, edges, color=color, label=f"epoch {rec['epoch']}", linewidth=1.2)
            frozen = any(not r.get("trainable", {}).get(name, True) for r in picked)
            ax.set_title(f"{key}{' (frozen)' if frozen and kind != 'activations' else ''}", fontsize=8)
            ax.tick_params(labelsize=7)
            if row == 0 and col == 0:
                ax.legend(fontsize=6)
    title = {
        "weights": "Weights and biases",
        "activations": "Activations on a fixed validation batch",
        "gradients": "Loss gradients of the weights on a fixed validation batch",
    }[kind]
    fig.suptitle(f"{title}, at {len(picked)} epochs (density)", fontsize=9)
    # Fixed margins: tight_layout would draw the figure once more (about a third of its cost).
    fig.subplots_adjust(
        left=0.06 if cols > 1 else 0.1,
        right=0.98,
        bottom=0.35 / height,
        top=1 - 0.5 / height,
        hspace=0.5,
        wspace=0.18,
    )
    _save(fig, path)
    return {"layers": layers, "epochs": [r["epoch"] for r in picked], "panels": panels}


# ---------------------------------------------------------------------------------------- training plots


def phase_boundary(history: dict[str, list[float]]) -> float | None:
    """The x position (epochs count from 1) between head training and fine-tuning, or ``None``."""
    phase = history.get("phase")
    if not phase or len(set(phase)) < 2:
        return None
    return float(np.argmax(np.asarray(phase) > 1)) + 0.5


def plot_learning_curves(
    history: dict[str, list[float]], path: Path, monitor: str = "val_loss"
) -> dict[str, Any]:
    """Loss and every metric (training and validation), and the learning rate, per epoch.

    The fine-tuning phase is shaded with its boundary marked; the best epoch by ``monitor`` is starred.

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
    epochs = np.arange(1, n_epochs + 1)
    lr = history.get("learning_rate") or history.get("lr")
    panels = names + (["learning rate"] if lr else [])
    boundary = phase_boundary(history)
    best = None
    if history.get(monitor):
        values = np.asarray(history[monitor])
        best = int((np.argmax(values) if "acc" in monitor else np.argmin(values)) + 1)
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        if name == "learning rate":
            ax.plot(epochs, lr, marker=".", color="tab:red")
            ax.set_yscale("log")
        else:
            ax.plot(epochs, history[name], marker=".", label="train")
            if history.get(f"val_{name}"):
                ax.plot(epochs, history[f"val_{name}"], marker=".", label="validation")
                if best is not None:
                    ax.plot(
                        [best],
                        [history[f"val_{name}"][best - 1]],
                        marker="*",
                        markersize=12,
                        color="gold",
                        markeredgecolor="black",
                        linestyle="none",
                        label=f"best epoch ({best})",
                    )
            ax.legend(fontsize=7)
        if boundary is not None:
            ax.axvspan(boundary, n_epochs + 0.5, color="#ddf4ff", zorder=0)
            ax.axvline(boundary, color="grey", linestyle="--")
            ax.text(boundary, ax.get_ylim()[1], " fine-tuning", fontsize=7, va="top", color="#444")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.35 / len(panels), right=0.99, bottom=0.15, top=0.9, wspace=0.28)
    _save(fig, path)
    return {
        "epochs": n_epochs,
        "panels": panels,
        "boundary": boundary,
        "best_epoch": best,
        "learning_rate": list(lr or []),
    }


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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * (len(epochs) + 2) + 2.5), 3.8))
    x = [str(e) for e in epochs] + ["true"]
    data = np.vstack([counts, true[None, :]]) / total
    bottom = np.zeros(len(x))
    for c, (name, color) in enumerate(zip(labels, _colors(len(labels)), strict=True)):
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
    _save(fig, path)
    return {"epochs": epochs, "counts": counts, "true_counts": true, "images": total}


def _saved_matrix(png: Path) -> list[list[int]] | None:
    data = _read_json(png.with_suffix(".json"))
    return data.get("matrix") if isinstance(data, dict) else None


def plot_confusion(
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: list[str],
    path: Path,
    *,
    same_as: Path | None = None,
) -> dict[str, Any]:
    """Counts and row-normalized confusion matrices (drawn by :func:`training.evaluate.plot_confusion_matrix`).

    ``same_as``: the evaluation's ``confusion_matrix.png``; copied instead of drawn again when the
    ``.json`` beside it holds the same matrix.

    Returns:
        ``{"matrix" (true x predicted counts), "normalized"}``.
    """
    from training.evaluate import plot_confusion_matrix

    n = len(class_names)
    cm = np.bincount(
        np.asarray(labels, np.int64) * n + np.asarray(predicted, np.int64), minlength=n * n
    ).reshape(n, n)
    if same_as is not None and same_as.is_file() and _saved_matrix(same_as) == cm.tolist():
        shutil.copyfile(same_as, path)  # the evaluation drew exactly this picture already
    else:
        plot_confusion_matrix(cm.tolist(), class_names, path)
    return {"matrix": cm, "normalized": cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)}


def plot_per_class(per_class: dict[str, dict[str, float]], path: Path) -> dict[str, Any]:
    """Precision, recall and F1 per class as grouped bars (support in the tick labels).

    Returns:
        ``{"per_class": {label: {precision, recall, f1, support}}}``.
    """
    plt = _plt()
    names = list(per_class)
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * n + 2), 3.6))
    x = np.arange(n)
    for i, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [per_class[k][metric] for k in names], 0.27, label=metric)
    ax.set_xticks(x, [f"{k}\n(n={per_class[k]['support']})" for k in names], fontsize=7)
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title("Precision, recall and F1 per class (test split)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    _save(fig, path)
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
    plt = _plt()
    preds = probabilities.argmax(axis=1)
    conf = probabilities.max(axis=1)
    wrong = np.flatnonzero(preds != labels)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")]
    shown = wrong[:limit]
    entries = [
        {
            "index": int(i),
            "path": paths[i] if paths is not None else str(int(i)),
            "true": class_names[int(labels[i])],
            "predicted": class_names[int(preds[i])],
            "confidence": float(conf[i]),
        }
        for i in shown
    ]
    if len(shown) == 0:
        fig, ax = plt.subplots(figsize=(5, 1.6))
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            f"No misclassified images: all {len(labels)} test images are right",
            ha="center",
            va="center",
            fontsize=11,
            color="#1a7f37",
        )
        _save(fig, path)
        return {"total_wrong": 0, "entries": []}
    cols = min(len(shown), 6)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.75 * cols + 0.2, 2.0 * rows + 0.5), squeeze=False)
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
        f"{len(wrong)} misclassified of {len(labels)} test images"
        + (f" (the {len(shown)} most confident shown)" if len(wrong) > len(shown) else ""),
        fontsize=9,
    )
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.4 / fig.get_figheight(), hspace=0.5, wspace=0.1
    )
    _save(fig, path)
    return {"total_wrong": len(wrong), "entries": entries}


# ------------------------------------------------------------------------------------------- context


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class _Once:
    """A value computed by the first caller of :meth:`get`; later callers wait for it (or its error)."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make
        self.lock = threading.Lock()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def get(self) -> Any:
        with self.lock:
            if not self.done:
                try:
                    self.value = self.make()
                except Exception as exc:
                    self.error = exc
                self.done = True
        if self.error is not None:
            raise self.error
        return self.value


#: Computations started in a worker thread while the main thread draws (they release the GIL: TensorFlow,
#: NumPy); the pictures that need them are drawn last.
_PREFETCH: dict[str, tuple[str, ...]] = {
    "embedding": ("embedding_class", "embedding_correct"),
    "maximized": ("maximize",),
}


class PlotContext:
    """What the pictures are made from, loaded lazily from a package (or handed over by training).

    Args:
        package: the package folder.
        manifest: its manifest (read when not given).
        config: the pipeline config (default: the package's training config).
        model: the trained Keras model (default: loaded from the package, sha256 verified).
        scan: the dataset scan of the training run (default: a new scan of ``data`` or the package's
            data path, refused when its fingerprint differs from the manifest's).
        data: the training data folder, if it moved since training.
    """

    def __init__(
        self,
        package: Path | str,
        manifest: Manifest | None = None,
        config: TrainingConfig | None = None,
        *,
        model=None,
        scan=None,
        data: Path | str | None = None,
    ):
        self.package = Path(package)
        self.manifest = manifest or read_manifest(self.package)
        self.config = config or saved_training_config(self.manifest.training_config)
        self._model = model
        self._scan = scan
        self._data = Path(data) if data is not None else None
        self._cache: dict[str, _Once] = {}
        self._lock = threading.Lock()

    @property
    def report(self):
        """The ``report`` section of the config."""
        return self.config.report

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def contract(self) -> InputContract:
        return self.manifest.input

    @property
    def model(self):
        """The Keras model (loaded from the package on first use)."""
        if self._model is None:
            from training.package import load_package_model

            self._model = self.cached("model", lambda: load_package_model(self.package)[0])
        return self._model

    @property
    def scan(self):
        """The dataset scan; raises :class:`PlotSkipped` when the data is not here or changed."""
        if self._scan is None:
            self._scan = self.cached("scan", self._new_scan)
        return self._scan

    def _new_scan(self):
        from training.data import scan_dataset

        path = self._data or self.config.data.path
        if path is None or not Path(path).is_dir():
            raise PlotSkipped(f"the training data ({path}) is not here; pass --data DIR")
        scan = scan_dataset(path, self.config.data)
        recorded = self.manifest.dataset.fingerprint if self.manifest.dataset else None
        if recorded and scan.fingerprint() != recorded:
            raise PlotSkipped(
                f"the data at {path} changed since training (fingerprint differs); pass --data DIR"
            )
        return scan

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per context (thread-safe: a second caller waits; an error is raised to each)."""
        with self._lock:
            once = self._cache.setdefault(key, _Once(make))
        return once.get()

    def maximized(self) -> dict[str, Any]:
        """:func:`maximize_activation` as configured, with a name per unit."""

        def make():
            r = self.report
            units = r.maximize_units
            if units is None and r.maximize_layer is None:
                units = list(range(min(len(self.labels), r.max_classes)))
            result = maximize_activation(
                self.model, layer=r.maximize_layer, units=units, steps=r.maximize_steps, seed=r.seed
            )
            by_class = r.maximize_layer is None
            result["names"] = [self.labels[u] if by_class else str(u) for u in result["units"]]
            return result

        return self.cached("maximized", make)

    def predictions(self) -> dict[str, np.ndarray]:
        """The test-split predictions saved by training (``reference/predictions.npz``)."""

        def load():
            path = self.package / "reference" / "predictions.npz"
            if not path.is_file():
                raise PlotSkipped("the package has no reference/predictions.npz")
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in ("paths", "labels", "probabilities")}

        return self.cached("predictions", load)

    @property
    def eval_split(self) -> str:
        return str(self.manifest.metrics.get("evaluated_on", "test"))

    def eval_images(self) -> np.ndarray:
        """The images of the evaluation split, in the order of :meth:`predictions`."""

        def load():
            from training.data import Sample, load_split_arrays

            pred = self.predictions()
            root = self.scan.root
            samples = [
                Sample(root / str(p), int(y)) for p, y in zip(pred["paths"], pred["labels"], strict=True)
            ]
            missing = [s.path for s in samples if not s.path.is_file()]
            if missing:
                raise PlotSkipped(
                    f"{len(missing)} test images are missing (e.g. {missing[0]}); pass --data DIR"
                )
            images, _ = load_split_arrays(samples, self.contract, max_pixels=self.config.data.max_pixels)
            return images

        return self.cached("eval_images", load)

    def embedding(self) -> dict[str, Any]:
        """2-D coordinates of the penultimate-layer embeddings of (at most ``embedding_points``) test images."""

        def make():
            from training.models import embedding_model

            images = self.eval_images()
            labels = np.asarray(self.predictions()["labels"], dtype=np.int64)
            keep = np.arange(len(images))
            if len(keep) > self.report.embedding_points:
                rng = np.random.default_rng(self.report.seed)
                keep = np.sort(rng.choice(len(keep), self.report.embedding_points, replace=False))
            probs, emb = embedding_model(self.model).predict(
                images[keep].astype(np.float32), verbose=0, batch_size=64
            )
            coords, method = project_2d(emb, self.report.embedding_method, self.report.seed)
            return {
                "coords": coords,
                "labels": labels[keep],
                "predicted": probs.argmax(axis=1),
                "method": method,
                "indices": keep,
                "of": len(images),
            }

        return self.cached("embedding", make)

    def sample_grid(self) -> dict[str, Any]:
        """``samples_per_class`` training images of each class (at most ``max_classes``), seeded choice."""

        def make():
            from training.data import load_split_arrays

            k = self.report.samples_per_class
            n = min(len(self.labels), self.report.max_classes)
            rng = np.random.default_rng(self.report.seed)
            train = self.scan.splits["train"]
            chosen, mask = [], np.zeros((n, k), dtype=bool)
            for c in range(n):
                own = [s for s in train if s.label == c]
                pick = [own[i] for i in sorted(rng.permutation(len(own))[:k])]
                mask[c, : len(pick)] = True
                chosen.append(pick)
            flat = [s for row in chosen for s in row]
            images, _ = load_split_arrays(flat, self.contract, max_pixels=self.config.data.max_pixels)
            h, w = self.contract.height, self.contract.width
            grid = np.full((n, k, h, w, 3), 255, dtype=np.uint8)
            it = iter(images)
            for c in range(n):
                for j in range(int(mask[c].sum())):
                    grid[c, j] = next(it)
            paths = [[s.path.relative_to(self.scan.root).as_posix() for s in row] for row in chosen]
            return {"images": grid, "mask": mask, "paths": paths, "names": self.labels[:n]}

        return self.cached("samples", make)

    def recording(self, relpath: str, what: str) -> dict[str, Any]:
        """A file recorded while training (``logs/histograms.json`` or ``logs/val_predictions.json``)."""
        data = _read_json(self.package / relpath)
        if not data:
            raise PlotSkipped(
                f"no {what} were recorded ({relpath} is missing); train with report.record=true"
            )
        return data


# ---------------------------------------------------------------------------------------- the registry


def _class_histogram(ctx: PlotContext, path: Path) -> dict[str, Any]:
    counts = ctx.manifest.dataset.class_counts if ctx.manifest.dataset else ctx.scan.class_counts()
    return plot_class_histogram(counts, ctx.labels, path)


def _samples(ctx: PlotContext, path: Path) -> dict[str, Any]:
    grid = ctx.sample_grid()
    out = plot_image_rows(
        grid["images"],
        grid["names"],
        path,
        f"Training images, {grid['images'].shape[1]} per class",
        mask=grid["mask"],
    )
    return {**out, "images": grid["images"], "paths": grid["paths"]}


def _augmented(ctx: PlotContext, path: Path) -> dict[str, Any]:
    grid = ctx.sample_grid()
    configured = ctx.config.data.augment.enabled
    augment = ctx.config.data.augment if configured else DEMO_AUGMENT
    what = describe_augment(augment)
    if configured:
        title = f"The same images after the configured augmentation ({what})"
    else:
        title = f"No augmentation is configured: a demonstrative default ({what})"
    images = grid["images"]
    flat = images.reshape(-1, *images.shape[2:])
    augmented = augment_images(flat, augment, ctx.report.seed).reshape(images.shape)
    augmented[~grid["mask"]] = 255
    out = plot_image_rows(augmented, grid["names"], path, title, mask=grid["mask"])
    changed = float(
        np.mean([np.any(a != b) for a, b in zip(augmented[grid["mask"]], images[grid["mask"]], strict=True)])
    )
    note = None if configured else "no augmentation is configured; this shows a demonstrative default"
    return {
        **out,
        "images": augmented,
        "configured": configured,
        "augment": augment.model_dump(),
        "changed_fraction": changed,
        "title": title,
        "note": note,
    }


def _embedding_class(ctx: PlotContext, path: Path) -> dict[str, Any]:
    e = ctx.embedding()
    out = plot_embedding(e["coords"], e["labels"], ctx.labels, path, method=e["method"], split=ctx.eval_split)
    return {**out, "of": e["of"], "note": _subset_note(e)}


def _embedding_correct(ctx: PlotContext, path: Path) -> dict[str, Any]:
    e = ctx.embedding()
    out = plot_embedding(
        e["coords"],
        e["labels"],
        ctx.labels,
        path,
        predicted=e["predicted"],
        method=e["method"],
        split=ctx.eval_split,
    )
    return {**out, "of": e["of"], "note": _subset_note(e)}


def _subset_note(e: dict[str, Any]) -> str | None:
    if e["of"] > len(e["coords"]):
        return f"{len(e['coords'])} of {e['of']} images (report.embedding_points), chosen at random with a fixed seed"
    return None


def _structure(ctx: PlotContext, path: Path) -> dict[str, Any]:
    out = plot_structure(ctx.model, path)
    if out["method"] == "table":
        out["note"] = f"drawn as a table: {out['reason']}"
    return out


def _filters(ctx: PlotContext, path: Path) -> dict[str, Any]:
    return plot_filters(ctx.model, path)


def _maximize(ctx: PlotContext, path: Path) -> dict[str, Any]:
    result = ctx.maximized()
    return plot_maximized(result, result["names"], path)


def _histograms(kind: str) -> Callable[[PlotContext, Path], dict[str, Any]]:
    def make(ctx: PlotContext, path: Path) -> dict[str, Any]:
        return plot_recorded_histograms(ctx.recording(HISTOGRAMS_FILE, "histograms"), kind, path)

    return make


def _learning_curves(ctx: PlotContext, path: Path) -> dict[str, Any]:
    history = _read_json(ctx.package / "logs" / "history.json") or {}
    return plot_learning_curves(history, path, ctx.config.train.monitor)


def _val_predictions(ctx: PlotContext, path: Path) -> dict[str, Any]:
    return plot_val_predictions(ctx.recording(PREDICTIONS_FILE, "validation predictions"), ctx.labels, path)


def _confusion(ctx: PlotContext, path: Path) -> dict[str, Any]:
    pred = ctx.predictions()
    return plot_confusion(
        pred["labels"],
        pred["probabilities"].argmax(axis=1),
        ctx.labels,
        path,
        same_as=ctx.package / "eval" / "confusion_matrix.png",
    )


def _per_class(ctx: PlotContext, path: Path) -> dict[str, Any]:
    from training.evaluate import classification_metrics

    pred = ctx.predictions()
    metrics = classification_metrics(pred["labels"], pred["probabilities"], ctx.labels)
    return plot_per_class(metrics["per_class"], path)


def _misclassified(ctx: PlotContext, path: Path) -> dict[str, Any]:
    pred = ctx.predictions()
    labels = np.asarray(pred["labels"], dtype=np.int64)
    wrong = int(np.sum(pred["probabilities"].argmax(axis=1) != labels))
    images = ctx.eval_images() if wrong else np.zeros((len(labels), 1, 1, 3), np.uint8)
    return plot_misclassified(
        images,
        labels,
        pred["probabilities"],
        ctx.labels,
        path,
        paths=[str(p) for p in pred["paths"]],
        limit=ctx.report.misclassified,
    )


@dataclass(frozen=True)
class PlotSpec:
    """One picture: its group on the report page, its title and how to make it.

    Attributes:
        group: ``data``, ``network`` or ``training``.
        title: the heading on the report page.
        description: one line under it.
        make: ``make(ctx, path) -> data``: writes the PNG at ``path``, returns what it plotted (a
            ``title`` or ``note`` key there overrides or adds to the page's text).
    """

    group: Literal["data", "network", "training"]
    title: str
    description: str
    make: Callable[[PlotContext, Path], dict[str, Any]]


PLOTS: dict[str, PlotSpec] = {
    "class_histogram": PlotSpec(
        "data", "Class histogram", "Images per class in each split.", _class_histogram
    ),
    "samples": PlotSpec(
        "data", "Sample images", "Training images of each class, as the model sees them.", _samples
    ),
    "augmented": PlotSpec(
        "data", "Augmented samples", "The same images after training augmentation.", _augmented
    ),
    "embedding_class": PlotSpec(
        "data",
        "Embedding map by class",
        "Penultimate-layer embeddings of the test images in 2-D.",
        _embedding_class,
    ),
    "embedding_correct": PlotSpec(
        "data",
        "Embedding map, right and wrong",
        "The same map, coloured by correctly classified.",
        _embedding_correct,
    ),
    "structure": PlotSpec(
        "network", "Structure", "The layers of the network and how they connect.", _structure
    ),
    "filters": PlotSpec("network", "First-layer filters", "The first convolution layer's kernels.", _filters),
    "maximize": PlotSpec(
        "network",
        "Activation maximization",
        "Inputs that maximize each class score (gradient ascent).",
        _maximize,
    ),
    "weights": PlotSpec(
        "network",
        "Weight histograms",
        "Weights and biases of a few layers at several epochs.",
        _histograms("weights"),
    ),
    "activations": PlotSpec(
        "network",
        "Activation histograms",
        "Layer outputs on a fixed validation batch at several epochs.",
        _histograms("activations"),
    ),
    "gradients": PlotSpec(
        "network",
        "Gradient histograms",
        "Loss gradients of the weights at several epochs.",
        _histograms("gradients"),
    ),
    "learning_curves": PlotSpec(
        "training", "Learning curves", "Loss, metrics and learning rate per epoch.", _learning_curves
    ),
    "val_predictions": PlotSpec(
        "training",
        "Predicted classes per epoch",
        "How the predictions on the validation split evolved.",
        _val_predictions,
    ),
    "confusion": PlotSpec(
        "training", "Confusion matrix", "Counts and normalized by true class (test split).", _confusion
    ),
    "per_class": PlotSpec("training", "Per-class metrics", "Precision, recall and F1 per class.", _per_class),
    "misclassified": PlotSpec(
        "training", "Misclassified images", "Wrong predictions with true and predicted label.", _misclassified
    ),
}


def check_kinds(kinds: list[str] | None) -> list[str]:
    """Return ``kinds`` (default: every key of :data:`PLOTS`) after checking each is a known picture.

    Raises:
        ConfigError: an unknown name; the message lists the known ones.
    """
    if kinds is None:
        return list(PLOTS)
    unknown = [k for k in kinds if k not in PLOTS]
    if unknown:
        raise ConfigError(
            f"unknown picture(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(PLOTS)}"
        )
    return list(kinds)


@dataclass
class PlotResult:
    """One picture's row: made (``ok``), ``skipped`` (with the reason) or ``failed`` (with the error)."""

    kind: str
    status: Literal["ok", "skipped", "failed"]
    file: str | None = None
    title: str = ""
    note: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready row of ``plots/index.json`` (small parts of ``data`` as ``summary``)."""
        spec = PLOTS.get(self.kind)
        return {
            "kind": self.kind,
            "group": spec.group if spec else None,
            "status": self.status,
            "file": self.file,
            "title": self.title,
            "description": spec.description if spec else "",
            "note": self.note,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "summary": _summary(self.data),
        }


def _summary(data: dict[str, Any], limit: int = 4000) -> dict[str, Any]:
    """The JSON-safe, small entries of a plot's data (large arrays are left out)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("title", "note"):
            continue
        if isinstance(value, np.ndarray):
            if value.size > limit:
                continue
            value = value.tolist()
        try:
            text = json.dumps(value, default=_json_default)
        except (TypeError, ValueError):
            continue
        if len(text) <= 200_000:
            out[key] = json.loads(text)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def make_plot(ctx: PlotContext, kind: str, path: Path) -> PlotResult:
    """Make one picture at ``path``; return its row (never raises for a picture that cannot be made).

    Raises:
        ConfigError: ``kind`` is not a key of :data:`PLOTS`.
    """
    check_kinds([kind])
    spec = PLOTS[kind]
    started = time.perf_counter()
    try:
        data = spec.make(ctx, Path(path))
    except PlotSkipped as exc:
        return PlotResult(
            kind, "skipped", title=spec.title, reason=str(exc), seconds=time.perf_counter() - started
        )
    except ConfigError as exc:
        return PlotResult(
            kind, "failed", title=spec.title, reason=str(exc), seconds=time.perf_counter() - started
        )
    except Exception as exc:
        log.warning("picture %s failed", kind, exc_info=True)
        return PlotResult(
            kind,
            "failed",
            title=spec.title,
            reason=f"{type(exc).__name__}: {str(exc)[:300]}",
            seconds=time.perf_counter() - started,
        )
    return PlotResult(
        kind,
        "ok",
        file=str(path),
        title=spec.title,
        note=data.get("note"),
        seconds=time.perf_counter() - started,
        data=data,
    )


def read_index(package: Path | str) -> dict[str, dict[str, Any]]:
    """The rows of ``plots/index.json`` by kind (empty when the package has none)."""
    data = _read_json(Path(package) / INDEX_FILE) or {}
    return {row["kind"]: row for row in data.get("plots", []) if isinstance(row, dict) and "kind" in row}


def write_plots(
    package: Path | str,
    manifest: Manifest | None = None,
    config: TrainingConfig | None = None,
    *,
    kinds: list[str] | None = None,
    model=None,
    scan=None,
    data: Path | str | None = None,
    progress: Callable[[PlotResult], None] | None = None,
) -> list[PlotResult]:
    """Make pictures into ``<package>/plots/``, update ``plots/index.json`` and the manifest (sha256).

    Args:
        package: the package folder.
        manifest: its manifest (read when not given); updated and saved.
        config: the pipeline config (default: the package's training config).
        kinds: which pictures (default: ``config.report.kinds`` or all of :data:`PLOTS`).
        model: the trained model, if in memory (else loaded from the package).
        scan: the dataset scan, if in memory (else the data folder is scanned).
        data: the training data folder, if it moved.
        progress: called with each picture's row when it is done.

    Returns:
        One :class:`PlotResult` per picture, in the order asked.

    Raises:
        ConfigError: an unknown picture name.
    """
    from training.package import refresh_files

    package = Path(package)
    ctx = PlotContext(package, manifest, config, model=model, scan=scan, data=data)
    kinds = check_kinds(kinds if kinds is not None else ctx.report.kinds)
    out_dir = package / PLOTS_DIR
    out_dir.mkdir(exist_ok=True)
    prefetch = (
        [name for name, users in _PREFETCH.items() if set(users) & set(kinds)] if len(kinds) > 1 else []
    )
    deferred = {k for name in prefetch for k in _PREFETCH[name]}
    by_kind: dict[str, PlotResult] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="shipyard-plots") as pool:
        for name in prefetch:  # errors reach the picture that needs the value, through ctx.cached
            pool.submit(_warm, ctx, name)
        for kind in sorted(kinds, key=lambda k: k in deferred):
            target = out_dir / f"{kind}.png"
            result = make_plot(ctx, kind, target)
            if result.ok:
                result.file = f"{PLOTS_DIR}/{kind}.png"
            elif target.exists():
                target.unlink()  # no stale picture next to a row that says it could not be made
            by_kind[kind] = result
            if progress is not None:
                progress(result)
    results = [by_kind[k] for k in kinds]
    index = read_index(package)
    index.update({r.kind: r.to_dict() for r in results})
    ordered = [index[k] for k in PLOTS if k in index]
    payload = {"updated": datetime.now(UTC).isoformat(timespec="seconds"), "plots": ordered}
    _write_json(package / INDEX_FILE, payload)
    refresh_files(package, ctx.manifest, (PLOTS_DIR,))
    return results


def _warm(ctx: PlotContext, name: str) -> None:
    """Compute ``ctx.<name>()`` ahead (in the worker thread); an error reaches the picture that needs it."""
    with contextlib.suppress(Exception):
        getattr(ctx, name)()


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, default=_json_default))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- recording


def _hist(values: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"counts": [], "edges": [], "size": 0}
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:  # a constant tensor (zero biases at the start): a narrow bin range around it
        lo, hi = lo - max(1e-6, 1e-3 * abs(lo)), hi + max(1e-6, 1e-3 * abs(hi))
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {
        "counts": counts.tolist(),
        "edges": [float(f"{e:.6g}") for e in edges],
        "size": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _short(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


class ValidationSample:
    """A fixed, seeded set of validation images (training images if there is no validation split).

    Decoded once, on first use, from a scan of ``data.path`` (the same split training uses).

    Args:
        config: the pipeline config (``data`` and ``report`` sections are used).
        limit: at most this many images.
    """

    def __init__(self, config: TrainingConfig, limit: int):
        self.config = config
        self.limit = limit
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.split = "validation"

    def get(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 images, int labels)`` at the given size, in a fixed order."""
        if self._arrays is None:
            from training.data import DataError, load_split_arrays, scan_dataset

            scan = scan_dataset(self.config.data.path, self.config.data)
            self.split = "validation" if scan.splits.get("val") else "training"
            samples = scan.splits.get("val") or scan.splits["train"]
            if len(samples) > self.limit:
                rng = np.random.default_rng(self.config.report.seed)
                samples = [samples[i] for i in np.sort(rng.choice(len(samples), self.limit, replace=False))]
            contract = InputContract(height=height, width=width)
            try:
                self._arrays = load_split_arrays(samples, contract, max_pixels=self.config.data.max_pixels)
            except DataError:  # keep the images that decode
                from edge.preprocess import decode_file

                kept = []
                for s in samples:
                    try:
                        kept.append(
                            (decode_file(s.path, contract, max_pixels=self.config.data.max_pixels), s.label)
                        )
                    except Exception:
                        continue
                self._arrays = (np.stack([k[0] for k in kept]), np.array([k[1] for k in kept], np.int32))
        return self._arrays

    def batch(self, height: int, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed, seeded mix of ``size`` of the images (the splits are sorted by class)."""
        images, labels = self.get(height, width)
        order = np.random.default_rng(self.config.report.seed).permutation(len(labels))[:size]
        return images[order], labels[order]


class _Recorder:
    """Shared plumbing: a JSON file under the run directory, rewritten atomically after each record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.state: dict[str, Any] = {}
        self.seconds = 0.0

    def load(self, empty: dict[str, Any]) -> None:
        self.state = _read_json(self.path) or empty
        self.seconds = float(self.state.get("seconds", 0.0))

    def save(self) -> None:
        self.state["seconds"] = round(self.seconds, 3)
        _write_json(self.path, self.state)

    def close(self) -> None:
        """Release resources (a failed recorder is closed and skipped for the rest of the run)."""


class HistogramRecorder(_Recorder):
    """Records histograms of weights, activations and gradients of a few layers while training.

    Records before training (epoch 0), every ``every`` epochs, and after the last epoch of each phase.
    Activations and gradients use one fixed batch of validation images, in inference mode (Dropout off,
    BatchNormalization statistics untouched), so the model's state and training are unchanged.

    Args:
        run_dir: the run directory; writes ``logs/histograms.json`` and, with ``tensorboard``,
            ``logs/tensorboard/histograms`` (TensorBoard's HISTOGRAMS tab).
        sample: the fixed images (the first ``batch`` are used).
        layers: layer names; default: the first and the last base layer with a kernel, and the output.
        every: record every N epochs.
        batch: images in the fixed batch.
        tensorboard: also write ``tf.summary.histogram`` events.
    """

    def __init__(
        self,
        run_dir: Path,
        sample: ValidationSample,
        *,
        layers: list[str] | None = None,
        every: int = 2,
        batch: int = 16,
        tensorboard: bool = True,
    ):
        super().__init__(Path(run_dir) / HISTOGRAMS_FILE)
        self.run_dir = Path(run_dir)
        self.sample = sample
        self.layers_asked = layers
        self.every = every
        self.batch = batch
        self.tensorboard = tensorboard
        self._writer = None
        self._probe = None
        self._last_epoch = 0
        self._phase = 1

    def _layers(self, model) -> list:
        from training.models import OUTPUT_NAME, base_layer_names

        if self.layers_asked:
            found = {layer.name: layer for layer in model.layers}
            missing = [n for n in self.layers_asked if n not in found]
            if missing:
                with_weights = [layer.name for layer in model.layers if layer.weights]
                raise ConfigError(
                    f"report.record_layers {missing} are not layers of the model; layers with weights: "
                    f"{', '.join(with_weights[:12])}{' ...' if len(with_weights) > 12 else ''}"
                )
            return [found[n] for n in self.layers_asked]
        base = set(base_layer_names(model))
        kernels = [
            layer
            for layer in model.layers
            if layer.name in base and any(_short(w) in ("kernel", "depthwise_kernel") for w in layer.weights)
        ]
        chosen = [*kernels[:1], *kernels[-1:], model.get_layer(OUTPUT_NAME)]
        seen: set[str] = set()
        return [layer for layer in chosen if not (layer.name in seen or seen.add(layer.name))]

    def begin(self, model) -> None:
        """Load earlier records (a resumed run), pick the layers, record epoch 0 on a fresh run."""
        from training._tf import keras, tf

        self.load({"layers": [], "every": self.every, "batch": self.batch, "bins": BINS, "records": []})
        layers = self._layers(model)
        self.state["layers"] = [layer.name for layer in layers]
        self._chosen = layers
        self._probe = keras.Model(model.inputs, [model.outputs[0], *[layer.output for layer in layers]])
        if self.tensorboard and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / TENSORBOARD_HISTOGRAMS))
        if not self.state["records"]:
            self.record(model, 0)

    def epoch_end(self, model, epoch: int, logs: dict[str, Any]) -> None:
        """Record after every ``every``-th epoch."""
        self._last_epoch = epoch + 1
        self._phase = int(logs.get("phase", self._phase) or 1)
        if self._last_epoch % self.every == 0:
            self.record(model, self._last_epoch)

    def end(self, model) -> None:
        """Record the final state of the phase (unless its last epoch was just recorded), close TensorBoard."""
        records = self.state.get("records", [])
        if self._last_epoch and (not records or records[-1]["epoch"] != self._last_epoch):
            self.record(model, self._last_epoch)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def record(self, model, epoch: int) -> None:
        """Histograms of the chosen layers now, stored under ``epoch``."""
        from training._tf import keras, tf

        started = time.perf_counter()
        h, w = (int(d) for d in model.input_shape[1:3])
        images, labels = self.sample.batch(h, w, self.batch)
        x = tf.constant(images, tf.float32)
        y = tf.constant(labels)
        variables = {
            layer.name: [v for v in layer.weights if "moving_" not in v.name] for layer in self._chosen
        }
        flat = [v for vs in variables.values() for v in vs]
        loss_fn = getattr(model, "loss", None)

        def step():
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                for v in flat:
                    tape.watch(v)
                outputs = self._probe(x, training=False)
                probs = tf.cast(outputs[0], tf.float32)
                # Per-image losses, averaged here: a Loss object's own reduction refuses replica contexts.
                if isinstance(loss_fn, keras.losses.Loss):
                    loss = tf.reduce_mean(loss_fn.call(y, probs))
                else:
                    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
            grads = tape.gradient(loss, flat)
            return (
                loss,
                outputs,
                [tf.zeros_like(v) if g is None else g for v, g in zip(flat, grads, strict=True)],
            )

        # In a replica context, so that distributed (mirrored) variables can be watched; the first replica's
        # values are kept (the default strategy simply calls step()).
        strategy = model.distribute_strategy
        loss, outputs, grads = (strategy.experimental_local_results(part)[0] for part in strategy.run(step))
        grad_of = {id(v): g for v, g in zip(flat, grads, strict=True)}
        rec: dict[str, Any] = {
            "epoch": epoch,
            "phase": self._phase,
            "loss": float(loss.numpy()),
            "trainable": {layer.name: bool(layer.trainable) for layer in self._chosen},
            "weights": {},
            "activations": {},
            "gradients": {},
        }
        for layer, act in zip(self._chosen, outputs[1:], strict=True):
            rec["weights"][layer.name] = {_short(v): _hist(v.numpy()) for v in variables[layer.name]}
            rec["activations"][layer.name] = _hist(act.numpy())
            rec["gradients"][layer.name] = {
                _short(v): _hist(grad_of[id(v)].numpy()) for v in variables[layer.name]
            }
        if self._writer is not None:
            self._write_tensorboard(rec, epoch)
        records = [
            r for r in self.state["records"] if r["epoch"] < epoch
        ]  # a resumed epoch replaces its record
        self.state["records"] = [*records, rec]
        self.seconds += time.perf_counter() - started
        self.save()

    def _write_tensorboard(self, rec: dict[str, Any], epoch: int) -> None:
        """Write the record's histograms as TensorBoard histogram summaries (no second bucketing)."""
        from tensorboard.plugins.histogram import metadata

        from training._tf import tf

        def write(tag: str, hist: dict[str, Any]) -> None:
            if not hist.get("counts"):
                return
            edges = np.asarray(hist["edges"], dtype=np.float64)
            buckets = np.stack([edges[:-1], edges[1:], np.asarray(hist["counts"], np.float64)], axis=1)
            tf.summary.write(
                tag, tf.constant(buckets), step=epoch, metadata=metadata.create_summary_metadata(tag, "")
            )

        with self._writer.as_default():
            for kind in ("weights", "gradients"):
                for layer, hists in rec[kind].items():
                    for name, hist in hists.items():
                        write(f"{kind}/{layer}/{name}", hist)
            for layer, hist in rec["activations"].items():
                write(f"activations/{layer}", hist)
        self._writer.flush()


class PredictionRecorder(_Recorder):
    """Records the histogram of predicted classes on the validation images after every epoch.

    Args:
        run_dir: the run directory; writes ``logs/val_predictions.json``.
        sample: the validation images.
    """

    def __init__(self, run_dir: Path, sample: ValidationSample):
        super().__init__(Path(run_dir) / PREDICTIONS_FILE)
        self.sample = sample
        self._count = None

    def begin(self, model) -> None:
        """Load earlier records (a resumed run) and the true class counts; compile the counting step."""
        from training._tf import tf

        self.load({"epochs": []})
        n_classes = int(model.outputs[0].shape[-1])

        # One traced function per phase: ~3x faster than eager calls, ~10x faster than model.predict here.
        @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)])
        def count(images):
            probs = model(tf.cast(images, tf.float32), training=False)
            return tf.math.bincount(tf.cast(tf.argmax(probs, axis=1), tf.int32), minlength=n_classes)

        self._count = count
        h, w = (int(d) for d in model.input_shape[1:3])
        _, labels = self.sample.get(h, w)
        n = int(model.outputs[0].shape[-1])
        self.state["true_counts"] = np.bincount(labels, minlength=n).tolist()
        self.state["images"] = len(labels)
        self.state["split"] = self.sample.split

    def epoch_end(self, model, epoch: int, logs: dict[str, Any]) -> None:
        """Predict the validation images and count the predicted classes."""
        started = time.perf_counter()
        h, w = (int(d) for d in model.input_shape[1:3])
        images, _ = self.sample.get(h, w)
        counts = sum(self._count(images[i : i + 128]).numpy() for i in range(0, len(images), 128))
        row = {"epoch": epoch + 1, "phase": int(logs.get("phase", 1) or 1), "counts": counts.tolist()}
        rows = [r for r in self.state["epochs"] if r["epoch"] < epoch + 1]
        self.state["epochs"] = [*rows, row]
        self.seconds += time.perf_counter() - started
        self.save()

    def end(self, model) -> None:
        """Nothing to finish (the file is saved after every epoch)."""


@functools.cache
def _callback_class() -> type:
    """The Keras callback that drives the recorders (built on first use: TensorFlow loads lazily)."""
    from training._tf import keras

    class RecordingCallback(keras.callbacks.Callback):
        """Calls each recorder; one that fails logs a warning and stops, training goes on."""

        def __init__(self, recorders: list[_Recorder]):
            super().__init__()
            self.recorders = recorders
            self.failed: set[int] = set()

        def _each(self, method: str, *args: Any) -> None:
            for i, recorder in enumerate(self.recorders):
                if i in self.failed:
                    continue
                try:
                    getattr(recorder, method)(self.model, *args)
                except Exception as exc:
                    self.failed.add(i)
                    log.warning(
                        "%s stopped recording: %s: %s", type(recorder).__name__, type(exc).__name__, exc
                    )
                    with contextlib.suppress(Exception):
                        recorder.close()

        def on_train_begin(self, logs=None):
            self._each("begin")

        def on_epoch_end(self, epoch, logs=None):
            self._each("epoch_end", epoch, logs or {})

        def on_train_end(self, logs=None):
            self._each("end")

    return RecordingCallback


def recording_callbacks(config: TrainingConfig, run_dir: Path | str) -> list:
    """The Keras callbacks that record histograms and validation predictions into ``run_dir/logs``.

    Empty when ``report.record`` is off, and for ``train.distribution: multi_worker`` (every worker
    would record the same thing into its own folder).

    Args:
        config: the pipeline config (``report``, ``data`` sections).
        run_dir: the run directory (``<output>/<name>/<version>``).

    Returns:
        A list with one callback, or an empty list.
    """
    r = config.report
    if not r.record:
        return []
    if config.train.distribution == "multi_worker":
        log.info("recording histograms is off for multi-worker training")
        return []
    sample = ValidationSample(config, max(r.val_prediction_images, r.record_batch))
    recorders: list[_Recorder] = [
        HistogramRecorder(
            Path(run_dir),
            sample,
            layers=r.record_layers,
            every=r.record_every,
            batch=r.record_batch,
            tensorboard=r.tensorboard_histograms,
        ),
        PredictionRecorder(Path(run_dir), sample),
    ]
    return [_callback_class()(recorders)]


__all__ = [
    "DEMO_AUGMENT",
    "PLOTS",
    "HistogramRecorder",
    "PlotContext",
    "PlotResult",
    "PlotSkipped",
    "PlotSpec",
    "PredictionRecorder",
    "check_kinds",
    "make_plot",
    "maximize_activation",
    "plot_class_histogram",
    "plot_confusion",
    "plot_embedding",
    "plot_filters",
    "plot_learning_curves",
    "plot_misclassified",
    "plot_per_class",
    "plot_recorded_histograms",
    "plot_structure",
    "plot_val_predictions",
    "project_2d",
    "read_index",
    "recording_callbacks",
    "write_plots",
]
