"""The training side's stage functions, called by the front door: ``run_train``, ``run_evaluate``, ``run_pipeline``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from edge.manifest import Manifest, read_manifest
from training.config import DataConfig, TrainingConfig, saved_training_config


@dataclass
class TrainOutcome:
    """What :func:`run_train` made: the package folder, its manifest, the evaluation table and the run's length."""

    package: Path
    manifest: Manifest | None  # None on the non-chief workers of a multi-worker run
    evaluation_table: str
    epochs: int
    seconds: float


@dataclass
class EvaluateOutcome:
    """What :func:`run_evaluate` measured: the printed table and the full :class:`training.evaluate.Evaluation`."""

    table: str
    evaluation: Any


@dataclass
class PipelineOutcome:
    """What :func:`run_pipeline` made: the package, its registry tag, the training outcome, the
    optimization outcome (``None`` when optimization was skipped) and the report page (``index.html``)."""

    package: Path
    tag: str | None
    train: TrainOutcome
    optimize: Any | None
    blocked: str | None = None
    report_page: Path | None = None

    @property
    def exit_code(self) -> int:
        """0, or the optimization's exit code (1 when a variant failed to export or failed its gate; 1 as well
        when the package was not registered because of it)."""
        if self.blocked is not None:
            return 1
        return 0 if self.optimize is None else int(self.optimize.exit_code)


def run_train(
    config: TrainingConfig, output: Path | str = "runs", *, resume: Path | str | None = None, verbose: int | str = "auto"
) -> TrainOutcome:
    """Train, evaluate and package. ``resume`` is a run directory (or ``"latest"``) to continue."""
    from training.evaluate import Evaluation
    from training.package import write_package
    from training.train import _update_state, find_resumable, load_run_config, new_version, train
    from training.visualize import check_kinds, recording_callbacks, write_plots

    run_dir = None
    if resume is not None:
        run_dir = find_resumable(Path(output), config.model.name) if str(resume) == "latest" else Path(resume)
        saved = load_run_config(run_dir)
        if config.data.path is not None and saved.data.path != config.data.path:
            saved = saved.model_copy(update={"data": saved.data.model_copy(update={"path": config.data.path})})
        config = saved
    elif config.train.version is None:
        # The recording callbacks write into the run directory while training: fix its name now.
        config = config.model_copy(update={"train": config.train.model_copy(update={"version": new_version()})})
    check_kinds(config.report.kinds)
    recorders = recording_callbacks(config, run_dir or Path(output) / config.model.name / str(config.train.version))
    result = train(config, output, run_dir=run_dir, verbose=verbose, extra_callbacks=recorders)
    if not result.chief:  # another worker of a multi-worker run: the chief writes the package
        note = "(not the chief of the multi-worker run: the chief writes the package)"
        return TrainOutcome(result.run_dir, None, note, result.epochs_run, result.seconds)
    pkg, manifest = write_package(result, config)
    if config.report.plots:
        write_plots(pkg, manifest, config, model=result.model, scan=result.datasets.scan)
    _update_state(pkg, status="done")
    import json

    metrics = json.loads((pkg / "eval" / "metrics.json").read_text())
    ev = Evaluation(metrics=metrics["metrics"], baseline=metrics["majority_baseline"], labels=manifest.labels)
    return TrainOutcome(pkg, manifest, ev.table(), result.epochs_run, result.seconds)


def _samples_for(manifest: Manifest, data: Path | None):
    """The images to evaluate on (the package's own test split, or every image of ``data``), their labels as
    the model's indices, and the labels of the data's train split (for the majority baseline), also as the model's."""
    from training.data import scan_dataset

    if data is None:
        if manifest.dataset is None:
            raise ConfigError("the package records no dataset; pass DATA to evaluate on")
        cfg = saved_training_config(manifest.training_config).data
        if not Path(cfg.path or "").is_dir():
            raise ConfigError(
                f"the package's dataset {cfg.path} is not here; pass DATA (a folder of class folders) to evaluate on"
            )
        scan = scan_dataset(cfg.path, cfg)
        if scan.fingerprint() != manifest.dataset.fingerprint:
            raise ConfigError(
                f"the dataset at {cfg.path} changed since training (fingerprint differs); pass DATA explicitly"
            )
        split = "test" if scan.splits.get("test") else "val"
        return scan, scan.splits[split], [s.label for s in scan.splits.get("train", [])]
    cfg = DataConfig(path=Path(data), val_fraction=0.0, test_fraction=0.0)
    scan = scan_dataset(data, cfg)
    if scan.layout == "split_folders" and scan.splits.get("test"):
        samples = scan.splits["test"]
    else:
        samples = [s for split in scan.splits.values() for s in split]
    unknown = sorted(set(scan.labels) - set(manifest.labels))
    if unknown:
        raise ConfigError(
            f"{data} has classes the model does not know: {', '.join(unknown)}; the model's classes are "
            f"{', '.join(manifest.labels)}"
        )
    mapping = {i: manifest.labels.index(name) for i, name in enumerate(scan.labels)}
    from training.data import Sample

    train_labels = [mapping[s.label] for s in scan.splits.get("train", [])]  # in the model's label space too
    return scan, [Sample(s.path, mapping[s.label]) for s in samples], train_labels


def run_evaluate(
    package: Path | str, data: Path | str | None = None, compare: Path | str | None = None
) -> EvaluateOutcome:
    """Evaluate a package on its test split (or on ``data``), optionally against another package.

    With no ``data``, rewrites the package's ``eval/``.

    Raises:
        ConfigError: no images to evaluate on, classes the model does not know, packages that differ.
    """
    from training.data import load_split_arrays
    from training.evaluate import classification_metrics, evaluate_predictions, write_evaluation
    from training.package import load_package_model, refresh_files

    package = Path(package)
    model, manifest = load_package_model(package)
    scan, samples, train_labels = _samples_for(manifest, Path(data) if data else None)
    if not samples:
        raise ConfigError("there are no images to evaluate on")
    x, y = load_split_arrays(samples, manifest.input)
    probs = model.predict(x.astype(np.float32), verbose=0, batch_size=64)
    train_labels = np.array(train_labels or list(y), dtype=np.int64)
    paths = [Path(s.path).relative_to(scan.root).as_posix() for s in samples]
    top_k = int(manifest.training_config.get("train", {}).get("top_k", 3))
    ev = evaluate_predictions(y, probs, manifest.labels, train_labels, paths=paths, top_k=top_k)
    if compare is not None:
        other, other_manifest = load_package_model(compare)
        if other_manifest.labels != manifest.labels:
            raise ConfigError(f"{compare} has other classes ({other_manifest.labels}) than {package}; cannot compare")
        if other_manifest.input != manifest.input:
            x_other, _ = load_split_arrays(samples, other_manifest.input)
        else:
            x_other = x
        other_probs = other.predict(x_other.astype(np.float32), verbose=0, batch_size=64)
        ev.compared = classification_metrics(y, other_probs, manifest.labels, top_k)
        ev.compared_name = other_manifest.tag
    if data is None:
        history_path = package / "logs" / "history.json"
        import json

        history = json.loads(history_path.read_text()) if history_path.is_file() else None
        write_evaluation(package / "eval", ev, history)
        refresh_files(package, manifest, ("eval",))
    return EvaluateOutcome(table=ev.table(), evaluation=ev)


def run_pipeline(
    config: TrainingConfig,
    output: Path | str = "runs",
    *,
    verbose: int | str = "auto",
    optimize: bool = True,
    progress=None,
    allow_failed_gates: bool = False,
) -> PipelineOutcome:
    """Train, evaluate, package, optimize (build and check the edge variants), write the report page
    (``index.html``) and register.

    A package whose default serving variant failed its gate (or its export) is not registered, so it cannot
    be deployed by accident: :attr:`PipelineOutcome.tag` is ``None`` and :attr:`PipelineOutcome.blocked` says
    why; ``allow_failed_gates`` registers it anyway (with a warning through ``progress``). The caller decides
    the exit code (:attr:`PipelineOutcome.exit_code`).
    """
    from training.registry import gate_problem, register

    outcome = run_train(config, output, verbose=verbose)
    if outcome.manifest is None:  # a multi-worker run's non-chief: the chief writes and registers the package
        return PipelineOutcome(package=outcome.package, tag=None, train=outcome, optimize=None)
    optimized = None
    blocked = None
    if optimize:
        from training.optimize import run_optimize

        optimized = run_optimize(outcome.package, config, progress=progress)
    page = _report_page(outcome.package, config, progress)
    if optimize:
        blocked = gate_problem(read_manifest(outcome.package))
    if blocked is not None and allow_failed_gates:
        _say(progress, f"WARNING: registering despite a failed gate (--allow-failed-gates): {blocked}")
        blocked = None
    tag = register(outcome.package) if blocked is None else None
    return PipelineOutcome(
        package=outcome.package, tag=tag, train=outcome, optimize=optimized, blocked=blocked, report_page=page
    )


def _report_page(package: Path, config: TrainingConfig, progress) -> Path:
    """Write the package's report page (``index.html``: the pictures made at the end of training, metrics,
    optimization), before registering so that the registered package carries it."""
    from training.report import write_report

    page = write_report(package, only=config.report.kinds if config.report.plots else []).path
    if progress is not None:
        progress(f"report page: {page}")
    return page


def _say(progress, line: str) -> None:
    import logging

    logging.getLogger("shipyard.pipeline").warning(line)
    if progress is not None:
        progress(line)


__all__ = ["EvaluateOutcome", "PipelineOutcome", "TrainOutcome", "run_evaluate", "run_pipeline", "run_train"]
