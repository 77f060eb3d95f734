"""The embedding map: penultimate-layer embeddings projected to 2-D and drawn by class or by right/wrong."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from training.visualize.drawing import colors, pyplot, save_figure


def project_2d(embeddings: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Map embeddings to 2-D: UMAP (umap-learn, a training dependency), t-SNE (scikit-learn) or PCA.

    Args:
        embeddings: ``(N, D)``.
        method: ``auto`` (UMAP; t-SNE only where umap-learn is missing from the environment), ``umap``,
            ``tsne`` or ``pca``. Fewer than 5 points always use PCA.
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
        return _pca(x), "pca"
    if method == "umap":
        if importlib.util.find_spec("umap") is None:
            raise ConfigError("report.embedding_method = 'umap' needs umap-learn: pip install umap-learn")
        return _umap(x, seed), "umap"
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


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    """UMAP's 2-D map, seeded (hence single-threaded; its warning about that is silenced)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(x))


def _pca(x: np.ndarray) -> np.ndarray:
    """The first two principal components of ``x`` (zero-padded below two)."""
    n = len(x)
    if n < 2:
        return np.zeros((n, 2))
    centered = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


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
    fig, ax = pyplot().subplots(figsize=(6.4, 5.2))
    labels = np.asarray(labels)
    out: dict[str, Any] = {"points": len(coords), "coords": coords, "labels": labels, "method": method}
    what = f"Penultimate-layer embeddings of the {split} split ({method})"
    if predicted is None:
        _scatter_by_class(ax, coords, labels, class_names)
        ax.set_title(f"{what}, by true class", fontsize=9)
    else:
        out["correct"] = _scatter_by_correct(ax, coords, labels, np.asarray(predicted))
        ax.set_title(f"{what}, right or wrong", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.93)
    save_figure(fig, path)
    return out


def _scatter_by_class(ax, coords: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
    for i, (name, color) in enumerate(zip(class_names, colors(len(class_names)), strict=True)):
        sel = labels == i
        if sel.any():
            ax.scatter(coords[sel, 0], coords[sel, 1], s=14, color=color, label=f"{name} ({int(sel.sum())})")
    ax.legend(fontsize=7, markerscale=1.2, ncol=1 if len(class_names) <= 12 else 2, loc="best")


def _scatter_by_correct(ax, coords: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Green dots for the right predictions, red crosses for the wrong ones; returns the right mask."""
    correct = predicted == labels
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
    ax.legend(fontsize=8)
    return correct
