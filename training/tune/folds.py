"""Stratified k-fold cross-validation folds of a data folder, written as split folders.

:func:`assign_folds` is the split itself (a pure function); :func:`make_folds` writes the folds as
``fold-i/{train,val}/<class>/`` folders of links that any stage (``tune.folds``, a later
``evaluate --folds``) can train and score on like any data folder.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from training.config import DataConfig

FOLDS_RECORD = "folds.json"


def assign_folds(
    samples: list[Any], labels: list[str], k: int, seed: int, *, setting: str = "tune.folds"
) -> dict[Path, int]:
    """Deal the samples per class, shuffled with ``seed``, into ``k`` folds.

    Each class is shuffled by its own generator seeded with ``(seed, crc32(class name))`` and dealt
    round-robin, so fold sizes per class differ by at most one and a class's folds do not change
    when other classes are added.

    Args:
        samples: :class:`training.data.Sample` objects (``path``, ``label``).
        labels: class names, indexed by ``Sample.label``.
        k: the number of folds (>= 2).
        seed: the shuffle seed (``data.seed``).
        setting: the config key that asked for ``k`` folds, named in the error.

    Returns:
        ``{sample path: fold index in 0..k-1}``.

    Raises:
        ConfigError: a class has fewer than ``k`` images.
    """
    by_class: dict[int, list[Any]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    fold_of: dict[Path, int] = {}
    for label, items in sorted(by_class.items()):
        if len(items) < k:
            raise ConfigError(
                f"{setting} = {k} needs at least {k} images of every class in the train and validation splits; "
                f"class {labels[label]!r} has {len(items)}. Lower {setting} or add images"
            )
        items = sorted(items, key=lambda s: s.path.as_posix())
        rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(labels[label].encode())])
        for position, index in enumerate(rng.permutation(len(items))):
            fold_of[items[index].path] = position % k
    return fold_of


def make_folds(data: DataConfig, root: Path, k: int, *, setting: str = "tune.folds") -> list[Path]:
    """Write ``k`` stratified cross-validation folds of the training data as split folders.

    The images of the train and validation splits (the test split stays out) are dealt per class,
    shuffled with ``data.seed``, into ``k`` folds (:func:`assign_folds`). Fold ``i`` is
    ``root/fold-i/{train,val}/<class>/`` holding symbolic links to the images (copies where links are
    not possible): ``val`` is fold ``i``, ``train`` the others. Written once (atomically, so parallel
    workers can share ``root``) and reused while the data and ``k`` stay the same.

    Args:
        data: the data section; ``data.path`` must be set.
        root: the folder that receives the folds.
        k: the number of folds.
        setting: the config key that asked for the folds, named in errors.

    Returns:
        The ``k`` fold folders.

    Raises:
        ConfigError: ``data.path`` is not set, or a class has fewer than ``k`` images.
        DataError: the data folder cannot be scanned.
    """
    from training.data import scan_dataset

    if data.path is None:
        raise ConfigError("data.path is not set; set it in the config or pass --data DIR")
    scan = scan_dataset(data.path, data)
    stamp = {"fingerprint": scan.fingerprint(), "k": k, "seed": data.seed}
    folders = [root / f"fold-{i + 1}" for i in range(k)]
    if _folds_current(root, stamp, folders):
        return folders
    pool = scan.splits["train"] + scan.splits["val"]
    fold_of = assign_folds(pool, scan.labels, k, data.seed, setting=setting)
    tmp = root.parent / f".{root.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_fold_tree(tmp, scan, pool, fold_of, k)
    (tmp / FOLDS_RECORD).write_text(json.dumps(stamp))
    _publish(tmp, root)
    return folders


def _folds_current(root: Path, stamp: dict[str, Any], folders: list[Path]) -> bool:
    """Whether ``root`` already holds these folds (same data fingerprint, ``k`` and seed)."""
    record = root / FOLDS_RECORD
    return record.is_file() and json.loads(record.read_text()) == stamp and all(f.is_dir() for f in folders)


def _write_fold_tree(tmp: Path, scan: Any, pool: list[Any], fold_of: dict[Path, int], k: int) -> None:
    for s in pool:
        rel = s.path.relative_to(scan.root).as_posix().replace("/", "__")
        for i in range(k):
            split = "val" if fold_of[s.path] == i else "train"
            dest = tmp / f"fold-{i + 1}" / split / scan.labels[s.label] / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            _link(s.path, dest)


def _publish(tmp: Path, root: Path) -> None:
    """Move the written folds into place with one rename (another worker may have been first)."""
    shutil.rmtree(root, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another worker put the same folds there first
        shutil.rmtree(tmp, ignore_errors=True)


def _link(src: Path, dest: Path) -> None:
    try:
        os.symlink(src, dest)
    except OSError:
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)


__all__ = ["assign_folds", "make_folds"]
