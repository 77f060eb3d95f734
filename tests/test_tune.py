"""Hyperparameter search (``shipyard tune``) on the 3-class demo digits with tiny spaces and budgets."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import yaml
from _support import BIN, TINY_TRAIN, run_cli

from edge.config import ConfigError
from edge.errors import ShipyardError
from training.config import TrainingConfig, TuneConfig, load_training_config

# A tiny space over four kinds of entries: a log-scaled float, a stepped float, a choice of lists, a choice of
# strings. 1-epoch trials of the small CNN, scored on the validation split.
SPACE = {
    "train.learning_rate": {"type": "float", "min": 0.001, "max": 0.01, "log": True},
    "model.head.dropout": {"type": "float", "min": 0.0, "max": 0.4, "step": 0.1},
    "model.head.dense": {"type": "choice", "values": [[], [16], [32, 16]]},
    "train.loss": {"type": "choice", "values": ["crossentropy", "focal"]},
}
TINY_TUNE = [*TINY_TRAIN, "train.epochs=1", "train.deterministic=true", "model.name=tuned"]


def _config(data: Path, *extra: str, space: dict | None = None) -> TrainingConfig:
    return load_training_config(None, [*TINY_TUNE, f"tune.space={json.dumps(space or SPACE)}", *extra], data=data)


def _config_file(path: Path, data: Path, *extra: str, space: dict | None = None) -> Path:
    """The same config as a YAML file, for the CLI."""
    path.write_text(yaml.safe_dump(_config(data, *extra, space=space).model_dump(mode="json"), sort_keys=False))
    return path


def _trial_records(output: Path) -> dict[str, dict]:
    return {
        p.parent.name.removeprefix("trial_"): json.loads(p.read_text())
        for p in (output / "search").glob("trial_*/shipyard_trial.json")
    }


def _kt_trials(output: Path) -> dict[str, dict]:
    return {
        p.parent.name.removeprefix("trial_"): json.loads(p.read_text())
        for p in (output / "search").glob("trial_*/trial.json")
    }


def _val_accuracy(package: Path) -> float:
    """Accuracy of a package's Keras model on the validation split its config makes."""
    from training.data import load_split_arrays, scan_dataset
    from training.package import load_package_model

    model, manifest = load_package_model(package)
    cfg = TrainingConfig.model_validate(manifest.training_config)
    scan = scan_dataset(cfg.data.path, cfg.data)
    x, y = load_split_arrays(scan.splits["val"], manifest.input)
    return float(np.mean(model.predict(x.astype(np.float32), verbose=0).argmax(axis=1) == y))


# --------------------------------------------------------------------------------------- bad spaces


@pytest.mark.parametrize(
    ("space", "extra", "expected"),
    [
        ({"train.learnin_rate": {"type": "float", "min": 0.001, "max": 0.01}}, [],
         r"tune.space\['train.learnin_rate'\]: 'learnin_rate' is not a key of train; valid keys there: epochs, learning_rate"),
        ({"train.learning_rate": {"type": "float", "min": 0.01, "max": 0.001}}, [],
         r"'tune.space.train.learning_rate' = .* min 0.01 must be below max 0.001"),
        ({"train.optimizer": {"type": "choice", "values": []}}, [],
         r"'tune.space.train.optimizer' = .* type choice needs a non-empty values list"),
        ({"model.head.dropout": {"type": "float", "min": 0.0, "max": 1.0}}, [],
         r"tune.space\['model.head.dropout'\]: max 1.0 is rejected: 'model.head.dropout' = 1.0 is invalid: .*less than 1"),
        ({"train.optimizer": {"type": "choice", "values": ["adam", "rmsprop"]}}, [],
         r"tune.space\['train.optimizer'\]: value 'rmsprop' is rejected: .*'adam', 'adamw' or 'sgd'"),
        ({"model.head.dense": {"type": "choice", "values": [[], [-8]]}}, [],
         r"tune.space\['model.head.dense'\]: value \[-8\] is rejected: .*dense widths must be positive"),
        ({"model.base": {"type": "choice", "values": ["small_cnn", "resnet5"]}}, [],
         r"'resnet5' is not a known base; choose among: .*small_cnn"),
        ({"train.learning_rate": {"type": "float", "min": 0.0, "max": 0.01, "log": True}}, [],
         r"log: true needs min > 0, got min 0"),
        ({"data.batch_size": {"type": "int", "min": 8, "max": 32.5}}, [], r"type int needs whole-number min, max"),
        ({"train.epochs": {"type": "int", "min": 1, "max": 3}}, ["tune.tuner=hyperband"],
         r"tune.space\['train.epochs'\] cannot be searched with tune.tuner = 'hyperband'"),
        ({"data.seed": {"type": "int", "min": 1, "max": 3}}, [], r"tune.space\['data.seed'\] cannot be searched: .*validation split"),
        ({"serve.port": {"type": "int", "min": 3000, "max": 3001}}, [], r"the serve section does not change training"),
        ({"model.head.dense.width": {"type": "int", "min": 1, "max": 3}}, [], r"model.head.dense is a setting, not a section"),
        ({}, [], r"tune.space is empty; map the config keys to search"),
    ],
)
def test_bad_search_space_entries_are_one_line_errors_before_any_trial(small_demo_dir, tmp_path, space, extra, expected):
    from training.tune import run_tune

    with pytest.raises(ConfigError) as err:
        cfg = load_training_config(None, [*TINY_TUNE, f"tune.space={json.dumps(space)}", *extra], data=small_demo_dir)
        run_tune(cfg, tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert re.search(expected, message), message
    assert not (tmp_path / "out" / "search").exists(), "no trial may start"


def test_cli_reports_a_bad_space_in_one_line(small_demo_dir, tmp_path):
    cfg = _config_file(tmp_path / "tune.yaml", small_demo_dir)
    # Space keys hold dots, so --set adds an entry as a mapping (merged into the space of the file).
    res = run_cli("tune", str(cfg), "--output", str(tmp_path / "out"),
                  "--set", "tune.space={model.head.dropout: {type: float, min: 0.2, max: 0.1}}", timeout=120)
    assert res.returncode == 2, res.stderr[-1500:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "min 0.2 must be below max 0.1" in last and "model.head.dropout" in last
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_registries_match_the_config_choices():
    from training.tune import OBJECTIVES, TUNERS

    assert list(TUNERS) == list(get_args(TuneConfig.model_fields["tuner"].annotation))
    assert list(OBJECTIVES) == list(get_args(TuneConfig.model_fields["objective"].annotation))
    assert {spec.direction for spec in OBJECTIVES.values()} == {"min", "max"}


# ------------------------------------------------------------------------------------ random search


def test_random_search_report_hparams_and_best_config_reproduces(small_demo_dir, tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from training._tf import tf
    from training.tune import run_tune

    out = tmp_path / "search"
    lines: list[str] = []
    outcome = run_tune(_config(small_demo_dir, "tune.max_trials=3"), out, progress=lines.append)
    rows = outcome.rows
    assert len(rows) == 3 and all(r.status == "COMPLETED" for r in rows)
    assert sum(line.startswith("trial ") for line in lines) == 3
    scores = [r.score for r in rows]
    assert scores == sorted(scores, reverse=True), "best first"
    assert len({json.dumps(r.values, sort_keys=True) for r in rows}) == 3, "three distinct trials"

    # trials.csv: every hyperparameter and the objective, best first, matching the trial records
    with open(out / "trials.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [row["trial"] for row in table] == [r.trial_id for r in rows]
    assert set(SPACE) <= set(table[0]) and "val_accuracy" in table[0] and "val_macro_f1" in table[0]
    records = _trial_records(out)
    for row in table:
        rec = records[row["trial"]]
        assert float(row["val_accuracy"]) == pytest.approx(rec["metrics"]["val_accuracy"])
        assert float(row["train.learning_rate"]) == pytest.approx(rec["config_values"]["train.learning_rate"])
        assert 0.001 <= float(row["train.learning_rate"]) <= 0.01
        assert row["model.head.dense"] in ("[]", "[16]", "[32, 16]")
        assert round(float(row["model.head.dropout"]) * 10, 6).is_integer()
    md = (out / "trials.md").read_text()
    assert md.count("| COMPLETED |") == 3 and "train.learning_rate" in md and "objective.png" in md
    assert (out / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # TensorBoard HParams: the experiment once, one session per trial with its values and metrics
    sessions: dict[str, dict] = {}
    experiment = 0
    for events in (out / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    if value.tag == "val_accuracy":
                        sessions.setdefault(events.parent.name, {})["val_accuracy"] = tf.make_ndarray(value.tensor)
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("experiment"):
                    experiment += 1
                    assert {h.name for h in data.experiment.hparam_infos} == set(SPACE)
                elif data.HasField("session_start_info"):
                    sessions.setdefault(events.parent.name, {})["hparams"] = set(data.session_start_info.hparams)
    assert experiment == 1
    assert set(sessions) == {f"trial_{r.trial_id}" for r in rows}
    for r in rows:
        session = sessions[f"trial_{r.trial_id}"]
        assert session["hparams"] == set(SPACE)
        assert float(session["val_accuracy"]) == pytest.approx(r.score)

    # best.yaml is a config 'shipyard train' accepts unchanged, and it reproduces the best trial's score
    best = outcome.best
    saved = load_training_config(out / "best.yaml")
    assert saved.train.learning_rate == pytest.approx(records[best.trial_id]["config_values"]["train.learning_rate"])
    assert saved.model.head.dense == records[best.trial_id]["config_values"]["model.head.dense"]
    assert saved.train.loss == records[best.trial_id]["config_values"]["train.loss"]
    from training.pipeline import run_train

    package = run_train(saved, tmp_path / "retrained", verbose=0).package  # what 'shipyard train best.yaml' runs
    assert abs(_val_accuracy(package) - best.score) <= 0.01, (best.score, _val_accuracy(package))


# -------------------------------------------------------------------------------- resume after kill


def test_resume_after_sigkill_does_not_repeat_finished_trials(small_demo_dir, tmp_path):
    from training.tune import run_tune

    cfg = _config_file(tmp_path / "tune.yaml", small_demo_dir, "tune.max_trials=4")
    out = tmp_path / "search"
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "shipyard"), "tune", str(cfg), "--output", str(out), "--quiet"],
            stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True,
        )
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            try:
                if len(json.loads((out / "search" / "oracle.json").read_text())["end_order"]) >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if proc.poll() is not None:
                pytest.fail(f"the search ended before it could be killed: {log.read_text()[-1500:]}")
            time.sleep(0.05)
        else:
            pytest.fail("two trials did not finish in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {tid for tid, t in _kt_trials(out).items() if t["status"] == "COMPLETED"}
    assert 2 <= len(finished) < 4
    before = {tid: (out / "search" / f"trial_{tid}" / "shipyard_trial.json").stat().st_mtime_ns for tid in finished}
    records = _trial_records(out)

    lines: list[str] = []
    outcome = run_tune(load_training_config(cfg), out, progress=lines.append)
    assert any("resuming with" in line for line in lines)
    assert outcome.trials_run == 4 - len(finished)
    assert sorted(r.trial_id for r in outcome.rows) == ["0", "1", "2", "3"]
    assert all(r.status == "COMPLETED" for r in outcome.rows)
    ran_now = {line.split()[1] for line in lines if line.startswith("trial ")}
    assert ran_now == {"0", "1", "2", "3"} - finished, "finished trials must not run again"
    for tid in finished:
        assert (out / "search" / f"trial_{tid}" / "shipyard_trial.json").stat().st_mtime_ns == before[tid]
        row = next(r for r in outcome.rows if r.trial_id == tid)
        assert row.score == pytest.approx(records[tid]["metrics"]["val_accuracy"])
    assert len({json.dumps(r.values, sort_keys=True) for r in outcome.rows}) == 4


def test_budget_failed_trials_and_changed_settings(small_demo_dir, tmp_path):
    """A wall-time budget stops the search; a trial whose config fails is a row; a resumed search must match."""
    from training.tune import run_tune

    space = {"data.batch_size": {"type": "choice", "values": [16, 5000]}}
    out = tmp_path / "search"
    outcome = run_tune(_config(small_demo_dir, "tune.max_trials=2", space=space), out)
    by_size = {r.values["data.batch_size"]: r for r in outcome.rows}
    assert by_size[16].status == "COMPLETED" and by_size[16].score > 0.5
    assert by_size[5000].status == "FAILED" and "batch_size 5000 is larger than the training split" in by_size[5000].message
    assert outcome.rows[-1] is by_size[5000], "failed trials come last"
    assert "FAILED" in (out / "trials.md").read_text()
    assert load_training_config(out / "best.yaml").data.batch_size == 16

    with pytest.raises(ConfigError, match=r"other settings \(tune.objective: 'val_accuracy' -> 'val_loss'\).*--fresh"):
        run_tune(_config(small_demo_dir, "tune.max_trials=3", "tune.objective=val_loss", space=space), out)

    timed = run_tune(_config(small_demo_dir, "tune.max_trials=5", "tune.max_time_s=0.5"), tmp_path / "timed")
    assert len(timed.rows) == 1 and "stopped by tune.max_time_s" in timed.stopped


# -------------------------------------------------------------------------- hyperband via the CLI


def test_hyperband_cli_early_stopping_and_train_best(small_demo_dir, tmp_path):
    cfg = _config_file(
        tmp_path / "tune.yaml", small_demo_dir, "train.epochs=2", "tune.hyperband_factor=2", "tune.max_trials=4",
        "tune.objective=val_loss", "tune.early_stopping_patience=1",
    )
    out = tmp_path / "hb"
    res = run_cli("tune", str(cfg), "--tuner", "hyperband", "--output", str(out), "--train-best", timeout=400)
    assert res.returncode == 0, res.stderr[-2500:]
    package = Path(res.stdout.strip().splitlines()[-1])
    assert (package / "manifest.json").is_file() and package.is_relative_to(out)
    with open(out / "trials.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert 3 <= len(table) <= 4
    losses = [float(row["val_loss"]) for row in table]
    assert losses == sorted(losses), "val_loss is minimised: best (lowest) first"
    budgets = {int(row["budget_epochs"]) for row in table}
    assert budgets == {1, 2}, "Hyperband trains some trials 1 epoch and promotes the best to 2"
    promoted = [t for t in _kt_trials(out).values() if "tuner/trial_id" in t["hyperparameters"]["values"]]
    assert promoted, "a second-round trial continues a first-round configuration"
    best = load_training_config(out / "best.yaml")
    assert best.train.epochs == int(table[0]["budget_epochs"])
    assert best.train.early_stopping_patience == 1 and best.train.monitor == "val_loss"
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["training_config"]["train"]["learning_rate"] == pytest.approx(best.train.learning_rate)


# ------------------------------------------------------------------- bayesian with cross-validation


def test_bayesian_with_folds_scores_the_mean_and_reports_the_spread(small_demo_dir, tmp_path):
    from training.data import scan_dataset
    from training.tune import run_tune

    cfg = _config(
        small_demo_dir, "tune.tuner=bayesian", "tune.bayesian_initial_points=2", "tune.max_trials=3",
        "tune.objective=val_macro_f1", "tune.folds=2",
    )
    out = tmp_path / "bo"
    outcome = run_tune(cfg, out)
    assert len(outcome.rows) == 3 and all(r.status == "COMPLETED" for r in outcome.rows)
    for rec in _trial_records(out).values():
        folds = [f["val_macro_f1"] for f in rec["folds"]]
        assert len(folds) == 2
        assert rec["metrics"]["val_macro_f1"] == pytest.approx(statistics.fmean(folds))
        assert rec["metrics"]["val_macro_f1_std"] == pytest.approx(statistics.pstdev(folds))
    with open(out / "trials.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert "val_macro_f1_std" in table[0] and all(row["val_macro_f1_std"] != "" for row in table)

    # the folds partition train+val (stratified); the test split stays out of the search
    scan = scan_dataset(small_demo_dir, cfg.data)
    pool = {s.path.name for split in ("train", "val") for s in scan.splits[split]}
    vals = [{p.name.split("__")[-1] for p in (out / "folds" / f"fold-{i}" / "val").rglob("*.png")} for i in (1, 2)]
    assert not vals[0] & vals[1] and vals[0] | vals[1] == pool
    assert not pool & {s.path.name for s in scan.splits["test"]}
    trains = {p.name.split("__")[-1] for p in (out / "folds" / "fold-1" / "train").rglob("*.png")}
    assert trains == vals[1]
    # best.yaml points at the real data, not at a fold
    assert Path(load_training_config(out / "best.yaml").data.path) == small_demo_dir.resolve()


# ---------------------------------------------------------------------------------- distributed


def test_distributed_chief_and_two_workers_share_the_trials(small_demo_dir, tmp_path):
    """KerasTuner's chief/worker mode on 127.0.0.1: three 'shipyard tune' processes, one budget of 4 trials."""
    cfg = _config_file(tmp_path / "tune.yaml", small_demo_dir, "tune.max_trials=4")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "dist"
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: tmp_path / f"{name}.err" for name in ("worker0", "worker1", "chief")}
    deadline = time.monotonic() + 300

    def start(tuner_id: str) -> None:
        env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port),
               "KERASTUNER_TUNER_ID": tuner_id}
        with open(logs[tuner_id], "w") as err:
            procs[tuner_id] = subprocess.Popen(
                [str(BIN / "shipyard"), "tune", str(cfg), "--output", str(out)],
                stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True,
            )

    try:
        # Both workers first, and the chief once both wait for it (gRPC wait_for_ready): each then gets a trial
        # at once, however slowly TensorFlow loads on a busy machine.
        for worker in ("worker0", "worker1"):
            start(worker)
        while not all("asking the chief" in logs[w].read_text() for w in ("worker0", "worker1")):
            for w in ("worker0", "worker1"):
                if procs[w].poll() is not None:
                    pytest.fail(f"{w} ended early: {logs[w].read_text()[-1500:]}")
            if time.monotonic() > deadline:
                pytest.fail("the workers did not start in time")
            time.sleep(0.1)
        start("chief")
        results = {
            name: (p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0], logs[name].read_text())
            for name, p in procs.items()
        }
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}: {results[name][1][-2000:]}"
    ran = {name: int(results[name][0].split("ran ")[1].split()[0]) for name in ("worker0", "worker1")}
    assert all(n >= 1 for n in ran.values()) and sum(ran.values()) == 4, ran

    oracle = json.loads((out / "search" / "oracle.json").read_text())
    assert len(oracle["end_order"]) == 4
    assert sorted(oracle["shipyard_trial_tuners"].values()) == sorted(
        [name for name, n in ran.items() for _ in range(n)]
    )
    assert all(t["status"] == "COMPLETED" for t in _kt_trials(out).values()) and len(_kt_trials(out)) == 4
    with open(out / "trials.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and {row["tuner"] for row in table} == {"worker0", "worker1"}
    assert results["chief"][0].strip().splitlines()[-1] == str(out / "best.yaml")
    assert load_training_config(out / "best.yaml").data.path is not None


def test_worker_refuses_fresh_and_partial_environment(small_demo_dir, tmp_path, monkeypatch):
    from training.tune import run_tune

    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.delenv("KERASTUNER_ORACLE_PORT", raising=False)
    with pytest.raises(ConfigError, match="KERASTUNER_ORACLE_PORT"):
        run_tune(_config(small_demo_dir), tmp_path / "x")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "worker0")
    with pytest.raises(ShipyardError, match="--fresh"):
        run_tune(_config(small_demo_dir), tmp_path / "x", fresh=True)


@pytest.mark.parametrize("objective", ["val_accuracy", "val_macro_f1", "val_loss"])
def test_per_trial_early_stopping_watches_the_objective(small_demo_dir, objective):
    from training.train import monitor_mode
    from training.tune import OBJECTIVES, parse_space, trial_config

    cfg = _config(small_demo_dir, f"tune.objective={objective}", "tune.early_stopping_patience=2")
    trial = trial_config(cfg, parse_space(cfg), {})
    assert trial.train.monitor == objective and trial.train.early_stopping_patience == 2
    assert monitor_mode(objective) == OBJECTIVES[objective].direction


def test_assign_folds_is_a_stratified_seeded_split_any_stage_can_reuse():
    """The k-fold split is a plain function: every sample in one fold, each class spread evenly, the same
    folds for the same seed whatever the input order, and a one-line error naming the setting that asked."""
    from training.data import Sample
    from training.tune import assign_folds

    labels = ["cat", "dog"]
    samples = [Sample(Path(f"/d/{name}/{i}.png"), n) for n, name in enumerate(labels) for i in range(7 + 3 * n)]
    folds = assign_folds(samples, labels, 3, seed=5)
    assert set(folds) == {s.path for s in samples} and set(folds.values()) == {0, 1, 2}
    for n in range(len(labels)):
        sizes = np.bincount([folds[s.path] for s in samples if s.label == n], minlength=3)
        assert sizes.max() - sizes.min() <= 1
    assert assign_folds(samples[::-1], labels, 3, seed=5) == folds
    assert assign_folds(samples, labels, 3, seed=6) != folds
    with pytest.raises(ConfigError, match=r"evaluate.folds = 8 needs at least 8 images.*'cat' has 7"):
        assign_folds(samples, labels, 8, seed=5, setting="evaluate.folds")
