"""What a model costs: its weights' sparsity, its multiply-accumulates, its compressed size.

The file formats' own readers (TFLite and ONNX weights, operator counts) are in :mod:`edge.variants`.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def keras_weights(model: Any) -> list[np.ndarray]:
    """The kernels (weights with 2 or more dimensions) of a Keras model or layer."""
    return [w.numpy() for w in model.weights if len(w.shape) >= 2 and "kernel" in w.name]


def weight_sparsity(arrays: list[np.ndarray]) -> float | None:
    """Fraction of exact zeros over all given weight tensors (``None`` when there are none)."""
    total = sum(int(a.size) for a in arrays)
    if total == 0:
        return None
    return float(sum(int(np.count_nonzero(a == 0)) for a in arrays) / total)


def count_macs(model: Any) -> dict[str, int]:
    """Multiply-accumulates of one image through a Keras model, counted per layer from the shapes.

    Convolutions: ``H_out * W_out * k_h * k_w * C_in / groups * C_out``; depthwise:
    ``H_out * W_out * k_h * k_w * C_in * depth_multiplier``; dense: ``inputs * units``. Element-wise
    work (BatchNormalization, activations, additions, pooling) is counted separately as ``elementwise``
    (one operation per output value), since it is not multiply-accumulate bound.

    Returns:
        ``{"conv": ..., "depthwise": ..., "dense": ..., "total": ..., "elementwise": ...}``.
    """
    from training._tf import keras

    counts = {"conv": 0, "depthwise": 0, "dense": 0, "elementwise": 0}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer | keras.Model):
            continue
        out = layer.output_shape
        out_shape = out[0] if isinstance(out, list) else out
        out_size = int(np.prod([d for d in out_shape[1:] if d is not None]))
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            cin = int(layer.input_shape[-1])
            counts["depthwise"] += int(np.prod(out_shape[1:3])) * kh * kw * cin * layer.depth_multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = int(layer.input_shape[-1])
            counts["conv"] += out_size * kh * kw * cin // max(1, getattr(layer, "groups", 1))
        elif isinstance(layer, keras.layers.Dense):
            counts["dense"] += int(layer.input_shape[-1]) * out_size
        else:
            counts["elementwise"] += out_size
    counts["total"] = counts["conv"] + counts["depthwise"] + counts["dense"]
    return counts


def gzip_size(content: bytes) -> int:
    """Size after ``gzip -9``: what the weights cost to download or store compressed."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def dir_digest(directory: Path) -> tuple[str, int, int]:
    """(sha256 over sorted relative paths and file hashes, total bytes, total gzip bytes) of a folder."""
    from edge.manifest import file_sha256

    digest = hashlib.sha256()
    total = gz = 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        digest.update(f"{rel}\t{file_sha256(path)}\n".encode())
        total += path.stat().st_size
        gz += gzip_size(path.read_bytes())
    return digest.hexdigest(), total, gz
