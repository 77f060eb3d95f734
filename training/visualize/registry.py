"""The picture registry: :data:`PLOTS` names every picture and how to make it from a :class:`PlotContext`;
:func:`write_plots` makes them into ``<package>/plots/`` with ``plots/index.json``."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.config import ConfigError
from edge.files import write_json_atomic
from edge.manifest import Manifest
from training.config import TrainingConfig
from training.visualize.common import (
    HISTOGRAMS_FILE,
    INDEX_FILE,
    PLOTS_DIR,
    PREDICTIONS_FILE,
    PlotSkipped,
    json_default,
    log,
    read_json,
)
from training.visualize.context import PlotContext
from training.visualize.drawing import (
    DEMO_AUGMENT,
    augment_images,
    confusion_counts,
    describe_augment,
    plot_class_histogram,
    plot_confusion_matrix,
    plot_image_rows,
    plot_learning_curves,
    plot_misclassified,
    plot_per_class,
    plot_val_predictions,
    row_normalized,
)
from training.visualize.embedding import plot_embedding
from training.visualize.explain import explain_predictions
from training.visualize.network import plot_filters, plot_maximized, plot_recorded_histograms, plot_structure
from training.visualize.tour import plot_grand_tour

# ------------------------------------------------------------------------- making each picture from a context


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


def _grand_tour(ctx: PlotContext, path: Path) -> dict[str, Any]:
    e = ctx.embedding()
    out = plot_grand_tour(e["embeddings"], e["labels"], e["predicted"], ctx.labels, path, seed=ctx.report.seed)
    kept = f"the tour turns through the top {out['dims']} principal components ({out['variance_kept']:.0%} of the variance)"
    subset = _subset_note(e)
    return {**out, "of": e["of"], "note": f"{kept}; {subset}" if subset else kept}


def _subset_note(e: dict[str, Any]) -> str | None:
    if e["of"] > len(e["coords"]):
        return f"{len(e['coords'])} of {e['of']} images (report.embedding_points), chosen at random with a fixed seed"
    return None


def _gradcam(ctx: PlotContext, path: Path) -> dict[str, Any]:
    pred = ctx.predictions()
    out = explain_predictions(
        ctx.model,
        ctx.eval_images(),
        pred["labels"],
        pred["probabilities"],
        ctx.labels,
        path,
        wrong=min(ctx.report.misclassified, 12),
        seed=ctx.report.seed,
    )
    out["paths"] = [str(pred["paths"][i]) for i in out["indices"]]
    return out


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
    history = read_json(ctx.package / "logs" / "history.json") or {}
    return plot_learning_curves(history, path, ctx.config.train.monitor)


def _val_predictions(ctx: PlotContext, path: Path) -> dict[str, Any]:
    return plot_val_predictions(ctx.recording(PREDICTIONS_FILE, "validation predictions"), ctx.labels, path)


def _confusion(ctx: PlotContext, path: Path) -> dict[str, Any]:
    pred = ctx.predictions()
    cm = confusion_counts(pred["labels"], pred["probabilities"].argmax(axis=1), len(ctx.labels))
    drawn = ctx.package / "eval" / "confusion_matrix.png"
    if drawn.is_file() and _saved_matrix(drawn) == cm.tolist():
        shutil.copyfile(drawn, path)  # the evaluation drew exactly this picture already
        return {"matrix": cm, "normalized": row_normalized(cm)}
    return plot_confusion_matrix(cm, ctx.labels, path)


def _saved_matrix(png: Path) -> list[list[int]] | None:
    data = read_json(png.with_suffix(".json"))
    return data.get("matrix") if isinstance(data, dict) else None


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
        group: ``data``, ``network``, ``training`` or ``explanations`` (a section of the report page).
        title: the heading on the report page.
        description: one line under it.
        make: ``make(ctx, path) -> data``: writes the picture at ``path``, returns what it plotted (a
            ``title`` or ``note`` key there overrides or adds to the page's text).
        suffix: the picture's file type (``png``, or ``gif`` for an animation).
    """

    group: Literal["data", "network", "training", "explanations"]
    title: str
    description: str
    make: Callable[[PlotContext, Path], dict[str, Any]]
    suffix: str = "png"

    def file_name(self, kind: str) -> str:
        """The picture's path inside the package: ``plots/<kind>.<suffix>``."""
        return f"{PLOTS_DIR}/{kind}.{self.suffix}"


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
    "grand_tour": PlotSpec(
        "data",
        "Grand tour of the embeddings",
        "A smooth sequence of random 2-D projections of the same embeddings (animated), by class and right or wrong.",
        _grand_tour,
        suffix="gif",
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
    "gradcam": PlotSpec(
        "explanations",
        "Explanations (Grad-CAM)",
        "Where the model looked for its prediction: the mistakes and a sample of right answers.",
        _gradcam,
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
            text = json.dumps(value, default=json_default)
        except (TypeError, ValueError):
            continue
        if len(text) <= 200_000:
            out[key] = json.loads(text)
    return out


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
    except (PlotSkipped, ConfigError) as exc:
        status = "skipped" if isinstance(exc, PlotSkipped) else "failed"
        return PlotResult(
            kind, status, title=spec.title, reason=str(exc), seconds=time.perf_counter() - started
        )
    except Exception as exc:
        log.warning("picture %s failed", kind, exc_info=True)
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        return PlotResult(
            kind, "failed", title=spec.title, reason=reason, seconds=time.perf_counter() - started
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
    data = read_json(Path(package) / INDEX_FILE) or {}
    return {row["kind"]: row for row in data.get("plots", []) if isinstance(row, dict) and "kind" in row}


#: Computations started in a worker thread while the main thread draws (they release the GIL: TensorFlow,
#: NumPy); the pictures that need them are drawn last.
_PREFETCH: dict[str, tuple[str, ...]] = {
    "embedding": ("embedding_class", "embedding_correct", "grand_tour"),
    "maximized": ("maximize",),
}


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
    (package / PLOTS_DIR).mkdir(exist_ok=True)
    results = _make_all(ctx, kinds, progress)
    _update_index(package, results)
    refresh_files(package, ctx.manifest, (PLOTS_DIR,))
    return results


def _make_all(
    ctx: PlotContext, kinds: list[str], progress: Callable[[PlotResult], None] | None
) -> list[PlotResult]:
    """Make each picture into ``plots/``, the slow shared values computed ahead in a worker thread."""
    prefetch = (
        [name for name, users in _PREFETCH.items() if set(users) & set(kinds)] if len(kinds) > 1 else []
    )
    deferred = {k for name in prefetch for k in _PREFETCH[name]}
    by_kind: dict[str, PlotResult] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="shipyard-plots") as pool:
        for name in prefetch:  # errors reach the picture that needs the value, through ctx.cached
            pool.submit(_warm, ctx, name)
        for kind in sorted(kinds, key=lambda k: k in deferred):
            rel = PLOTS[kind].file_name(kind)
            target = ctx.package / rel
            result = make_plot(ctx, kind, target)
            if result.ok:
                result.file = rel
            elif target.exists():
                target.unlink()  # no stale picture next to a row that says it could not be made
            by_kind[kind] = result
            if progress is not None:
                progress(result)
    return [by_kind[k] for k in kinds]


def _warm(ctx: PlotContext, name: str) -> None:
    """Compute ``ctx.<name>()`` ahead (in the worker thread); an error reaches the picture that needs it."""
    with contextlib.suppress(Exception):
        getattr(ctx, name)()


def _update_index(package: Path, results: list[PlotResult]) -> None:
    """Merge the rows of ``results`` into ``plots/index.json`` (in :data:`PLOTS` order)."""
    index = read_index(package)
    index.update({r.kind: r.to_dict() for r in results})
    ordered = [index[k] for k in PLOTS if k in index]
    payload = {"updated": datetime.now(UTC).isoformat(timespec="seconds"), "plots": ordered}
    write_json_atomic(package / INDEX_FILE, payload, indent=None, default=json_default)
