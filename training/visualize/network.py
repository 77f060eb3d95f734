"""Pictures of the network: its structure, first-layer filters, activation maximization, and the
histograms of weights, activations and gradients recorded while training."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from training.visualize.common import PlotSkipped
from training.visualize.drawing import mosaic, pyplot, save_figure

MAX_FILTERS = 64
#: Epochs drawn on one histogram picture at most (evenly spaced, first and last included).
MAX_EPOCHS_SHOWN = 6


# ------------------------------------------------------------------------------------------- structure


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
    _draw_layer_table(rows, reason, path)
    return {"method": "table", "layers": rows, "reason": reason}


def _draw_layer_table(rows: list[dict[str, Any]], reason: str, path: Path) -> None:
    """The layer table as monospaced text, with why it is not a graph in the corner."""
    head = f"{'layer':<28} {'type':<24} {'output shape':<22} {'params':>9}  trainable"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name'][:28]:<28} {r['type'][:24]:<24} {r['output_shape'][:22]:<22} {r['params']:>9,}  "
            f"{'yes' if r['trainable'] else 'no'}"
        )
    total = sum(r["params"] for r in rows)
    lines += ["-" * len(head), f"{len(rows)} layers, {total:,} parameters"]
    fig = pyplot().figure(figsize=(9.5, 0.6 + 0.16 * len(lines)))
    fig.text(0.01, 0.99, "\n".join(lines), family="monospace", fontsize=8, va="top")
    fig.text(0.99, 0.99, f"(layer table: {reason})", fontsize=7, va="top", ha="right", color="#6e7781")
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------- filters


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
    mode = "rgb" if cin == 3 else "mean"
    if mode == "rgb" and any(lyr.name == PREPROCESS_PREFIX + "bgr" for lyr in model.layers):
        filters = filters[..., ::-1]
    tiles = _centered(filters if mode == "rgb" else filters.mean(axis=-1, keepdims=True))
    cols = int(np.ceil(np.sqrt(shown)))
    grid, _ = mosaic(tiles, cols, pad=1, fill=1.0)
    fig, ax = pyplot().subplots(
        figsize=(min(9.0, 0.55 * cols + 1.5), min(9.0, 0.55 * (-(-shown // cols)) + 1.0))
    )
    if mode == "rgb":
        ax.imshow(np.clip(grid, 0, 1), interpolation="nearest")
    else:
        ax.imshow(grid[..., 0], cmap="RdBu_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    what = "RGB" if mode == "rgb" else f"mean over {cin} input channels"
    ax.set_title(f"{layer.name}: {shown} of {cout} filters, {kh}x{kw}, {what}; grey = 0", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.45 / fig.get_figheight())
    save_figure(fig, path)
    return {"layer": layer.name, "kernel": kernel, "shown": shown, "mode": mode}


def _centered(filters: np.ndarray) -> np.ndarray:
    """Each filter scaled to 0..1 symmetrically around zero (0 -> 0.5)."""
    shown = len(filters)
    scale = np.abs(filters).reshape(shown, -1).max(axis=1).reshape(shown, 1, 1, 1)
    return 0.5 + filters / (2 * np.maximum(scale, 1e-12))


# ---------------------------------------------------------------------------- activation maximization


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
    from training._tf import tf

    objective, size = _objective(model, layer)
    units = list(range(min(size, 10))) if units is None else list(units)
    bad = [u for u in units if not 0 <= u < size]
    if bad:
        raise ConfigError(
            f"report.maximize_units {bad} are out of range: {layer or 'the output'} has {size} units"
        )
    index = tf.constant(np.stack([np.arange(len(units)), units], axis=1), tf.int32)

    def value(x):
        return tf.gather_nd(objective(x), index).numpy()

    h, w = (int(d) for d in model.input_shape[1:3])
    rng = np.random.default_rng(seed)
    x = tf.constant(np.clip(128.0 + rng.normal(0.0, 4.0, (len(units), h, w, 3)), 0, 255), tf.float32)
    before = value(x)
    x = _ascend(objective, index, x, steps, step_size)
    after = value(x)
    images = np.round(x.numpy()).astype(np.uint8)
    return {"images": images, "units": units, "layer": layer, "before": before, "after": after}


def _objective(model, layer: str | None) -> tuple[Callable, int]:
    """``(objective(x) -> (batch, units), units)``: the class logits, or ``layer``'s channel means."""
    from training._tf import keras, tf
    from training.models import OUTPUT_NAME

    if layer is None:
        out_layer = model.get_layer(OUTPUT_NAME)
        features = keras.Model(model.inputs, out_layer.input)
        kernel, bias = (tf.constant(v, tf.float32) for v in out_layer.get_weights()[:2])

        def logits(x):
            return tf.matmul(tf.cast(features(x, training=False), tf.float32), kernel) + bias

        return logits, int(kernel.shape[1])
    try:
        target = model.get_layer(layer)
    except ValueError:
        names = [lyr.name for lyr in model.layers]
        raise ConfigError(
            f"report.maximize_layer = {layer!r} is not a layer of the model; some layers: {', '.join(names[-8:])}"
        ) from None
    probe = keras.Model(model.inputs, target.output)

    def channel_means(x):
        out = tf.cast(probe(x, training=False), tf.float32)
        return tf.reduce_mean(out, axis=list(range(1, len(out.shape) - 1))) if len(out.shape) > 2 else out

    return channel_means, int(target.output_shape[-1])


def _ascend(objective: Callable, index, x, steps: int, step_size: float):
    """``steps`` normalized gradient-ascent steps of ``objective`` at ``index``, blurring every other one."""
    from training._tf import tf

    @tf.function
    def ascend(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            act = tf.gather_nd(objective(x), index)
            total = tf.reduce_sum(act)
        grad = tape.gradient(total, x)
        grad /= tf.math.reduce_std(grad, axis=[1, 2, 3], keepdims=True) + 1e-8
        return tf.clip_by_value(x + step_size * grad, 0.0, 255.0), act

    for i in range(steps):
        x, _ = ascend(x)
        if (i + 1) % 2 == 0 and i + 1 < steps:
            x = 0.4 * x + 0.6 * tf.nn.avg_pool2d(x, 3, 1, "SAME")
    return x


def plot_maximized(result: dict[str, Any], names: list[str], path: Path) -> dict[str, Any]:
    """Draw :func:`maximize_activation`'s images with each unit's name and objective before/after.

    Each image is contrast-stretched for display (2nd to 98th percentile).
    """
    images = result["images"].astype(np.float32)
    lo = np.percentile(images, 2, axis=(1, 2, 3), keepdims=True)
    hi = np.percentile(images, 98, axis=(1, 2, 3), keepdims=True)
    shown = np.clip((images - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    n = len(images)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(1.9 * cols + 0.2, 2.1 * rows + 0.5), squeeze=False)
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
    save_figure(fig, path)
    return {**result, "names": names}


# ------------------------------------------------------------------------------- recorded histograms

_HISTOGRAM_TITLES = {
    "weights": "Weights and biases",
    "activations": "Activations on a fixed validation batch",
    "gradients": "Loss gradients of the weights on a fixed validation batch",
}


def _pick(records: list[dict[str, Any]], k: int = MAX_EPOCHS_SHOWN) -> list[dict[str, Any]]:
    if len(records) <= k:
        return records
    idx = sorted(set(np.linspace(0, len(records) - 1, k).round().astype(int).tolist()))
    return [records[i] for i in idx]


def plot_recorded_histograms(recording: dict[str, Any], kind: str, path: Path) -> dict[str, Any]:
    """Histograms of weights, activations or gradients of the recorded layers at several epochs.

    Args:
        recording: the content of ``logs/histograms.json`` (see :class:`~training.visualize.HistogramRecorder`).
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
    panels = _histogram_panels(picked, layers, kind)
    cols = max(1, max((sum(1 for k in panels if k.split("/")[0] == name) for name in layers), default=1))
    height = 2.3 * len(layers) + 0.6
    fig = pyplot().figure(figsize=(4.2 * cols, height))
    for row, name in enumerate(layers):
        keys = [k for k in panels if k.split("/")[0] == name]
        frozen = kind != "activations" and any(not r.get("trainable", {}).get(name, True) for r in picked)
        for col, key in enumerate(keys):
            ax = fig.add_subplot(len(layers), cols, row * cols + col + 1)  # only the panels that exist
            _draw_histograms(ax, picked, panels[key])
            ax.set_title(f"{key}{' (frozen)' if frozen else ''}", fontsize=8)
            if row == 0 and col == 0:
                ax.legend(fontsize=6)
    fig.suptitle(f"{_HISTOGRAM_TITLES[kind]}, at {len(picked)} epochs (density)", fontsize=9)
    # Fixed margins: tight_layout would draw the figure once more (about a third of its cost).
    fig.subplots_adjust(
        left=0.06 if cols > 1 else 0.1,
        right=0.98,
        bottom=0.35 / height,
        top=1 - 0.5 / height,
        hspace=0.5,
        wspace=0.18,
    )
    save_figure(fig, path)
    return {"layers": layers, "epochs": [r["epoch"] for r in picked], "panels": panels}


def _histogram_panels(
    picked: list[dict[str, Any]], layers: list[str], kind: str
) -> dict[str, list[dict[str, Any] | None]]:
    """``{"layer" or "layer/variable": [histogram per picked epoch]}`` (activations: one per layer)."""
    panels: dict[str, list[dict[str, Any] | None]] = {}
    for name in layers:
        entry = next(r[kind][name] for r in picked if name in r[kind])
        subnames = [None] if kind == "activations" else list(entry)
        for sub in subnames:
            key = name if sub is None else f"{name}/{sub}"
            panels[key] = [
                (r[kind].get(name) if sub is None else r[kind].get(name, {}).get(sub)) for r in picked
            ]
    return panels


def _draw_histograms(ax, picked: list[dict[str, Any]], hists: list[dict[str, Any] | None]) -> None:
    """One panel: a density line per epoch (a dotted vertical line for a constant tensor)."""
    cmap = pyplot().get_cmap("viridis")
    ax.locator_params(nbins=5)
    for j, (rec, hist) in enumerate(zip(picked, hists, strict=True)):
        if not hist:
            continue
        color = cmap(j / max(len(picked) - 1, 1))
        if hist.get("std") == 0:  # every value the same (zero biases before training): a line
            ax.axvline(
                hist["min"], color=color, linestyle=":", label=f"epoch {rec['epoch']} (all {hist['min']:.3g})"
            )
            continue
        edges = np.asarray(hist["edges"])
        counts = np.asarray(hist["counts"], dtype=np.float64)
        density = counts / max(counts.sum(), 1) / np.maximum(np.diff(edges), 1e-30)
        ax.stairs(density, edges, color=color, label=f"epoch {rec['epoch']}", linewidth=1.2)
    ax.tick_params(labelsize=7)
