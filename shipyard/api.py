"""The Python API: one function per stage, each the same call the ``shipyard`` verb of that name makes.

Every function imports its stage when it is called, so ``import shipyard`` stays light (no TensorFlow,
no BentoML). A config is given as a YAML path, a :class:`~shipyard.config.PipelineConfig` (or training's
:class:`~training.config.TrainingConfig`), a plain mapping, or nothing (the defaults); changes on top of it
as sections (``train={"epochs": 3}``) or dotted keys (``overrides={"train.epochs": 3}``)::

    import shipyard

    run = shipyard.train("configs/demo.yaml", data="demo_data", train={"epochs": 3})
    print(run.evaluation_table)
    report = shipyard.optimize(run.package, variants=["fp32.tflite", "fp32_embedding.tflite", "int8.tflite"])
    tag = shipyard.register(run.package)
    with shipyard.serve(tag, background=True, port=3100) as server:
        print(server.url)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import ConfigError, deep_merge, parse_overrides, validate_config

if TYPE_CHECKING:  # pragma: no cover - types only
    from serving.loadtest.runner import LoadTestOutcome
    from serving.process import ServerProcess
    from shipyard.config import PipelineConfig
    from training.crossval import CrossValOutcome
    from training.ensemble import EnsembleOutcome
    from training.optimize import OptimizeOutcome
    from training.pipeline import EvaluateOutcome, PipelineOutcome, TrainOutcome
    from training.report import ReportOutcome
    from training.tune import TuneOutcome

Progress = Callable[[str], None]


def load_config(
    config: Any = None,
    *,
    data: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    **sections: Mapping[str, Any],
) -> PipelineConfig:
    """The whole-pipeline config from ``config`` with the changes given here applied on top.

    Args:
        config: a YAML path, a config object, a mapping of sections, or ``None`` for the defaults.
        data: the image folder (``data.path``).
        overrides: dotted keys, as a mapping (``{"train.epochs": 3}``) or ``--set`` strings
            (``["train.epochs=3"]``).
        **sections: whole or partial sections, e.g. ``train={"epochs": 3}``, ``serve={"port": 3100}``.

    Returns:
        A validated :class:`~shipyard.config.PipelineConfig` (the input is never modified).

    Raises:
        ConfigError: a missing or malformed file, an unknown key (the message lists the valid ones) or a
            value out of range.
    """
    from shipyard.config import PipelineConfig

    raw, source = _base_mapping(config)
    raw = deep_merge(raw, _nested_overrides(overrides))
    for name, values in sections.items():
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{name}={values!r}: pass a section as a mapping, e.g. {name}={{...}}, or a dotted key in "
                f"overrides={{'{name}.KEY': VALUE}}; sections: {', '.join(PipelineConfig.model_fields)}"
            )
        raw = deep_merge(raw, {name: dict(values)})
    if data is not None:
        raw = deep_merge(raw, {"data": {"path": str(data)}})
    return validate_config(PipelineConfig, raw, source)


def demo_data(out: str | Path, *, size: int = 32) -> dict[str, int]:
    """Write the built-in demo dataset (scikit-learn's 1,797 handwritten digits as PNGs, one folder per
    class) to ``out`` (``shipyard demo-data``); returns the images per class."""
    from training.demo import write_demo_data

    return write_demo_data(Path(out), size=size)


def train(
    config: Any = None,
    *,
    data: str | Path | None = None,
    output: str | Path = "runs",
    resume: str | Path | None = None,
    verbose: int = 0,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    **sections: Mapping[str, Any],
) -> TrainOutcome:
    """Train, evaluate and package a classifier (``shipyard train``).

    Args:
        config, data, overrides, sections: as :func:`load_config`.
        output: the parent folder of runs (``runs/<model.name>/<version>/``).
        resume: a run folder to continue, or ``"latest"`` (the newest unfinished run of this model).
        verbose: Keras progress (0 silent, 1 bar, 2 a line per epoch).

    Returns:
        :class:`~training.pipeline.TrainOutcome`: ``package`` (the folder), ``manifest``,
        ``evaluation_table``, ``epochs``, ``seconds``.

    Raises:
        ConfigError, DataError: bad settings or data (one line saying what and how to fix it).
    """
    from training.pipeline import run_train

    cfg = load_config(config, data=data, overrides=overrides, **sections)
    return run_train(cfg, output, resume=resume, verbose=verbose)


def evaluate(
    package: str | Path, data: str | Path | None = None, *, compare: str | Path | None = None
) -> EvaluateOutcome:
    """Evaluate a package on its own test split, or on another folder of class folders (``shipyard evaluate``).

    Args:
        package: the package folder.
        data: a folder to evaluate on instead (the package's ``eval/`` is then left alone).
        compare: another package to score on the same images.

    Returns:
        :class:`~training.pipeline.EvaluateOutcome`: ``table`` and ``evaluation`` (accuracy, precision,
        recall, F1, the confusion matrix, the majority baseline).
    """
    from training.pipeline import run_evaluate

    return run_evaluate(Path(package), data, compare)


def optimize(
    package: str | Path,
    config: str | Path | None = None,
    *,
    variants: Sequence[str] | None = None,
    data: str | Path | None = None,
    register: bool = False,
    progress: Progress | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> OptimizeOutcome:
    """Build, check and report the edge variants of a package (``shipyard optimize``).

    Args:
        package: the package folder.
        config: a YAML whose ``optimize:`` section replaces the package's own.
        variants: names from the variant table (default: ``optimize.variants``, else all).
        data: the training data folder, if it moved since training.
        register: also update the package in the BentoML model store.
        progress: called with one line per step.
        overrides: dotted keys (``{"optimize.qat_epochs": 1}``).

    Returns:
        :class:`~training.optimize.OptimizeOutcome`: one row per variant (passed, failed its gate, or
        failed to export, with the reason), ``exit_code`` 1 when any did not pass.
    """
    from edge.manifest import read_manifest
    from training.optimize import optimize_config_for, run_optimize

    cfg = optimize_config_for(read_manifest(package), config, _override_strings(overrides))
    return run_optimize(package, cfg, variants=variants, data=data, register=register, progress=progress)


def pipeline(
    config: Any = None,
    *,
    data: str | Path | None = None,
    output: str | Path = "runs",
    optimize: bool = True,
    verbose: int = 0,
    progress: Progress | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    allow_failed_gates: bool = False,
    **sections: Mapping[str, Any],
) -> PipelineOutcome:
    """Train, evaluate, package, optimize and register in one go (``shipyard pipeline``).

    A package whose default serving variant failed its gate is not registered unless ``allow_failed_gates``.

    Returns:
        :class:`~training.pipeline.PipelineOutcome`: ``package``, ``tag`` (in the model store; ``None`` when a
        failed gate blocked it, with the reason in ``blocked``), ``train``, ``optimize`` and ``exit_code``.
    """
    from training.pipeline import run_pipeline

    cfg = load_config(config, data=data, overrides=overrides, **sections)
    return run_pipeline(
        cfg, output, verbose=verbose, optimize=optimize, progress=progress, allow_failed_gates=allow_failed_gates
    )


def register(package: str | Path, *, require_runnable: bool = True) -> str:
    """Put a package into the BentoML model store (``shipyard register``).

    Args:
        package: the package folder.
        require_runnable: refuse a package with no TFLite/ONNX variant to run (nothing could serve it).

    Returns:
        The package's ``name:version`` tag in the store.

    Raises:
        PackageError: not a package, a file whose sha256 differs from the manifest's, or no runnable variant.
    """
    from training.registry import register as register_package

    return register_package(package, require_runnable=require_runnable)


@dataclass(frozen=True)
class RegisteredModel:
    """One package in the model store, as ``shipyard models list`` shows it."""

    tag: str
    created: str
    base: str
    classes: int
    accuracy: float | None
    macro_f1: float | None
    variants: int
    size_mb: float


def models(name: str | None = None) -> list[RegisteredModel]:
    """The Shipyard packages in the BentoML model store, newest first (``shipyard models list``)."""
    from training.registry import list_models

    return [RegisteredModel(**row) for row in list_models(name)]


def promote(
    tag: str,
    alias: str,
    *,
    force: bool = False,
    require_shadow_agreement: float | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """Point ``alias`` of the model at the registered version ``tag`` (``shipyard models promote``).

    A server following the alias (``shipyard serve NAME --alias ALIAS``) loads the version in the background
    and switches to it without dropping a request.

    Args:
        tag: ``name:version`` (``name:latest`` is resolved to its version first).
        alias: e.g. ``production`` or ``candidate``.
        force: promote even when the variant served by default failed its gate.
        require_shadow_agreement: refuse unless the server at ``server`` shadows ``tag`` and its cumulative
            top-1 agreement with the primary is at least this.
        server: the running server's URL (default ``http://127.0.0.1:3000``).

    Returns:
        The alias's entry: ``version``, ``moved``, ``by``, ``history``.

    Raises:
        PackageError: unknown tag, bad alias, tampered files (IntegrityError), a failed gate, or shadow
            agreement below the requirement.
    """
    from serving.aliases import AliasStore
    from serving.settings import resolve_tag
    from training.registry import promotable

    concrete = resolve_tag(tag)
    promotable(concrete, force=force)
    if require_shadow_agreement is not None:
        from serving.shadow import check_agreement

        check_agreement(server or "http://127.0.0.1:3000", concrete, require_shadow_agreement)
    name, version = concrete.split(":", 1)
    return AliasStore().move(name, alias, version)


def rollback(name: str, alias: str) -> dict[str, Any]:
    """Point ``alias`` of model ``name`` back at the version it pointed at before (``shipyard models rollback``).

    Returns:
        The alias's entry after the move.

    Raises:
        PackageError: no such alias, no earlier version, or the earlier version is no longer in the store.
    """
    from serving.aliases import AliasStore, check_alias
    from serving.settings import resolve_tag

    store = AliasStore()
    check_alias(alias)
    entry = store.aliases(name).get(alias)
    if entry is not None and len(entry.get("stack", [])) >= 2:
        resolve_tag(f"{name}:{entry['stack'][-2]}")  # refuse to roll back onto a deleted version
    return store.rollback(name, alias)


def aliases(name: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model name: {alias: entry}}`` of the model store (only ``name``'s when given)."""
    from serving.aliases import AliasStore

    models = AliasStore().read()
    return {name: models.get(name, {})} if name else models


def tune(
    config: Any = None,
    *,
    data: str | Path | None = None,
    output: str | Path | None = None,
    fresh: bool = False,
    progress: Progress | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    **sections: Mapping[str, Any],
) -> TuneOutcome:
    """Search the hyperparameters listed in ``tune.space`` with KerasTuner (``shipyard tune``).

    Returns:
        :class:`~training.tune.TuneOutcome`: the trials, the best one and its config (``best_config``),
        and the report files; a search in ``output`` resumes unless ``fresh``.
    """
    from training.tune import run_tune

    cfg = load_config(config, data=data, overrides=overrides, **sections)
    return run_tune(cfg, output, fresh=fresh, progress=progress)


def ensemble(
    packages: Sequence[str | Path],
    output: str | Path,
    *,
    name: str | None = None,
    progress: Progress | None = None,
) -> EnsembleOutcome:
    """Build one model averaging the probabilities of ``packages`` and write it as a package (``shipyard ensemble``).

    Args:
        packages: two or more package folders with the same labels, input size and test split.
        output: the new package folder (its name becomes the version).
        name: the model name (default: the first member's name with ``-ensemble``).
        progress: called with one line per step.

    Returns:
        :class:`~training.ensemble.EnsembleOutcome`: ``package``, ``manifest``, ``table`` (the ensemble beside
        each member on the test split) and ``metrics`` by name.

    Raises:
        ConfigError: members that differ (labels, input, test split), an output folder that is taken.
    """
    from training.ensemble import run_ensemble

    return run_ensemble([Path(p) for p in packages], output, name=name, progress=progress)


def cross_validate(
    config: Any = None,
    *,
    folds: int = 5,
    data: str | Path | None = None,
    output: str | Path = "runs",
    verbose: int = 0,
    progress: Progress | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    **sections: Mapping[str, Any],
) -> CrossValOutcome:
    """K-fold cross-validation of a config (``shipyard evaluate --folds K CONFIG``).

    Args:
        config, data, overrides, sections: as :func:`load_config`.
        folds: K, the number of stratified folds (>= 2).
        output: the parent folder of runs (``<output>/<model.name>/cv-<version>/``).
        verbose: Keras progress for each fold's training.
        progress: called with one line per step.

    Returns:
        :class:`~training.crossval.CrossValOutcome`: ``metrics`` (per fold, mean and standard deviation of
        each metric), ``table``, ``packages`` (one per fold) and ``folder``.
    """
    from training.crossval import cross_validate as run_cross_validation

    cfg = load_config(config, data=data, overrides=overrides, **sections)
    return run_cross_validation(cfg, folds, output, verbose=verbose, progress=progress)


def report(
    package: str | Path,
    *,
    only: Sequence[str] | None = None,
    refresh: bool = False,
    data: str | Path | None = None,
    out: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    progress: Callable[[Any], None] | None = None,
) -> ReportOutcome:
    """Write the package's self-contained report page, ``index.html`` (``shipyard report``).

    Returns:
        :class:`~training.report.ReportOutcome`: the page's ``path``, the pictures shown and why any is missing.
    """
    from training.report import write_report

    return write_report(
        package,
        only=list(only) if only else None,
        refresh=refresh,
        data=data,
        overrides=_override_strings(overrides),
        out=out,
        progress=progress,
    )


def serve(
    tag: str | None = None,
    *,
    config: str | Path | None = None,
    background: bool = False,
    ready_timeout_s: float = 180.0,
    log: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    **settings: Any,
) -> ServerProcess | int:
    """Serve a registered model over HTTP with ``bentoml serve`` (``shipyard serve``).

    Args:
        tag: ``name:version`` or ``name:latest`` in the model store (default: ``serve.model``).
        config: a YAML with a ``serve:`` section (a pipeline config works).
        background: start the server and return once it answers ``/readyz``; the returned
            :class:`~serving.process.ServerProcess` has ``url`` and ``stop()`` and is a context manager.
            Otherwise run in the foreground until Ctrl+C or SIGTERM.
        ready_timeout_s: how long a background server may take to become ready.
        log: where a background server's output goes (default: a new temporary folder's ``server.log``).
        overrides: dotted keys (``{"serve.max_batch_size": 8}``).
        **settings: :class:`~serving.config.ServeConfig` fields, e.g. ``port=3100``, ``variant="int8.tflite"``.

    Returns:
        The running :class:`~serving.process.ServerProcess` with ``background``, else the server's exit code.

    Raises:
        PackageError: no tag, or a tag the model store does not have. ConfigError: a bad setting.
    """
    from serving.process import ServerProcess, run_foreground

    serve_config = serve_config_for(tag, config, overrides, settings)
    if not background:
        return run_foreground(serve_config)
    if log is None:
        import tempfile

        log = Path(tempfile.mkdtemp(prefix="shipyard-serve-")) / "server.log"
    server = ServerProcess(serve_config, Path(log))
    try:
        server.start()
        server.wait_ready(ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def serve_config_for(
    tag: str | None,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Any:
    """The :class:`~serving.config.ServeConfig` from a file's ``serve:`` section, dotted overrides, then
    ``settings`` and ``tag``, checked against the model store.

    Raises:
        ConfigError: a bad file, key or value. PackageError: no tag, or a tag the store does not have.
    """
    from edge.config import load_section
    from edge.errors import PackageError
    from serving.config import ServeConfig
    from training.registry import package_path

    raw = load_section(config, "serve", _override_strings(overrides), command="shipyard serve")
    raw.update({k: v for k, v in (settings or {}).items() if v is not None})
    if tag is not None:
        raw["model"] = tag
    serve_config = validate_config(ServeConfig, raw, str(config) if config is not None else "serve settings")
    if serve_config.model is None:
        raise PackageError(
            "no model to serve: pass a tag (shipyard serve NAME:VERSION, or NAME:latest); "
            "'shipyard models list' shows the registered ones"
        )
    from serving.settings import model_tag

    # fails early, with the store's listing hint, when the tag or the alias is unknown
    package_path(model_tag(serve_config) if serve_config.alias or serve_config.shadow else serve_config.model)
    return serve_config


def loadtest(
    host: str | None = None,
    *,
    serve: str | None = None,
    config: str | Path | None = None,
    output: str | Path | None = None,
    progress: Progress | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    **settings: Any,
) -> LoadTestOutcome:
    """Load-test a running service, or one started for the test with ``serve=TAG`` (``shipyard loadtest``).

    Args:
        host: the service's URL (default ``loadtest.host``); ignored with ``serve``.
        serve: a model tag to start a server for, on a free port, stopped afterwards.
        config: a YAML with a ``loadtest:`` section.
        output: the report folder (default ``runs/loadtest/<time>``).
        progress: called with one line per step.
        overrides: dotted keys (``{"loadtest.users": 16}``).
        **settings: :class:`~serving.loadtest.config.LoadTestConfig` fields, e.g. ``users=16``, ``duration_s=10``.

    Returns:
        :class:`~serving.loadtest.runner.LoadTestOutcome`: throughput, latency percentiles, failures, each
        limit's check and ``passed``.
    """
    from edge.config import load_section
    from serving.loadtest.cli import run_config
    from serving.loadtest.config import LoadTestConfig

    raw = load_section(config, "loadtest", _override_strings(overrides), command="shipyard loadtest")
    raw.update({k: v for k, v in settings.items() if v is not None})
    if host is not None:
        raw["host"] = host
    cfg = validate_config(LoadTestConfig, raw, str(config) if config is not None else "loadtest settings")
    return run_config(cfg, serve=serve, output=output, progress=progress)


def _base_mapping(config: Any) -> tuple[dict[str, Any], str]:
    """The plain nested mapping of ``config`` and the name errors should give it."""
    from pydantic import BaseModel

    from edge.config import read_yaml_mapping

    if config is None:
        return {}, "config"
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json", exclude_unset=False), "config"
    if isinstance(config, Mapping):
        return deep_merge({}, dict(config)), "config"
    if isinstance(config, str | Path):
        return read_yaml_mapping(config, hint="pass a YAML file such as configs/demo.yaml"), str(config)
    raise ConfigError(
        f"config={config!r} ({type(config).__name__}): pass a YAML path, a PipelineConfig, a mapping or None"
    )


def _nested_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """``{"train.epochs": 3}`` or ``["train.epochs=3"]`` as a nested mapping (strings parsed as YAML)."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        nested: dict[str, Any] = {}
        for key, value in overrides.items():
            parts = str(key).split(".")
            if len(parts) < 2 or not all(parts):
                raise ConfigError(f"override key {key!r} must be section.key, e.g. 'train.epochs'")
            node = nested
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return nested
    if isinstance(overrides, str):
        overrides = [overrides]
    return parse_overrides(list(overrides))


def _override_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """Overrides in the ``--set`` form (``KEY=VALUE`` strings) for stages that take that form."""
    import json

    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)
