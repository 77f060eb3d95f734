"""Per-image explanations: Grad-CAM heat maps of where the model looked, for the misclassified test images
and a sample of correctly classified ones.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a late convolution's output by the mean gradient
of the class score over its positions and keeps the positive part of the weighted sum. The score here is
the log-probability of the class (the model's output is a softmax; the log undoes its saturation without
needing the logits). The convolution is the last 4-D output before global pooling: one layer for a model
built by :func:`training.models.build_model`, one per member for an ensemble, whose maps are averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.visualize.common import PlotSkipped
from training.visualize.drawing import pyplot, save_figure

#: Correctly classified test images explained beside the mistakes.
CORRECT_SAMPLE = 6


def explanation_layers(model) -> list[str]:
    """The layers Grad-CAM reads: each 4-D output that feeds a layer with a 2-D output (global pooling).

    Raises:
        PlotSkipped: the model has no 4-D (convolutional) layer.
    """
    found = []
    for layer in model.layers:
        if len(getattr(layer, "output_shape", ()) or ()) != 2:
            continue
        for node in layer._inbound_nodes:
            inbound = node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]
            found += [
                i.name for i in inbound if len(i.output_shape) == 4 and i.name not in found
            ]
    if found:
        return found
    four_d = [layer.name for layer in model.layers if len(getattr(layer, "output_shape", ()) or ()) == 4]
    if not four_d:
        raise PlotSkipped("the model has no convolutional (4-D) layer to explain with Grad-CAM")
    return four_d[-1:]


def grad_cam(model, images: np.ndarray, classes: np.ndarray, *, layers: list[str] | None = None) -> np.ndarray:
    """Grad-CAM maps of ``classes`` for ``images``, at the input's resolution.

    Args:
        model: a Keras classifier taking float32 0..255 images and returning probabilities.
        images: ``(N, H, W, 3)`` uint8 or float.
        classes: ``(N,)`` the class to explain for each image.
        layers: the 4-D layers to read (default: :func:`explanation_layers`); their maps are averaged.

    Returns:
        ``(N, H, W)`` float32 maps, each scaled to a maximum of 1 (all zeros where no position helped).
    """
    from training._tf import keras, tf

    layers = layers or explanation_layers(model)
    probe = keras.Model(model.inputs, [*(model.get_layer(n).output for n in layers), model.outputs[0]])
    h, w = images.shape[1:3]
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    index = tf.convert_to_tensor(np.asarray(classes, np.int32))
    with tf.GradientTape() as tape:
        *features, probs = probe(x, training=False)
        score = tf.math.log(tf.gather(probs, index, batch_dims=1) + 1e-12)
    grads = tape.gradient(score, features)
    total = tf.zeros((len(images), h, w), tf.float32)
    for feature, grad in zip(features, grads, strict=True):
        weights = tf.reduce_mean(grad, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature, axis=-1, keepdims=True))
        total += tf.image.resize(cam, (h, w), method="bilinear")[..., 0]
    maps = total.numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def choose_explained(
    labels: np.ndarray, probabilities: np.ndarray, *, wrong: int, right: int = CORRECT_SAMPLE, seed: int = 0
) -> list[int]:
    """The images to explain: the ``wrong`` most confident mistakes, then ``right`` correct ones at random."""
    preds = probabilities.argmax(axis=1)
    conf = probabilities.max(axis=1)
    mistakes = np.flatnonzero(preds != labels)
    mistakes = mistakes[np.argsort(-conf[mistakes], kind="stable")][:wrong]
    correct = np.flatnonzero(preds == labels)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(correct, min(right, len(correct)), replace=False)) if len(correct) else correct
    return [int(i) for i in (*mistakes, *sample)]


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (uint8 RGB) with ``cam`` (0..1) blended on top in the jet colour map."""
    import matplotlib

    heat = matplotlib.colormaps["jet"](cam)[..., :3] * 255
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def plot_gradcam(
    images: np.ndarray, cams: np.ndarray, entries: list[dict[str, Any]], path: Path, *, total_wrong: int
) -> dict[str, Any]:
    """A grid of image and heat-map pairs, mistakes (red titles) first, then correct ones (green).

    Args:
        images: ``(N, H, W, 3)`` uint8, the explained images.
        cams: ``(N, H, W)`` their Grad-CAM maps.
        entries: one dict per image: ``true``, ``predicted``, ``confidence``, ``correct``.
        path: the PNG to write.
        total_wrong: the mistakes on the split (the grid may show fewer).

    Returns:
        ``{"shown", "wrong_shown", "total_wrong"}``.
    """
    cols = min(len(entries), 6)
    rows = -(-len(entries) // cols)
    fig, axes = pyplot().subplots(
        rows, 2 * cols, figsize=(1.5 * 2 * cols + 0.2, 1.85 * rows + 0.6), squeeze=False
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, entry in enumerate(entries):
        left, right = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        left.imshow(images[i], interpolation="nearest")
        right.imshow(overlay(images[i], cams[i]), interpolation="bilinear")
        left.set_title(
            f"true {entry['true']}\npred {entry['predicted']} ({entry['confidence']:.2f})",
            fontsize=7,
            color="#1a7f37" if entry["correct"] else "#cf222e",
            loc="left",
        )
    wrong_shown = sum(not e["correct"] for e in entries)
    fig.suptitle(
        f"Grad-CAM of the predicted class: {wrong_shown} of {total_wrong} mistakes, "
        f"{len(entries) - wrong_shown} correct (red: wrong, green: right; warm = where the model looked)",
        fontsize=8,
    )
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.02, top=1 - 0.7 / fig.get_figheight(), hspace=0.6, wspace=0.06
    )
    save_figure(fig, path)
    return {"shown": len(entries), "wrong_shown": wrong_shown, "total_wrong": total_wrong}


def explain_predictions(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    path: Path,
    *,
    wrong: int,
    right: int = CORRECT_SAMPLE,
    seed: int = 0,
) -> dict[str, Any]:
    """Choose the images (:func:`choose_explained`), compute their Grad-CAM maps and draw them.

    Returns:
        What :func:`plot_gradcam` returns, with ``indices``, ``cams``, ``layers`` and ``entries``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    chosen = choose_explained(labels, probabilities, wrong=wrong, right=right, seed=seed)
    if not chosen:
        raise PlotSkipped("there are no test images to explain")
    preds = probabilities.argmax(axis=1)
    layers = explanation_layers(model)
    cams = grad_cam(model, images[chosen], preds[chosen], layers=layers)
    entries = [
        {
            "index": i,
            "true": class_names[int(labels[i])],
            "predicted": class_names[int(preds[i])],
            "confidence": float(probabilities[i].max()),
            "correct": bool(preds[i] == labels[i]),
        }
        for i in chosen
    ]
    total_wrong = int(np.sum(preds != labels))
    out = plot_gradcam(images[chosen], cams, entries, path, total_wrong=total_wrong)
    return {**out, "indices": chosen, "cams": cams, "layers": layers, "entries": entries}
