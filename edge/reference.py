"""The reference statistics of a model package (``reference/stats.json`` and ``reference/embeddings.npy``).

One schema, :class:`ReferenceStats`, shared by the writer (training, when it writes the package:
:func:`build_reference_stats` then :func:`write_reference`) and the reader (the server's drift monitor:
:func:`read_reference_stats`). The statistics describe a reference split (validation) as the model saw
it: the predicted class frequencies, the top-1 confidences, the image statistics of
:func:`edge.preprocess.image_stats` plus the original image sizes, the penultimate-layer embedding and
(since schema version 2) the calibration of the top-1 confidence against correctness on the split, from
which the server estimates its accuracy without labels (:class:`CalibrationStats`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.files import read_versioned_json, write_json_atomic
from edge.preprocess import image_stats_batch

#: The version of the ``stats.json`` layout this Shipyard writes; files written before it existed are version 1.
#: Version 2 added ``calibration``.
REFERENCE_SCHEMA_VERSION = 2
#: The versions :func:`read_reference_stats` reads (a version 1 file has no ``calibration``).
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
STATS_FILE = "reference/stats.json"
EMBEDDINGS_FILE = "reference/embeddings.npy"
#: The per-image features of :class:`ImageStats`, in the order the drift monitor stores them.
IMAGE_FEATURES: tuple[str, ...] = ("brightness", "contrast", "saturation", "width", "height")
#: The confidence quantiles stored beside the sample.
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Principal components of the embedding kept in :class:`EmbeddingStats`.
PCA_COMPONENTS = 8


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfidenceStats(_Section):
    """The top-1 probability of each reference image."""

    sample: list[float] = Field(description="one per image, rounded to 6 decimals")
    quantiles: list[float] = Field(description="at QUANTILES (empty for an empty split)")
    mean: float


class ImageStats(_Section):
    """Per-image statistics (see :func:`edge.preprocess.image_stats`); width/height 0: size unreadable."""

    brightness: list[float]
    contrast: list[float]
    saturation: list[float]
    width: list[int]
    height: list[int]

    def feature(self, name: str) -> list[float] | list[int]:
        """The values of one of :data:`IMAGE_FEATURES`."""
        return getattr(self, name)


class EmbeddingStats(_Section):
    """Summary of the penultimate-layer embedding (the raw sample is ``reference/embeddings.npy``)."""

    dim: int = Field(ge=1)
    mean: list[float]
    std: list[float]
    pca_components: list[list[float]]
    pca_projected: list[list[float]]


class CalibrationStats(_Section):
    """How often the model's top-1 prediction was right, as a function of its top-1 probability, on the
    reference split: an isotonic (non-decreasing) fit through the points ``(confidence[i], accuracy[i])``,
    read by linear interpolation and held flat beyond both ends. It starts at the chance point
    ``(1/classes, 1/classes)``, one pseudo-observation, so that confidences lower than any the split produced
    map towards guessing rather than to the lowest block's accuracy."""

    method: str = Field("isotonic", description="how the curve was fitted")
    confidence: list[float] = Field(description="increasing top-1 probabilities (the fitted blocks' centres)")
    accuracy: list[float] = Field(description="the fitted accuracy at each confidence, non-decreasing")
    count: int = Field(ge=0, description="images the curve was fitted on")
    reference_accuracy: float | None = Field(description="measured top-1 accuracy of the split (None: empty)")

    def calibrated(self, confidence: np.ndarray | list[float]) -> np.ndarray:
        """The probability that a prediction with each top-1 ``confidence`` is right."""
        return np.interp(np.asarray(confidence, dtype=np.float64), self.confidence, self.accuracy)


class ReferenceStats(_Section):
    """The content of ``reference/stats.json``."""

    schema_version: int = REFERENCE_SCHEMA_VERSION
    count: int = Field(ge=0, description="reference images")
    labels: list[str]
    class_frequencies: list[float] = Field(description="predicted class frequencies, one per label")
    label_frequencies: list[float] = Field(description="true class frequencies, one per label")
    confidence: ConfidenceStats
    image_stats: ImageStats
    embedding: EmbeddingStats
    calibration: CalibrationStats | None = Field(None, description="absent in schema version 1 files")


def build_reference_stats(
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    images: np.ndarray | list[np.ndarray],
    original_sizes: list[tuple[int, int]],
) -> ReferenceStats:
    """The reference statistics of a split from the model's outputs on it.

    Args:
        probabilities: (n, classes) model outputs.
        embeddings: (n, dim) penultimate-layer embeddings.
        labels: (n,) true class indices.
        class_names: the labels, in index order.
        images: the n ``uint8`` (H, W, 3) model inputs.
        original_sizes: (width, height) of each image before resizing ((0, 0) when unreadable).
    """
    preds = probabilities.argmax(axis=1)
    conf = probabilities.max(axis=1)
    n = len(class_names)
    istats = image_stats_batch(list(images))  # rows of brightness, contrast, saturation
    return ReferenceStats(
        count=len(images),
        labels=class_names,
        class_frequencies=(np.bincount(preds, minlength=n) / max(len(preds), 1)).tolist(),
        label_frequencies=(np.bincount(labels, minlength=n) / max(len(labels), 1)).tolist(),
        confidence=ConfidenceStats(
            sample=conf.round(6).tolist(),
            quantiles=np.quantile(conf, list(QUANTILES)).tolist() if len(conf) else [],
            mean=float(conf.mean()) if len(conf) else 0.0,
        ),
        image_stats=ImageStats(
            brightness=istats[:, 0].tolist(),
            contrast=istats[:, 1].tolist(),
            saturation=istats[:, 2].tolist(),
            width=[int(w) for w, _ in original_sizes],
            height=[int(h) for _, h in original_sizes],
        ),
        embedding=_embedding_stats(embeddings),
        calibration=calibrate(conf, preds == labels, n),
    )


def calibrate(confidence: np.ndarray, correct: np.ndarray, classes: int) -> CalibrationStats:
    """Fit :class:`CalibrationStats`: isotonic regression (pool adjacent violators) of ``correct`` on
    ``confidence``, with the chance point ``(1/classes, 1/classes)`` as one more observation.

    Args:
        confidence: (n,) top-1 probabilities.
        correct: (n,) whether each top-1 prediction was right.
        classes: how many classes the model has.
    """
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    right = np.asarray(correct, dtype=np.float64).reshape(-1)
    chance = 1.0 / max(classes, 1)
    x, where = np.unique(np.concatenate([[chance], conf]), return_inverse=True)  # sorted; ties pooled
    sums = np.bincount(where, weights=np.concatenate([[chance], right]), minlength=len(x))
    weights = np.bincount(where, minlength=len(x)).astype(np.float64)
    blocks: list[list[float]] = []  # [sum of y, weight, first x, last x]
    for xi, total, weight in zip(x, sums, weights, strict=True):
        blocks.append([total, weight, xi, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            pooled_sum, pooled_weight, _, last = blocks.pop()
            blocks[-1][0] += pooled_sum
            blocks[-1][1] += pooled_weight
            blocks[-1][3] = last
    return CalibrationStats(
        confidence=[round((b[2] + b[3]) / 2, 6) for b in blocks],
        accuracy=[round(b[0] / b[1], 6) for b in blocks],
        count=len(conf),
        reference_accuracy=float(right.mean()) if len(right) else None,
    )


def _embedding_stats(emb: np.ndarray) -> EmbeddingStats:
    """Mean, standard deviation and a PCA projection of the embeddings."""
    mean = emb.mean(axis=0)
    centered = emb - mean
    k = int(min(PCA_COMPONENTS, centered.shape[1], max(1, centered.shape[0] - 1)))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    components = vt[:k]
    return EmbeddingStats(
        dim=int(emb.shape[1]),
        mean=mean.tolist(),
        std=emb.std(axis=0).tolist(),
        pca_components=components.tolist(),
        pca_projected=(centered @ components.T).round(6).tolist(),
    )


def write_reference(package: str | Path, stats: ReferenceStats, embeddings: np.ndarray) -> None:
    """Write ``reference/stats.json`` (one line) and ``reference/embeddings.npy`` (float32) into a package."""
    package = Path(package)
    write_json_atomic(package / STATS_FILE, stats.model_dump(), indent=None)
    np.save(package / EMBEDDINGS_FILE, np.asarray(embeddings, dtype=np.float32))


def read_reference_stats(path: str | Path) -> ReferenceStats:
    """Read and validate a ``stats.json``.

    Raises:
        PackageError: the file cannot be read, is not JSON, has another schema version or does not
            match :class:`ReferenceStats`; the message names the file and the field.
    """
    return read_versioned_json(Path(path), ReferenceStats, READABLE_SCHEMA_VERSIONS, absent_version=1)
