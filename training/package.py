"""Writes the model package (see DESIGN.md) from a finished training run, and reads it back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.manifest import (
    DatasetInfo,
    HeldOutSplit,
    InputContract,
    Manifest,
    VariantInfo,
    read_manifest,
    record_tree,
    verify_file,
    write_manifest,
)
from edge.reference import ReferenceStats, build_reference_stats, write_reference
from training.config import TrainingConfig

KERAS_FILE = "keras/model.keras"
REFERENCE_SAMPLE = 512


def reference_statistics(
    model, images: np.ndarray, labels: np.ndarray, class_names: list[str], original_sizes: list[tuple[int, int]]
) -> tuple[ReferenceStats, np.ndarray]:
    """Statistics of a reference split (validation) for drift monitoring.

    Returns:
        (stats, embeddings): the :class:`edge.reference.ReferenceStats` of the split (see
        :func:`edge.reference.build_reference_stats`) and a sample of raw penultimate-layer embeddings
        (float32, at most REFERENCE_SAMPLE rows).
    """
    from training.models import embedding_model

    rng = np.random.default_rng(0)
    if len(images) > REFERENCE_SAMPLE:
        keep = np.sort(rng.choice(len(images), REFERENCE_SAMPLE, replace=False))
        images, labels = images[keep], labels[keep]
        original_sizes = [original_sizes[i] for i in keep]
    two = embedding_model(model)
    probs, emb = two.predict(images.astype(np.float32), verbose=0, batch_size=64)
    stats = build_reference_stats(probs, emb, labels, class_names, images, original_sizes)
    return stats, emb.astype(np.float32)


def _original_sizes(samples) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for s in samples:
        try:
            with Image.open(s.path) as img:
                sizes.append(img.size)
        except Exception:
            sizes.append((0, 0))
    return sizes


def write_package(result, config: TrainingConfig, *, top_k: int | None = None) -> tuple[Path, Manifest]:
    """Evaluate a trained model and write the full package into its run directory.

    Writes keras/model.keras (no optimizer state), eval/, reference/, logs/history.json and manifest.json.

    Args:
        result: a :class:`training.train.TrainResult`.
        config: the config the run used.

    Returns:
        (package directory, manifest).
    """
    from training.evaluate import evaluate_predictions, write_evaluation

    pkg = Path(result.run_dir)
    scan = result.datasets.scan
    _save_clean_model(result.model, pkg)
    held_out = _predict_held_out(result)
    train_labels = np.array([s.label for s in scan.splits["train"]], dtype=np.int64)
    evaluation = evaluate_predictions(
        held_out.y,
        held_out.probs,
        scan.labels,
        train_labels,
        paths=held_out.paths,
        top_k=top_k or config.train.top_k,
    )
    write_evaluation(pkg / "eval", evaluation, result.history)
    _write_reference_files(pkg, result, held_out)
    _write_history(pkg, result.history)
    manifest = _build_manifest(result, config, evaluation, held_out)
    _record_package_files(pkg, manifest)
    write_manifest(pkg, manifest)
    return pkg, manifest


@dataclass(frozen=True)
class _HeldOut:
    """The split the package is evaluated on, its images' relative paths, labels and the model's outputs."""

    split: str
    paths: list[str]
    y: np.ndarray
    probs: np.ndarray


def _save_clean_model(model, pkg: Path) -> None:
    """Save the model without optimizer or compile state to ``keras/model.keras``."""
    from training._tf import keras

    (pkg / "keras").mkdir(exist_ok=True)
    clean = keras.Model(model.inputs, model.outputs, name=model.name)
    clean.save(pkg / KERAS_FILE)


def _predict_held_out(result) -> _HeldOut:
    """Run the model on the test split (the validation split when there is none)."""
    from training.data import load_split_arrays

    ds = result.datasets
    scan = ds.scan
    samples = scan.splits.get("test") or scan.splits.get("val") or []
    split = "test" if scan.splits.get("test") else "val"
    x, y = load_split_arrays(samples, ds.contract)
    probs = (
        result.model.predict(x.astype(np.float32), verbose=0, batch_size=64)
        if len(x)
        else np.zeros((0, len(scan.labels)))
    )
    paths = [Path(s.path).relative_to(scan.root).as_posix() for s in samples]
    return _HeldOut(split=split, paths=paths, y=y, probs=probs)


def _write_reference_files(pkg: Path, result, held_out: _HeldOut) -> None:
    """``reference/predictions.npz`` (the held-out outputs) and the drift statistics of the validation split."""
    from training.data import load_split_arrays

    ds = result.datasets
    scan = ds.scan
    ref_dir = pkg / "reference"
    ref_dir.mkdir(exist_ok=True)
    np.savez_compressed(
        ref_dir / "predictions.npz",
        paths=np.array(held_out.paths, dtype=str),
        labels=held_out.y.astype(np.int64),
        probabilities=held_out.probs.astype(np.float32),
    )
    ref_samples = scan.splits.get("val") or scan.splits["train"]
    ref_x, ref_y = load_split_arrays(ref_samples, ds.contract)
    stats, emb = reference_statistics(result.model, ref_x, ref_y, scan.labels, _original_sizes(ref_samples))
    write_reference(pkg, stats, emb)


def _write_history(pkg: Path, history) -> None:
    logs = pkg / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "history.json").write_text(json.dumps(history, indent=2))


def _build_manifest(result, config: TrainingConfig, evaluation, held_out: _HeldOut) -> Manifest:
    """The manifest of a freshly written package, with the Keras reference as its one variant."""
    from training.models import count_params

    ds = result.datasets
    cfg = config.model
    manifest = Manifest(
        name=cfg.name,
        version=Path(result.run_dir).name,
        labels=ds.scan.labels,
        input=InputContract(height=ds.contract.height, width=ds.contract.width),
        base_model={
            "name": cfg.base if cfg.base_model is None else f"file:{cfg.base_model}",
            "weights": cfg.weights,
            "cut_at": cfg.cut_at,
            "freeze": cfg.freeze,
            "alpha": cfg.alpha,
            "parameters": count_params(result.model),
        },
        training_config=config.training_dump(),
        dataset=DatasetInfo.model_validate(ds.dataset_info().model_dump()),
        held_out=HeldOutSplit(split=held_out.split, files=held_out.paths),
        metrics={
            **evaluation.summary(),
            "evaluated_on": held_out.split,
            "majority_baseline_accuracy": evaluation.baseline["accuracy"],
            "epochs": result.epochs_run,
            "phase_epochs": result.phase_epochs,
            "train_seconds": round(result.seconds, 2),
            **_batch_memory(ds.plan),
        },
    )
    manifest.variants["keras"] = VariantInfo(file=KERAS_FILE, format="keras", status="passed", quantization="none")
    return manifest


def _record_package_files(pkg: Path, manifest: Manifest) -> None:
    """Hash every file the package holds into the manifest, and the Keras file into its variant."""
    for sub in ("keras", "eval", "reference", "logs"):
        if (pkg / sub).is_dir():
            record_tree(pkg, manifest, sub)
    entry = manifest.files[KERAS_FILE]
    manifest.variants["keras"].sha256, manifest.variants["keras"].bytes = entry.sha256, entry.bytes


def _batch_memory(plan) -> dict:
    """The batch size's memory arithmetic (``metrics.batch_memory``), when the model was measured."""
    if getattr(plan, "memory", None) is None:
        return {}
    return {"batch_memory": {**plan.memory.to_dict(plan.batch_per_replica), "replicas": plan.replicas}}


def load_package_model(package: Path | str):
    """Load the Keras float reference of a package after verifying its sha256 (``safe_mode=True``)."""
    from training.models import load_keras_model

    manifest = read_manifest(package)
    path = verify_file(package, manifest, KERAS_FILE)
    return load_keras_model(path), manifest


def refresh_files(package: Path | str, manifest: Manifest, subdirs: tuple[str, ...] = ("eval",)) -> Manifest:
    """Re-hash the files under ``subdirs`` (after a stage rewrote them) and save the manifest."""
    for sub in subdirs:
        for rel in [r for r in manifest.files if r.startswith(sub + "/")]:
            if not (Path(package) / rel).is_file():
                del manifest.files[rel]
        if (Path(package) / sub).is_dir():
            record_tree(package, manifest, sub)
    write_manifest(package, manifest)
    return manifest



