"""The search itself: :func:`run_tune` prepares the folder and the data, runs KerasTuner, writes the report."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import ConfigError
from edge.errors import ShipyardError
from training.config import TrainingConfig, TuneConfig, require_data_dir
from training.tune._kt import kt
from training.tune.folds import make_folds
from training.tune.hparams import HParamsLog
from training.tune.oracles import OBJECTIVES, TUNERS
from training.tune.report import TrialRow, trial_rows, trials_table, write_report
from training.tune.resume import Role, check_resume, distributed_role
from training.tune.space import SearchParam, hyperparameters, parse_space, trial_config, validated
from training.tune.trials import Search, Tuner

TENSORBOARD_DIR = "tensorboard"
FOLDS_DIR = "folds"


@dataclass
class TuneOutcome:
    """What a search produced (on a worker: only ``role``, ``trials_run`` and ``output``)."""

    output: Path
    role: Role
    trials_run: int
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    best_config: TrainingConfig | None = None
    files: dict[str, Path] = field(default_factory=dict)
    stopped: str = ""
    table: str = ""


def default_output(config: TrainingConfig) -> Path:
    """``runs/tune/<model.name>``."""
    return Path("runs") / "tune" / config.model.name


def run_tune(
    config: TrainingConfig,
    output: Path | str | None = None,
    *,
    fresh: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TuneOutcome:
    """Search ``config.tune.space`` with KerasTuner and write the report and ``best.yaml``.

    A search in ``output`` that was interrupted (or ran out of ``tune.max_trials``) resumes where it
    stopped: finished trials are kept, an interrupted one runs again, and ``tune.max_trials`` counts
    them all. In a distributed search (see :func:`distributed_role`) the chief serves the oracle and
    writes the report; workers only run trials.

    Args:
        config: the base config with a ``tune`` section; ``data.path`` must be set (not on the chief).
        output: the search folder (default :func:`default_output`).
        fresh: discard an earlier search in ``output`` instead of resuming it (not on a worker).
        progress: receives one line per event (search start, each finished trial).

    Returns:
        A :class:`TuneOutcome`.

    Raises:
        ConfigError: a bad search space or setting, a resumed search with other settings, a missing
            data folder, too few images for the folds; ShipyardError: every trial failed.
    """
    say = progress or (lambda line: None)
    role = distributed_role()
    if role == "worker" and fresh:
        raise ConfigError(
            "--fresh starts a search over and belongs on the chief (or a search without workers)"
        )
    params = parse_space(config)
    output = Path(output) if output is not None else default_output(config)
    _prepare_output(output, config, fresh, role)
    folds = _prepare_data(config, output, role)
    oracle = _make_oracle(config.tune, params, config.train.epochs)
    hparams = HParamsLog(output / TENSORBOARD_DIR, params, config.tune.objective, config.tune.folds >= 2)
    search = Search(config, params, folds, hparams, os.environ.get("KERASTUNER_TUNER_ID", "tuner0"), say)
    with contextlib.redirect_stdout(sys.stderr):  # KerasTuner prints "Reloading Tuner from ..."
        tuner = Tuner(oracle, search, output, overwrite=fresh)
    if role == "worker":
        return _work(tuner, search, output)
    return _lead(tuner, search, output, role)


def _prepare_output(output: Path, config: TrainingConfig, fresh: bool, role: Role) -> None:
    """Create the search folder, check that a search in it may resume, clear it with ``fresh``."""
    output.mkdir(parents=True, exist_ok=True)
    check_resume(output, config, fresh, role)
    if fresh:
        shutil.rmtree(output / TENSORBOARD_DIR, ignore_errors=True)


def _prepare_data(config: TrainingConfig, output: Path, role: Role) -> list[Path] | None:
    """The folds (with ``tune.folds >= 2``), or None after checking that a validation split exists.

    The chief runs no trial and needs no data.
    """
    if role == "chief":
        return None
    require_data_dir(config)
    if config.tune.folds >= 2:
        return make_folds(config.data, output / FOLDS_DIR, config.tune.folds)
    _require_validation_split(config)
    return None


def _make_oracle(tune: TuneConfig, params: list[SearchParam], max_epochs: int) -> Any:
    objective = kt.Objective(tune.objective, direction=OBJECTIVES[tune.objective].direction)
    oracle = TUNERS[tune.tuner].make_oracle(tune, objective, hyperparameters(params), max_epochs)
    oracle.verbose = 0
    return oracle


def _work(tuner: Tuner, search: Search, output: Path) -> TuneOutcome:
    """A worker: ask the chief for trials until it has none, and run them."""
    search.progress(
        f"{search.tuner_id}: asking the chief at {os.environ['KERASTUNER_ORACLE_IP']}:"
        f"{os.environ['KERASTUNER_ORACLE_PORT']} for trials"
    )
    with _quiet_failures():
        tuner.search()
    search.progress(f"{search.tuner_id}: ran {search.trials_run} trial(s); the chief writes the report")
    return TuneOutcome(output=output, role="worker", trials_run=search.trials_run)


def _lead(tuner: Tuner, search: Search, output: Path, role: Role) -> TuneOutcome:
    """A standalone search or the chief: run the oracle (and the trials), then write the report."""
    config, params, say = search.base, search.params, search.progress
    tune = config.tune
    oracle = tuner.oracle
    done_before = sum(1 for t in oracle.trials.values() if t.status == "COMPLETED")
    oracle.deadline = time.monotonic() + tune.max_time_s if tune.max_time_s else None
    started = time.perf_counter()
    oracle.on_trial_end = _trial_reporter(oracle, params, tune, say)
    search.hparams.write_experiment()
    say(_start_line(tune, len(params), role, bool(search.folds), done_before))
    _search(tuner, tune)
    rows = _finished_rows(oracle, params, output)
    stopped = _stop_reason(oracle, rows, tune)
    best_config = _best_config(config, params, rows[0])
    files = write_report(output, config, params, rows, best_config, stopped)
    say(f"search done in {time.perf_counter() - started:.1f}s ({stopped})")
    return TuneOutcome(
        output=output,
        role=role,
        trials_run=len(rows) - done_before,
        rows=rows,
        best=rows[0],
        best_config=best_config,
        files=files,
        stopped=stopped,
        table=trials_table(rows, params, tune, limit=10),
    )


def _trial_reporter(
    oracle: Any, params: list[SearchParam], tune: TuneConfig, say: Callable[[str], None]
) -> Callable[[Any], None]:
    """The oracle's ``on_trial_end``: one progress line per finished trial."""

    def trial_done(trial: Any) -> None:
        best = oracle.get_best_trials(1)
        best_score = best[0].score if best and best[0].score is not None else float("nan")
        values = ", ".join(
            f"{p.key}={p.display(trial.hyperparameters.values[p.key])}"
            for p in params
            if p.key in trial.hyperparameters.values
        )
        if trial.status == "COMPLETED":
            state = f"{tune.objective} {trial.score:.4f} (best {best_score:.4f})"
        else:
            state = f"{trial.status.lower()}: {_first_line(trial.message)}"
        say(f"trial {trial.trial_id} [{len(oracle.end_order)}/{tune.max_trials}] {state} | {values}")

    return trial_done


def _start_line(tune: TuneConfig, n_params: int, role: Role, folds: bool, done_before: int) -> str:
    return (
        f"{'chief: serving' if role == 'chief' else 'searching'} {n_params} hyperparameter(s) with "
        f"{tune.tuner} ({TUNERS[tune.tuner].description}); objective {tune.objective} "
        f"({OBJECTIVES[tune.objective].direction}); up to {tune.max_trials} trials"
        + (f" or {tune.max_time_s:g}s" if tune.max_time_s else "")
        + (f"; {tune.folds}-fold cross-validation" if folds else "")
        + (f"; resuming with {done_before} finished trial(s)" if done_before else "")
    )


def _search(tuner: Tuner, tune: TuneConfig) -> None:
    """Run KerasTuner's search; too many failures in a row become one ShipyardError line."""
    try:
        with _quiet_failures():
            tuner.search()
    except RuntimeError as exc:  # the oracle gives up after tune.max_failed_trials failures in a row
        if "consecutive failures" not in str(exc):
            raise
        raise ShipyardError(
            f"{tune.max_failed_trials} trials in a row failed, the last with: {_last_failure(str(exc))}"
        ) from None


def _finished_rows(oracle: Any, params: list[SearchParam], output: Path) -> list[TrialRow]:
    """The trials, best first; at least one must have finished."""
    rows = trial_rows(oracle, params)
    if not any(r.status == "COMPLETED" for r in rows):
        failures = [r for r in rows if r.message]
        why = f"; the last failure: {_first_line(failures[-1].message)}" if failures else ""
        raise ShipyardError(f"no trial of the search in {output} finished{why}")
    return rows


def _stop_reason(oracle: Any, rows: list[TrialRow], tune: TuneConfig) -> str:
    if oracle.stopped_by_time:
        return f"stopped by tune.max_time_s = {tune.max_time_s:g}s"
    if len(rows) >= tune.max_trials:
        return f"{len(rows)} of tune.max_trials = {tune.max_trials} trials"
    return (
        f"{tune.tuner} finished its schedule after {len(rows)} trials (tune.max_trials = {tune.max_trials})"
    )


def _best_config(config: TrainingConfig, params: list[SearchParam], best: TrialRow) -> TrainingConfig:
    """The best trial's full config, with an absolute data path so that ``best.yaml`` trains anywhere."""
    best_config = trial_config(config, params, best.values, epochs=best.values.get("tuner/epochs"))
    data_path = best_config.data.path
    if data_path is not None:
        best_config = validated(best_config.training_dump(), {"data.path": str(Path(data_path).resolve())})
    return best_config


@contextlib.contextmanager
def _quiet_failures() -> Any:
    """KerasTuner prints the traceback of every failed trial; the progress line says why in one line."""
    from keras_tuner.src import config as kt_config

    debug, kt_config.DEBUG = kt_config.DEBUG, False
    try:
        yield
    finally:
        kt_config.DEBUG = debug


def _require_validation_split(config: TrainingConfig) -> None:
    from training.data import scan_dataset

    scan = scan_dataset(require_data_dir(config), config.data)
    if not scan.splits["val"]:
        raise ConfigError(
            f"the data in {config.data.path} has no validation split (data.val_fraction = "
            f"{config.data.val_fraction:g}); trials are scored on it: raise data.val_fraction, add a val/ "
            "folder, or set tune.folds to 2 or more"
        )


def _first_line(text: str | None) -> str:
    """The exception line of a traceback that KerasTuner stored, without the exception's class name."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    found = next(
        (line for line in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)\b", line)), lines[-1]
    )
    found = re.sub(r"^[\w.]*(?:FailedTrialError|ShipyardError): ", "", found.strip())
    return found[:300]


def _last_failure(text: str) -> str:
    return _first_line(text.split("\n", 1)[1] if "\n" in text else text)
