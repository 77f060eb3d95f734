"""What optimizing a package starts from: its config and the images of its training data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ShipyardError
from edge.manifest import Manifest
from training.optimize.builders import OptimizeData


def optimize_config_for(
    manifest: Manifest, config_file: str | Path | None = None, overrides: list[str] | None = None
) -> Any:
    """The :class:`training.config.TrainingConfig` for optimizing a package.

    The package's own training config is the base (its data section says where the training split is);
    a config file given here replaces its ``optimize`` section; ``--set`` overrides come last.

    Raises:
        ConfigError: a bad file, key or value.
    """
    from edge.config import deep_merge, parse_overrides, read_yaml_mapping, section_mapping, validate_config
    from training.config import TrainingConfig, saved_sections

    raw = saved_sections(manifest.training_config)
    source = "package config"
    if config_file is not None:
        loaded = read_yaml_mapping(config_file, hint="pass a YAML file such as configs/demo.yaml")
        if "optimize" in loaded:
            raw["optimize"] = section_mapping(loaded, "optimize", config_file)
        source = str(config_file)
    return validate_config(TrainingConfig, deep_merge(raw, parse_overrides(overrides)), source)


def _subset(items: list, limit: int | None, rng: np.random.Generator) -> list:
    """At most ``limit`` of ``items``, drawn at random, in their order (splits are ordered by class)."""
    if limit is None or len(items) <= limit:
        return items
    keep = np.sort(rng.choice(len(items), limit, replace=False))
    return [items[i] for i in keep]


def _scan(manifest: Manifest, config: Any) -> tuple[Any, str | None]:
    """The scanned dataset of the package's data folder, or the problem that keeps it from being used."""
    from training.data import scan_dataset

    path = config.data.path
    if path is None:
        return None, "the package's config has no data.path; pass --data DIR"
    if not Path(path).is_dir():
        return None, (
            f"the training data folder {str(path)!r} does not exist (moved or deleted since training?); "
            "pass --data DIR with the folder the package was trained on"
        )
    try:
        scan = scan_dataset(path, config.data)
    except ShipyardError as exc:
        return None, f"the training data at {path} cannot be read: {exc}"
    if scan.labels != manifest.labels:
        return None, (
            f"the data at {path} has classes {scan.labels}, the model {manifest.labels}; pass --data DIR "
            "with the folder the package was trained on"
        )
    return scan, None


def _labels(y: Any) -> np.ndarray | None:
    return None if y is None else np.asarray(y, dtype=np.int64)


def load_optimize_data(manifest: Manifest, config: Any) -> OptimizeData:
    """Load the package's training and test splits as in training (same folder, seed and fractions).

    Never raises for missing data: the returned :class:`OptimizeData` says what the problem is, and the
    variants that need the images become failed rows.
    """
    from training.data import load_split_arrays

    scan, problem = _scan(manifest, config)
    if problem is not None:
        return OptimizeData(problem=problem)
    opt, path = config.optimize, config.data.path
    notes = []
    if manifest.dataset is not None and scan.fingerprint() != manifest.dataset.fingerprint:
        notes.append(
            f"the dataset at {path} changed since training (fingerprint differs): the test split may overlap "
            "what the model was trained on"
        )
    train = _subset(
        list(scan.splits.get("train", [])), opt.fine_tune_samples, np.random.default_rng(opt.seed)
    )
    split = "test" if scan.splits.get("test") else "val"
    # decode only what is evaluated
    test = _subset(list(scan.splits.get(split, [])), opt.eval_samples, np.random.default_rng(opt.seed))
    if not test:
        notes.append("the dataset has no test or validation split: accuracy was not measured")
    try:
        train_x, train_y = load_split_arrays(train, manifest.input) if train else (None, None)
        test_x, test_y = load_split_arrays(test, manifest.input) if test else (None, None)
    except ShipyardError as exc:
        return OptimizeData(problem=f"the training data at {path} cannot be decoded: {exc}")
    return OptimizeData(
        train_x=train_x,
        train_y=_labels(train_y),
        test_x=test_x,
        test_y=_labels(test_y),
        test_split=split,
        problem=None if train else f"the data at {path} has no training split",
        notes=notes,
    )
