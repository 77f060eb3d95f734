"""Scanning a data folder: its layout, class folders and usable images, and the train/val/test split."""

from __future__ import annotations

import hashlib
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from edge.errors import DataError
from training.config import DataConfig
from training.data.files import FileInfo, check_file_fields, skip_reason_by_name
from training.data.processes import StreamedMap
from training.demo import DEMO_MARKER

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Folder names recognised as split folders (``validation`` is read as ``val``).
SPLIT_DIRS: dict[str, str] = {"train": "train", "val": "val", "validation": "val", "test": "test"}
#: Files at the top of a data folder that are ours and not data (the demo-data marker).
IGNORED_ROOT_FILES: frozenset[str] = frozenset({DEMO_MARKER})


@dataclass(frozen=True)
class Sample:
    """One usable image: its absolute path and the index of its class in :attr:`DatasetScan.labels`."""

    path: Path
    label: int


@dataclass
class DatasetScan:
    """What :func:`scan_dataset` found: usable samples per split, skipped files and image statistics.

    ``image_sizes`` counts ``(width, height)`` as Pillow reports them; ``sizes`` maps each usable
    file to its size in bytes (used by :meth:`fingerprint`).
    """

    root: Path
    labels: list[str]
    layout: Literal["class_folders", "split_folders"]
    splits: dict[str, list[Sample]]
    skipped: list[tuple[Path, str]]
    total_bytes: int
    image_sizes: Counter[tuple[int, int]]
    image_modes: Counter[str]
    formats: Counter[str]
    sizes: dict[Path, int] = field(default_factory=dict, repr=False)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Return ``{split: {label: count}}`` for every split and every label (zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            counts = Counter(s.label for s in self.splits.get(split, []))
            out[split] = {name: counts.get(i, 0) for i, name in enumerate(self.labels)}
        return out

    def split_counts(self) -> dict[str, int]:
        """Return ``{split: number of images}``."""
        return {split: len(self.splits.get(split, [])) for split in SPLITS}

    @property
    def num_images(self) -> int:
        """Usable images over all splits."""
        return sum(len(v) for v in self.splits.values())

    def fingerprint(self) -> str:
        """Return a stable hex sha256 over the sorted (relative path, bytes, label name) of every sample.

        The same files with the same labels give the same fingerprint on any machine and in any
        folder; renaming, resizing, relabelling, adding or removing a file changes it.
        """
        rows = []
        prefix = self.root.as_posix().rstrip("/") + "/"
        for samples in self.splits.values():
            for s in samples:
                path = s.path.as_posix()
                # the string cut is Path.relative_to's answer for a path below the root, 10x faster
                rel = (
                    path[len(prefix) :]
                    if path.startswith(prefix)
                    else s.path.relative_to(self.root).as_posix()
                )
                size = self.sizes.get(s.path)
                if size is None:
                    size = s.path.stat().st_size
                rows.append(f"{rel}\t{size}\t{self.labels[s.label]}\n")
        digest = hashlib.sha256()
        for row in sorted(rows):
            digest.update(row.encode("utf-8", "surrogateescape"))  # names that are not UTF-8: their bytes
        return digest.hexdigest()


def _walk_files(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """All files below ``folder`` (sorted), skipping hidden folders (reported)."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if d.startswith("."):
                skipped.append((here / d, "hidden folder"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(here / f for f in filenames)
    return sorted(files)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _detect_layout(root: Path) -> Literal["class_folders", "split_folders"]:
    subdirs = _subdirs(root)
    names = {p.name for p in subdirs}
    if "train" in names and names <= set(SPLIT_DIRS) and any(_subdirs(root / "train")):
        return "split_folders"
    return "class_folders"


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Images of one class that go to (val, test): >= 1 each for a non-zero fraction once n >= 3."""
    if n < 3:
        return 0, 0
    n_val = round(n * val_fraction)
    n_test = round(n * test_fraction)
    if val_fraction > 0:
        n_val = max(1, n_val)
    if test_fraction > 0:
        n_test = max(1, n_test)
    while n_val + n_test > n - 1:  # keep at least one training image
        if n_val >= n_test and n_val > (1 if val_fraction > 0 else 0):
            n_val -= 1
        elif n_test > (1 if test_fraction > 0 else 0):
            n_test -= 1
        else:
            break
    return n_val, n_test


def stratified_split(
    samples: list[Sample], labels: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Split samples per class into train/val/test, shuffled with ``seed``.

    Each class is shuffled by its own generator seeded with ``(seed, crc32(class name))``, so a
    class's split does not change when other classes are added. Every class with at least 3 images
    gets at least one image in each split with a non-zero fraction; classes with fewer go to train.

    Args:
        samples: the samples to split (any order; the result does not depend on it).
        labels: class names, indexed by ``Sample.label``.
        val_fraction: share of each class for validation.
        test_fraction: share of each class for test.
        seed: the split seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by (label, path).
    """
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    out: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for label, items in sorted(by_class.items()):
        items = sorted(items, key=lambda s: s.path.as_posix())
        rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(labels[label].encode("utf-8"))])
        order = rng.permutation(len(items))
        n_val, n_test = _split_sizes(len(items), val_fraction, test_fraction)
        out["val"].extend(items[i] for i in order[:n_val])
        out["test"].extend(items[i] for i in order[n_val : n_val + n_test])
        out["train"].extend(items[i] for i in order[n_val + n_test :])
    for split in SPLITS:
        out[split].sort(key=lambda s: (s.label, s.path.as_posix()))
    return out


def scan_dataset(root: str | Path, config: DataConfig) -> DatasetScan:
    """Scan a data folder: find classes and images, check every file's header, split the samples.

    Args:
        root: a folder with one subfolder per class, or ``train/`` (and optionally ``val/``,
            ``test/``) folders that each hold class subfolders.
        config: ``val_fraction``, ``test_fraction``, ``seed`` and ``max_pixels`` are used. Without
            split folders the split is stratified and seeded; without ``val/`` the validation split
            is taken from ``train/`` (``test/`` is only what the folder holds).

    Returns:
        A :class:`DatasetScan` with absolute sample paths and every skipped file with its reason.

    Raises:
        DataError: the folder is missing, has no class folders or images, a class folder is empty
            (or holds no usable image), a val/test class is missing from train, or there are
            fewer than 2 classes.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist or is not a folder; pass a folder with one subfolder per class"
        )
    skipped: list[tuple[Path, str]] = []
    layout = _detect_layout(root)
    class_dirs = _find_class_dirs(root, layout, skipped)
    labels = _labels(root, layout, class_dirs)
    tally = _check_files(class_dirs, labels, config.max_pixels, skipped)
    _require_usable(root, class_dirs, labels, tally.usable, skipped)
    skipped.sort(key=lambda item: item[0].as_posix())
    return DatasetScan(
        root=root,
        labels=labels,
        layout=layout,
        splits=_split(layout, class_dirs, tally.usable, labels, config),
        skipped=skipped,
        total_bytes=tally.total_bytes,
        image_sizes=tally.image_sizes,
        image_modes=tally.modes,
        formats=tally.formats,
        sizes=tally.sizes,
    )


#: A class folder found by the scan: (its split folder's split or None, the class name, the folder).
_ClassDir = tuple[str | None, str, Path]


def _find_class_dirs(root: Path, layout: str, skipped: list[tuple[Path, str]]) -> list[_ClassDir]:
    """The class folders of either layout; stray files and hidden folders on the way go to ``skipped``."""
    class_dirs: list[_ClassDir] = []
    for p in sorted(p for p in root.iterdir() if not p.is_dir()):
        if p.name not in IGNORED_ROOT_FILES:
            skipped.append((p, "not in a class folder"))
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(".")):
        skipped.append((d, "hidden folder"))
    if layout == "split_folders":
        for split_dir in _subdirs(root):
            split = SPLIT_DIRS[split_dir.name]
            for p in sorted(split_dir.iterdir()):
                if p.name.startswith("."):
                    skipped.append((p, "hidden folder" if p.is_dir() else "hidden file"))
                elif not p.is_dir():
                    skipped.append(
                        (p, f"not in a class folder (files in {split_dir.name}/ need a class subfolder)")
                    )
            class_dirs.extend((split, d.name, d) for d in _subdirs(split_dir))
    else:
        class_dirs.extend((None, d.name, d) for d in _subdirs(root))
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders; put the images in one subfolder per class "
            "(e.g. cat/, dog/), or in train/<class>/ (and val/<class>/, test/<class>/)"
        )
    return class_dirs


def _labels(root: Path, layout: str, class_dirs: list[_ClassDir]) -> list[str]:
    """The sorted class names; with split folders every class must have training images."""
    labels = sorted({name for _, name, _ in class_dirs})
    if layout == "split_folders":
        train_classes = {name for split, name, _ in class_dirs if split == "train"}
        extra = sorted(set(labels) - train_classes)
        if extra:
            raise DataError(
                f"class folder(s) {', '.join(extra)} appear in val/ or test/ of {root} but not in train/; "
                "add training images for them or remove them"
            )
    return labels


@dataclass
class _Tally:
    """The usable samples of each class folder (by its index in the class folders) and their statistics."""

    usable: dict[int, list[Sample]]
    sizes: dict[Path, int] = field(default_factory=dict)
    image_sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    formats: Counter[str] = field(default_factory=Counter)
    total_bytes: int = 0

    def add(self, n: int, label: int, info: FileInfo) -> None:
        self.usable[n].append(Sample(info.path, label))
        self.sizes[info.path] = info.size
        self.total_bytes += info.size
        self.image_sizes[(info.width, info.height)] += 1
        self.modes[info.mode] += 1
        self.formats[info.format] += 1


def _check_files(
    class_dirs: list[_ClassDir], labels: list[str], max_pixels: int, skipped: list[tuple[Path, str]]
) -> _Tally:
    """Name checks (no I/O), then the headers of the candidate files in parallel: in the decode worker
    processes where they run (reading headers is Python, which threads run one at a time), sent while the
    walk goes on and tallied as they come back."""
    check = StreamedMap(partial(check_file_fields, max_pixels=max_pixels))
    candidates: list[tuple[int, Path]] = []
    for n, (_, _, folder) in enumerate(class_dirs):
        for path in _walk_files(folder, skipped):
            reason = skip_reason_by_name(path)
            if reason is None:
                candidates.append((n, path))
                check.add(str(path))
            else:
                skipped.append((path, reason))
    index = {name: i for i, name in enumerate(labels)}
    tally = _Tally(usable={n: [] for n in range(len(class_dirs))})
    for (n, path), row in zip(candidates, check.results(), strict=True):
        info = FileInfo(path, *row)
        if info.reason is not None:
            skipped.append((info.path, info.reason))
        else:
            tally.add(n, index[class_dirs[n][1]], info)
    return tally


def _require_usable(
    root: Path,
    class_dirs: list[_ClassDir],
    labels: list[str],
    usable: dict[int, list[Sample]],
    skipped: list[tuple[Path, str]],
) -> None:
    """Every class folder holds a usable image, and there are at least 2 classes."""
    for n, (_, _, folder) in enumerate(class_dirs):
        if usable[n]:
            continue
        bad = [(p, r) for p, r in skipped if folder in p.parents]
        if not bad:
            raise DataError(f"class folder {folder} is empty; put images of that class in it or delete it")
        shown = "; ".join(f"{p.name}: {r}" for p, r in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise DataError(
            f"class folder {folder} has no usable images ({len(bad)} file(s) skipped: {shown}); "
            "add readable JPEG/PNG/WEBP/BMP images or delete the folder"
        )
    if len(labels) < 2:
        raise DataError(
            f"found {len(labels)} class ({', '.join(labels)}) in {root}; a classifier needs at least 2 class "
            "folders, add a folder of images for each other class"
        )


def _split(
    layout: str,
    class_dirs: list[_ClassDir],
    usable: dict[int, list[Sample]],
    labels: list[str],
    config: DataConfig,
) -> dict[str, list[Sample]]:
    """Stratified and seeded without split folders; else as the folders say (val taken from train if absent)."""
    if layout == "class_folders":
        everything = [s for n in usable for s in usable[n]]
        return stratified_split(everything, labels, config.val_fraction, config.test_fraction, config.seed)
    by_split: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for n, (split, _, _) in enumerate(class_dirs):
        by_split[split or "train"].extend(usable[n])
    if not any(split == "val" for split, _, _ in class_dirs):
        parts = stratified_split(by_split["train"], labels, config.val_fraction, 0.0, config.seed)
        by_split["train"], by_split["val"] = parts["train"], parts["val"]
    return {k: sorted(v, key=lambda s: (s.label, s.path.as_posix())) for k, v in by_split.items()}
