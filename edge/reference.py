"""The reference statistics of a model package (``reference/stats.json`` and ``reference/embeddings.npy``).

One schema, :class:`ReferenceStats`, shared by the writer (training, when it writes the package:
:func:`build_reference_stats` then :func:`write_reference`) and the reader (the server's drift monitor:
:func:`read_reference_stats`). The statistics describe a reference split (validation) as the model saw
it: the predicted class frequencies, the top-1 confidences, the image statistics of
:func:`edge.preprocess.image_stats` plus the original image sizes, and the penultimate-layer embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.errors import PackageError
from edge.files import write_json_atomic
from edge.preprocess import image_stats_batch

#: The version of the ``stats.json`` layout; files written before it existed are version 1.
REFERENCE_SCHEMA_VERSION = 1
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
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path} is not valid JSON ({exc}); re-create the package") from exc
    if not isinstance(raw, dict):
        raise PackageError(f"{path} holds a JSON {type(raw).__name__}, not an object; re-create the package")
    version = raw.get("schema_version", 1)
    if version != REFERENCE_SCHEMA_VERSION:
        raise PackageError(
            f"{path} has schema_version {version!r}; this Shipyard reads schema_version "
            f"{REFERENCE_SCHEMA_VERSION}. Re-create the package with this version of Shipyard"
        )
    try:
        return ReferenceStats.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PackageError(f"{path}: field {where!r} is invalid: {first['msg']}{more}") from exc
