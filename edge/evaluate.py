"""Evaluate a package's variant on this device, on a folder of labelled images (numpy only).

Measures accuracy, per-class precision/recall/F1 and the confusion matrix with the chosen runtime, and
compares the device's probabilities with the Keras float reference the package carries
(``reference/predictions.npz``), image by image, matched by relative path.

The data folder is laid out as for training: one subfolder per class (images anywhere below it), or
split folders (``train/``, ``val/`` or ``validation/``, ``test/``) that each hold class subfolders.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edge.errors import DataError, ImageError
from edge.manifest import InputContract, Manifest, verify_file
from edge.package import open_variant_runner
from edge.preprocess import IMAGE_SUFFIXES, decode_file
from edge.runners import Runner

REFERENCE_FILE = "reference/predictions.npz"
#: Split folder names, as training reads them.
SPLIT_DIRS: frozenset[str] = frozenset({"train", "val", "validation", "test"})


@dataclass(frozen=True)
class LabelledImage:
    """One image found in the data folder."""

    relpath: str  # posix, relative to the data folder
    path: Path
    class_name: str


@dataclass
class ReferenceComparison:
    """How the device's probabilities compare with ``reference/predictions.npz``."""

    available: bool
    total: int = 0
    matched: int = 0
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    label_mismatches: int = 0
    message: str = ""


@dataclass
class EvalResult:
    """What :func:`evaluate_package` measured."""

    package: str
    variant: str
    variant_file: str
    data_dir: str
    split: str
    labels: list[str]
    images: int
    accuracy: float
    per_class: list[dict[str, Any]]
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion: list[list[int]]
    reference: ReferenceComparison
    scope: str = ""
    held_out_only: bool = False
    skipped: list[dict[str, str]] = field(default_factory=list)
    unknown_classes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    ms_per_image: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_below(folder: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(files)


def find_images(
    data_dir: str | Path, split: str | None = None, labels: list[str] | None = None
) -> tuple[list[LabelledImage], str, list[dict[str, str]]]:
    """List the labelled images of a data folder.

    Args:
        data_dir: one subfolder per class, or split folders (``train/``, ``val/``, ``test/``) holding
            class subfolders.
        split: with split folders, the split to read: ``test`` by default when present, else ``val``,
            else everything; ``"all"`` reads every split.
        labels: the model's labels; a folder named like a split is only read as a split when it is not
            one of them.

    Returns:
        ``(images, split_read, skipped)``: the images (relative paths against ``data_dir``), the split
        read (``"all"`` for a class-folder root) and the files skipped for their suffix.

    Raises:
        DataError: the folder is missing, has no class folders, or the split asked for is absent.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist or is not a folder; pass a folder of class subfolders"
        )
    class_roots, split = _class_roots(root, split, labels)
    images, skipped = _images_in(root, class_roots)
    return images, split, skipped


def _class_roots(root: Path, split: str | None, labels: list[str] | None) -> tuple[list[Path], str]:
    """The class folders to read and the split read (see :func:`find_images`)."""
    subdirs = _subdirs(root)
    names = {p.name for p in subdirs}
    label_set = set(labels or [])
    is_split = (
        bool(names) and names <= SPLIT_DIRS and not (names & label_set) and any(_subdirs(p) for p in subdirs)
    )
    if is_split:
        if split in (None, ""):
            split = next((s for s in ("test", "val", "validation") if s in names), "all")
        if split != "all" and split not in names:
            raise DataError(
                f"--split {split!r} is not a folder of {root}; it has: {', '.join(sorted(names))} (or use --split all)"
            )
        class_roots = [d for s in subdirs if split in ("all", s.name) for d in _subdirs(s)]
    else:
        if split not in (None, "", "all"):
            raise DataError(
                f"--split {split!r} was given but {root} has no split folders (train/, val/, test/); "
                "it holds class folders directly: drop --split"
            )
        split = "all"
        class_roots = subdirs
    if not class_roots:
        raise DataError(
            f"{root} has no class folders; pass a folder with one subfolder per class, or with "
            "train/<class>/, val/<class>/, test/<class>/"
        )
    return class_roots, split


def _images_in(root: Path, class_roots: list[Path]) -> tuple[list[LabelledImage], list[dict[str, str]]]:
    """The images below each class folder, and the files skipped for their suffix."""
    images: list[LabelledImage] = []
    skipped: list[dict[str, str]] = []
    for class_dir in class_roots:
        for path in _files_below(class_dir):
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(
                    {"path": rel, "reason": f"suffix {path.suffix or '(none)'} is not an image suffix"}
                )
                continue
            images.append(LabelledImage(rel, path, class_dir.name))
    return images, skipped


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, and the confusion matrix.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_pred: predicted class indices, shape ``(N,)``.
        labels: the class names (their count fixes the matrix size).

    Returns:
        A dict with ``accuracy``, ``per_class`` (list of dicts), ``macro``, ``weighted`` and ``confusion``
        (rows: true class, columns: predicted class). A class without predictions (or without support)
        has precision (or recall) 0.

    Raises:
        ValueError: the arrays differ in length or hold an index outside the labels.
    """
    confusion = _confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = support.sum()
    scores = {"precision": precision, "recall": recall, "f1": f1}
    per_class = [
        {"label": label, **{k: float(v[i]) for k, v in scores.items()}, "support": int(support[i])}
        for i, label in enumerate(labels)
    ]
    present = support > 0
    weights = support / total if total > 0 else np.zeros(len(labels))
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "per_class": per_class,
        "macro": {k: float(v[present].mean()) if present.any() else 0.0 for k, v in scores.items()},
        "weighted": {k: float((v * weights).sum()) for k, v in scores.items()},
        "confusion": confusion.tolist(),
    }


def _confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Counts of (true, predicted) pairs, ``n x n``; raises ``ValueError`` on mismatched or bad indices."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}; they must match")
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n):
        raise ValueError(f"class indices must be in 0..{n - 1} for {n} labels")
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    return confusion


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den > 0``, else 0."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def _parts(path: str) -> tuple[str, ...]:
    return tuple(PurePosixPath(path.replace("\\", "/")).parts)


def match_reference(local: list[str], reference: list[str]) -> list[int | None]:
    """Match local relative paths to reference paths; return the reference index of each (or ``None``).

    Two paths match when they are equal, or when one is the other with leading folders added (so
    ``3/img_0012.png`` in a ``test/`` folder matches ``test/3/img_0012.png``, and the reverse). At least
    the class folder and the file name must agree; a path that would match several references is left
    unmatched.
    """
    full: dict[tuple[str, ...], int] = {}
    suffixes: dict[tuple[str, ...], int] = {}
    for i, ref in enumerate(reference):
        parts = _parts(ref)
        full[parts] = -1 if parts in full else i
        for k in range(2, len(parts) + 1):
            suf = parts[-k:]
            suffixes[suf] = -1 if suffixes.get(suf, i) != i else i
    out: list[int | None] = []
    for rel in local:
        parts = _parts(rel)
        found: int | None = None
        if parts in full:
            found = full[parts]
        elif len(parts) >= 2 and parts in suffixes:
            found = suffixes[parts]
        else:
            for k in range(len(parts) - 1, 1, -1):
                if parts[-k:] in full:
                    found = full[parts[-k:]]
                    break
        out.append(found if found is not None and found >= 0 else None)
    return out


def load_reference(package: str | Path, manifest: Manifest) -> dict[str, np.ndarray] | None:
    """Read ``reference/predictions.npz`` after verifying it against the manifest, or ``None`` when it is
    absent (a device copy may leave it out) or the manifest does not list it (then it is not read).

    Raises:
        IntegrityError: its sha256 differs from the manifest's.
        PackageError: the file lacks ``paths`` or ``probabilities``.
    """
    from edge.errors import PackageError

    if REFERENCE_FILE not in manifest.files or not (Path(package) / REFERENCE_FILE).is_file():
        return None
    path = verify_file(package, manifest, REFERENCE_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path} is not a readable .npz file ({exc}); re-create the package") from exc
    missing = [k for k in ("paths", "probabilities") if k not in arrays]
    if missing:
        raise PackageError(f"{path} lacks the array(s) {', '.join(missing)}; re-create the package")
    return arrays


def predict_images(
    runner: Runner, images: list[Path], contract: InputContract, batch_size: int = 32
) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Decode and run images in batches; images that fail to decode are skipped, not fatal.

    Args:
        runner: the model's runner.
        images: image files.
        contract: the input contract to decode to.
        batch_size: images per inference (capped by a model's fixed batch size).

    Returns:
        ``(probabilities, kept, skipped)``: probabilities of the kept images (float32 ``N x C``), the
        indices into ``images`` that were kept, and ``{"path", "reason"}`` for each skipped one.
    """
    step = max(1, min(batch_size, runner.max_batch or batch_size))
    probs: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[dict[str, str]] = []
    pending: list[np.ndarray] = []
    pending_idx: list[int] = []

    def flush() -> None:
        if pending:
            probs.append(np.asarray(runner.predict(np.stack(pending)), dtype=np.float32))
            kept.extend(pending_idx)
            pending.clear()
            pending_idx.clear()

    for i, path in enumerate(images):
        try:
            pending.append(decode_file(path, contract))
            pending_idx.append(i)
        except ImageError as exc:
            skipped.append({"path": str(path), "reason": str(exc)})
        if len(pending) >= step:
            flush()
    flush()
    out = np.concatenate(probs) if probs else np.zeros((0, 0), dtype=np.float32)
    return out, kept, skipped


def compare_with_reference(
    relpaths: list[str], true_idx: np.ndarray, probs: np.ndarray, reference: dict[str, np.ndarray] | None
) -> ReferenceComparison:
    """Top-1 agreement and probability differences of the device's outputs against the reference.

    Args:
        relpaths: the images' paths relative to the data folder (posix).
        true_idx: their true class indices (checked against the reference's labels).
        probs: the device's probabilities, one row per image.
        reference: the arrays of ``reference/predictions.npz``, or ``None`` when the package has none.

    Returns:
        A :class:`ReferenceComparison`; ``matched == 0`` with a message saying why when nothing matched.
    """
    if reference is None:
        return ReferenceComparison(
            available=False, message=f"the package has no {REFERENCE_FILE}; agreement not computed"
        )
    ref_paths = [str(p) for p in reference["paths"].tolist()]
    ref_probs = np.asarray(reference["probabilities"], dtype=np.float32)
    ref_labels = reference.get("labels")
    matches = match_reference(relpaths, ref_paths)
    local = [i for i, m in enumerate(matches) if m is not None]
    if not local:
        example_ref = ref_paths[0] if ref_paths else "(none)"
        example_local = relpaths[0] if relpaths else "(none)"
        return ReferenceComparison(
            available=True,
            total=len(ref_paths),
            message=(
                f"none of the {len(relpaths)} images matches the {len(ref_paths)} reference images by relative path "
                f"(reference e.g. {example_ref!r}, here e.g. {example_local!r}); pass the data folder the "
                "package was trained on to compare with the reference"
            ),
        )
    ref_idx = np.array([matches[i] for i in local], dtype=np.int64)
    mine = probs[local]
    theirs = ref_probs[ref_idx]
    if mine.shape[1] != theirs.shape[1]:
        return ReferenceComparison(
            available=True,
            total=len(ref_paths),
            matched=len(local),
            message=f"the reference has {theirs.shape[1]} classes, the model {mine.shape[1]}; not compared",
        )
    diff = np.abs(mine - theirs)
    mismatches = 0
    if ref_labels is not None:
        mismatches = int((np.asarray(ref_labels)[ref_idx] != true_idx[local]).sum())
    agreement = float((mine.argmax(axis=1) == theirs.argmax(axis=1)).mean())
    return ReferenceComparison(
        available=True,
        total=len(ref_paths),
        matched=len(local),
        top1_agreement=agreement,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        label_mismatches=mismatches,
        message=f"{len(local)} of {len(ref_paths)} reference images matched",
    )


def held_out_files(manifest: Manifest, reference: dict[str, np.ndarray] | None) -> tuple[str, list[str]] | None:
    """(split name, relative paths) of the images the package was evaluated on and never trained on.

    Read from the manifest's ``held_out`` (written by training), else from the reference predictions'
    paths (the same images); ``None`` when the package records neither.
    """
    if manifest.held_out is not None and manifest.held_out.files:
        return manifest.held_out.split, list(manifest.held_out.files)
    if reference is not None and len(reference["paths"]):
        split = str((manifest.metrics or {}).get("evaluated_on") or "test")
        return split, [str(p) for p in reference["paths"].tolist()]
    return None


def select_held_out(
    images: list[LabelledImage], held: tuple[str, list[str]] | None, data_dir: str | Path, all_images: bool
) -> tuple[list[LabelledImage], str, bool]:
    """Keep the images of the package's held-out split, unless ``all_images``.

    Returns:
        (images to score, a sentence saying which images they are, whether only held-out ones were kept).

    Raises:
        DataError: none of the images is in the held-out split (another data folder?).
    """
    if all_images:
        return images, f"all {len(images)} images, including any the model was trained on (--all-images)", False
    if held is None:
        return images, f"all {len(images)} images: the package records no held-out split", False
    split, files = held
    matches = match_reference([img.relpath for img in images], files)
    kept = [img for img, m in zip(images, matches, strict=True) if m is not None]
    if not kept:
        raise DataError(
            f"none of the {len(images)} images in {data_dir} is in the package's held-out {split} split "
            f"({len(files)} images, e.g. {files[0]!r}); pass the data folder the package was trained on, "
            "or --all-images to score every image"
        )
    return kept, f"the package's held-out {split} split: {len(kept)} of {len(images)} images", True


def evaluate_package(
    package: str | Path,
    data_dir: str | Path,
    *,
    variant: str | None = None,
    threads: int | None = None,
    batch_size: int = 32,
    split: str | None = None,
    all_images: bool = False,
) -> EvalResult:
    """Evaluate a variant of a package on a data folder, on this device.

    Only the images of the package's held-out split (recorded in its manifest) are scored, so that the
    accuracy is not inflated by training images; ``all_images`` scores every image found.

    Args:
        package: the package directory.
        data_dir: the labelled images (see :func:`find_images`).
        variant: the variant to run (default as :func:`edge.package.choose_variant`).
        threads: inference threads (default: all cores).
        batch_size: images per inference.
        split: the split folder to read (see :func:`find_images`); with ``all_images`` and none
            given, every split.
        all_images: score every image, not only the held-out ones.

    Returns:
        An :class:`EvalResult`.

    Raises:
        PackageError, IntegrityError, ModelFileError: the package or variant cannot be opened.
        DataError: the data folder is missing, holds no class folders, or no usable image of a known class.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use 1 or more")
    if all_images and split is None:
        split = "all"
    runner, manifest, key = open_variant_runner(package, variant, num_threads=threads)
    try:
        chosen = _choose_images(package, manifest, data_dir, split, all_images)
        start = time.perf_counter()
        probs, kept, bad = predict_images(
            runner, [img.path for img in chosen.images], manifest.input, batch_size
        )
        seconds = time.perf_counter() - start
    finally:
        runner.close()
    return _score(manifest, key, data_dir, chosen, probs, kept, bad, seconds)


@dataclass
class _Chosen:
    """The images :func:`evaluate_package` scores, and what it learnt choosing them."""

    images: list[LabelledImage]
    split: str
    skipped: list[dict[str, str]]
    unknown: dict[str, int]
    reference: dict[str, np.ndarray] | None
    scope: str
    held_out_only: bool


def _choose_images(
    package: str | Path, manifest: Manifest, data_dir: str | Path, split: str | None, all_images: bool
) -> _Chosen:
    """Find the labelled images, keep those of a known class and (unless ``all_images``) the held-out ones."""
    found, split_read, skipped = find_images(data_dir, split, manifest.labels)
    usable, unknown = _known_class_images(found, manifest.labels, data_dir)
    reference = load_reference(package, manifest)
    images, scope, held_only = select_held_out(
        usable, held_out_files(manifest, reference), data_dir, all_images
    )
    return _Chosen(images, split_read, skipped, unknown, reference, scope, held_only)


def _score(
    manifest: Manifest,
    key: str,
    data_dir: str | Path,
    chosen: _Chosen,
    probs: np.ndarray,
    kept: list[int],
    bad: list[dict[str, str]],
    seconds: float,
) -> EvalResult:
    """Metrics and reference agreement of the decoded images; the undecodable ones join the skipped.

    Raises:
        DataError: none of the images could be decoded.
    """
    if not kept:
        raise DataError(
            f"none of the {len(chosen.images)} images in {data_dir} could be decoded; first: {bad[0]['reason']}"
        )
    kept_images = [chosen.images[i] for i in kept]
    index = {name: i for i, name in enumerate(manifest.labels)}
    y_true = np.array([index[img.class_name] for img in kept_images], dtype=np.int64)
    metrics = classification_metrics(y_true, probs.argmax(axis=1), manifest.labels)
    comparison = compare_with_reference([img.relpath for img in kept_images], y_true, probs, chosen.reference)
    return EvalResult(
        package=manifest.tag,
        variant=key,
        variant_file=manifest.variants[key].file,
        data_dir=str(data_dir),
        split=chosen.split,
        labels=list(manifest.labels),
        images=len(kept_images),
        **metrics,
        reference=comparison,
        scope=chosen.scope,
        held_out_only=chosen.held_out_only,
        skipped=chosen.skipped + _relative_paths(bad, data_dir),
        unknown_classes=chosen.unknown,
        seconds=seconds,
        ms_per_image=1000 * seconds / len(chosen.images),
    )


def _known_class_images(
    found: list[LabelledImage], labels: list[str], data_dir: str | Path
) -> tuple[list[LabelledImage], dict[str, int]]:
    """The images in a folder named after a label, and the count of the others by folder name.

    Raises:
        DataError: no image is in a folder named after a label.
    """
    known = set(labels)
    unknown: dict[str, int] = {}
    usable: list[LabelledImage] = []
    for img in found:
        if img.class_name in known:
            usable.append(img)
        else:
            unknown[img.class_name] = unknown.get(img.class_name, 0) + 1
    if not usable:
        extra = f" (its folders: {', '.join(sorted(unknown))})" if unknown else ""
        raise DataError(
            f"{data_dir} holds no image in a folder named after one of the model's labels "
            f"({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''}){extra}; "
            "pass the folder of class subfolders the model was trained on"
        )
    return usable, unknown


def _relative_paths(items: list[dict[str, str]], data_dir: str | Path) -> list[dict[str, str]]:
    """The skipped-image records with their paths made relative to the data folder (posix)."""
    root = Path(data_dir)
    return [{**item, "path": Path(item["path"]).relative_to(root).as_posix()} for item in items]
