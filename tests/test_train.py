"""Training, packaging, registry and the CLI verbs, on tiny real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from _support import BIN, TINY_TRAIN, run_cli

from edge.errors import IntegrityError
from edge.manifest import read_manifest, verify_package
from training.config import load_training_config


def test_package_holds_everything_the_contract_lists(tiny_package):
    manifest = verify_package(tiny_package)
    assert manifest.labels == ["0", "1", "2"]
    assert (manifest.input.height, manifest.input.width, manifest.input.dtype) == (32, 32, "uint8")
    for rel in ("keras/model.keras", "eval/metrics.json", "eval/confusion_matrix.png", "eval/learning_curves.png",
                "reference/predictions.npz", "reference/stats.json", "reference/embeddings.npy", "logs/history.json",
                "logs/history.csv"):
        assert rel in manifest.files, rel
    ds = manifest.dataset
    assert ds is not None and ds.loading in ("memory", "stream") and ds.loading_reason
    assert sum(ds.split_counts.values()) == sum(sum(c.values()) for c in ds.class_counts.values())
    # metrics are real: a 3-class digit model beats the majority baseline by far
    assert manifest.metrics["accuracy"] > 0.8 > manifest.metrics["majority_baseline_accuracy"]
    cm = json.loads((tiny_package / "eval" / "confusion_matrix.json").read_text())["matrix"]
    assert int(np.sum(cm)) == manifest.metrics["test_count"] == ds.split_counts["test"]
    hist = json.loads((tiny_package / "logs" / "history.json").read_text())
    assert len(hist["loss"]) == 3 and "val_accuracy" in hist and "learning_rate" in hist
    ref = np.load(tiny_package / "reference" / "predictions.npz")
    assert ref["probabilities"].shape == (ds.split_counts["test"], 3)
    assert all((Path(ds.path) / p).is_file() for p in ref["paths"][:5])
    stats = json.loads((tiny_package / "reference" / "stats.json").read_text())
    assert abs(sum(stats["class_frequencies"]) - 1) < 1e-6
    assert len(stats["image_stats"]["brightness"]) == stats["count"] == ds.split_counts["val"]
    assert stats["embedding"]["dim"] == np.load(tiny_package / "reference" / "embeddings.npy").shape[1]


def test_loading_refuses_tampered_files(package_copy):
    from training.package import load_package_model

    keras_file = package_copy / "keras" / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match="sha256"):
        load_package_model(package_copy)
    from training.registry import register

    with pytest.raises(IntegrityError):
        register(package_copy)


def test_register_list_and_idempotence(package_copy):
    from training.registry import list_models, package_path, register

    manifest = read_manifest(package_copy)
    tag = register(package_copy)
    assert tag == manifest.tag and tag.startswith("tiny:")
    assert register(package_copy) == tag  # same files: same tag, no error
    stored = package_path(tag)
    assert read_manifest(stored).files == manifest.files
    assert not (stored / "checkpoints").exists(), "checkpoints must not be copied into the store"
    rows = [r for r in list_models("tiny") if r["tag"] == tag]
    assert rows and rows[0]["accuracy"] == pytest.approx(manifest.metrics["accuracy"])


def test_cli_verbs_chain(small_demo_dir, tmp_path):
    out = tmp_path / "runs"
    args = [str(Path(__file__).parents[1] / "configs" / "demo.yaml"), "--data", str(small_demo_dir), "--output", str(out),
            "--quiet", "--set", "train.epochs=1", "--set", "model.name=chain", "--set", "train.early_stopping_patience=0"]
    train = run_cli("train", *args)
    assert train.returncode == 0, train.stderr[-2000:]
    package = Path(train.stdout.strip().splitlines()[-1])
    assert (package / "manifest.json").is_file()
    assert "majority baseline" in train.stdout and "macro.f1" in train.stdout
    refused = run_cli("register", str(package))  # keras only: nothing could serve it
    assert refused.returncode != 0 and "shipyard optimize" in refused.stderr, refused.stderr[-2000:]
    reg = run_cli("register", str(package), "--allow-unrunnable")
    assert reg.returncode == 0, reg.stderr[-2000:]
    tag = reg.stdout.strip().splitlines()[-1]
    assert tag.startswith("chain:")
    listing = run_cli("models", "list")
    assert tag in listing.stdout and "accuracy" in listing.stdout
    ev = run_cli("evaluate", str(package), str(small_demo_dir), "--compare", str(package))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "model - other" in ev.stdout and "+0.0000" in ev.stdout


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("train", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), "--data", str(empty))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in res.stderr
    res = run_cli("train", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), "--set", "train.epochz=1")
    assert res.returncode == 2 and "unknown key 'train.epochz'" in res.stderr
    res = run_cli("train", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), "--data", str(tmp_path / "nope"))
    assert res.returncode == 2 and "is not a folder" in res.stderr
    res = run_cli("evaluate", str(tmp_path))
    assert res.returncode == 2 and "no manifest.json" in res.stderr


def _weights(package: Path):
    from training.package import load_package_model

    model, _ = load_package_model(package)
    return model.get_weights()


def test_same_seed_same_weights(small_demo_dir, tmp_path):
    from training.pipeline import run_train

    packages = []
    for i in range(2):
        cfg = load_training_config(
            None, [*TINY_TRAIN, "train.epochs=1", "train.deterministic=true", f"train.version=det{i}",
                   "data.augment.rotation=0.05"], data=small_demo_dir)
        packages.append(run_train(cfg, tmp_path, verbose=0).package)
    for a, b in zip(_weights(packages[0]), _weights(packages[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_and_checkpoints_can_watch_validation_macro_f1(small_demo_dir, tmp_path):
    """train.monitor=val_macro_f1: a log Keras does not compute; Shipyard adds it before the callbacks
    that watch it, and it equals the macro F1 of the trained model on the validation split."""
    from edge.evaluate import classification_metrics
    from training.evaluate import predict_dataset
    from training.train import train

    cfg = load_training_config(
        None,
        [*TINY_TRAIN, "train.epochs=1", "train.monitor=val_macro_f1", "train.early_stopping_patience=1",
         "train.reduce_lr_patience=1"],
        data=small_demo_dir,
    )
    result = train(cfg, tmp_path, verbose=0)
    f1 = result.history["val_macro_f1"]
    assert len(f1) == 1 and 0.0 <= f1[0] <= 1.0
    probs, y = predict_dataset(result.model, result.datasets.val)
    expected = classification_metrics(y, probs.argmax(axis=1), ["0", "1", "2"])["macro"]["f1"]
    assert f1[0] == pytest.approx(expected, abs=1e-6)
    assert "val_macro_f1" in (result.run_dir / "logs" / "history.csv").read_text().splitlines()[0]
    assert (result.run_dir / "checkpoints" / "best.weights.h5").is_file()  # saved on the watched log


def test_resume_after_sigkill(small_demo_dir, tmp_path):
    from training.pipeline import run_train

    epochs = 5
    common = [*TINY_TRAIN, f"train.epochs={epochs}", "train.deterministic=true", "model.name=resume"]
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"data:\n  path: {small_demo_dir}\n")
    cmd = [str(BIN / "shipyard"), "train", str(cfg_file), "--output", str(tmp_path / "killed"), "--quiet"]
    for item in [*common, "train.version=r1"]:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    history = tmp_path / "killed" / "resume" / "r1" / "logs" / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline:
        if history.is_file() and len(history.read_text().strip().splitlines()) >= 3:  # header + 2 epochs
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read()[-1500:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(history.read_text().strip().splitlines()) - 1
    assert 2 <= done_before < epochs

    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = Path(res.stdout.strip().splitlines()[-1])
    manifest = read_manifest(resumed)
    assert manifest.metrics["epochs"] == epochs
    hist = json.loads((resumed / "logs" / "history.json").read_text())
    assert len(hist["loss"]) == epochs, "each epoch appears once in the history"

    cfg = load_training_config(None, [*common, "train.version=r2"], data=small_demo_dir)
    straight = run_train(cfg, tmp_path / "straight", verbose=0).package
    assert read_manifest(straight).metrics["epochs"] == epochs
    a, b = _weights(resumed), _weights(straight)
    rel = [np.linalg.norm(x - y) / (np.linalg.norm(y) + 1e-9) for x, y in zip(a, b, strict=True) if x.ndim > 1]
    assert max(rel) < 0.35, rel
    assert abs(manifest.metrics["accuracy"] - read_manifest(straight).metrics["accuracy"]) < 0.05


def test_transfer_learning_beats_scratch(tmp_path):
    """Pretrain a small base on digits 0-4, transfer it to digits 5-9 with 20 images per class.

    The transferred model (initialised from the pretrained base, fine-tuned whole) is compared with the
    same architecture trained from scratch on the same 100 images, over three seeds each, on ~650
    held-out test images.
    """
    import statistics

    from training.demo import write_demo_data
    from training.pipeline import run_train

    pre_dir = tmp_path / "d04"
    write_demo_data(pre_dir, size=32, classes=[0, 1, 2, 3, 4])
    cfg = load_training_config(
        None, [*TINY_TRAIN, "model.name=pre", "train.epochs=8", "train.version=v1", "model.head.dense=[64]"], data=pre_dir
    )
    base = run_train(cfg, tmp_path / "runs", verbose=0).package
    assert read_manifest(base).metrics["accuracy"] > 0.8

    few = tmp_path / "d59"
    full = tmp_path / "d59_all"
    write_demo_data(full, size=32, classes=[5, 6, 7, 8, 9])
    for cls_dir in sorted(p for p in full.iterdir() if p.is_dir()):
        files = sorted(cls_dir.glob("*.png"))
        for split, chunk in (("train", files[:20]), ("val", files[20:30]), ("test", files[30:])):
            dest = few / split / cls_dir.name
            dest.mkdir(parents=True)
            for f in chunk:
                (dest / f.name).write_bytes(f.read_bytes())

    common = [*TINY_TRAIN, "train.learning_rate=0.001", "train.epochs=20", "data.batch_size=16"]
    transfer = [f"model.base_model={base / 'keras' / 'model.keras'}", "model.freeze=none"]
    acc: dict[str, list[float]] = {"transfer": [], "scratch": []}
    for seed in (1, 2, 3):
        for name, extra in (("transfer", transfer), ("scratch", [])):
            cfg = load_training_config(
                None, [*common, *extra, f"model.name={name}", f"train.version=s{seed}", f"train.seed={seed}"], data=few
            )
            manifest = read_manifest(run_train(cfg, tmp_path / "runs", verbose=0).package)
            assert manifest.metrics["test_count"] > 600
            acc[name].append(manifest.metrics["accuracy"])
    print(f"transfer {acc['transfer']} vs scratch {acc['scratch']}")
    assert statistics.mean(acc["transfer"]) >= statistics.mean(acc["scratch"]) + 0.05, acc


def _reloads_and_reproduces_its_reference(package: Path, data: Path) -> None:
    """The package verifies, its Keras model loads, and it predicts the reference probabilities it was shipped with."""
    from edge.preprocess import decode_file
    from training.package import load_package_model

    manifest = verify_package(package)
    model, _ = load_package_model(package)
    ref = np.load(package / "reference" / "predictions.npz")
    images = np.stack([decode_file(data / p, manifest.input) for p in ref["paths"]])
    probs = model.predict(images.astype("float32"), verbose=0)
    np.testing.assert_allclose(probs, ref["probabilities"], atol=1e-4)


def _learned(package: Path, manifest) -> None:
    """Training did something: the loss went down over the epochs and test accuracy is well above chance."""
    history = json.loads((package / "logs" / "history.json").read_text())
    assert len(history["loss"]) == 2 and history["loss"][-1] < history["loss"][0], history["loss"]
    chance = 1 / len(manifest.labels)
    assert manifest.metrics["accuracy"] > chance + 0.2, manifest.metrics["accuracy"]


def test_streaming_training_matches_contract(small_demo_dir, tmp_path):
    """The streamed pipeline yields exactly edge.preprocess's pixels for the same files, and trains a model."""
    from edge.manifest import InputContract
    from edge.preprocess import decode_file
    from training.data import build_datasets
    from training.pipeline import run_train

    sets = [*TINY_TRAIN, "train.epochs=2", "data.loading=stream", "model.name=stream", "train.version=v1"]
    cfg = load_training_config(None, sets, data=small_demo_dir)
    contract = InputContract(height=32, width=32)
    datasets = build_datasets(cfg.data, contract, augment=False)
    assert datasets.plan.scheme == "stream"
    for split in ("val", "test"):  # unshuffled: batches follow scan.splits
        pixels, labels = zip(*((x.numpy(), y.numpy()) for x, y in getattr(datasets, split)), strict=True)
        samples = datasets.scan.splits[split]
        expected = np.stack([decode_file(s.path, contract) for s in samples])
        streamed = np.concatenate(pixels)
        assert streamed.dtype == np.uint8 and streamed.shape == expected.shape
        np.testing.assert_array_equal(streamed, expected)
        np.testing.assert_array_equal(np.concatenate(labels), [s.label for s in samples])
    assert datasets.decode_failures == {}

    outcome = run_train(cfg, tmp_path, verbose=0)
    manifest = outcome.manifest
    assert manifest.dataset.loading == "stream" and "forces 'stream'" in manifest.dataset.loading_reason
    _learned(outcome.package, manifest)
    _reloads_and_reproduces_its_reference(outcome.package, small_demo_dir)


def test_mirrored_strategy_trains(small_demo_dir, tmp_path):
    """train.distribution=mirrored trains under a MirroredStrategy over every GPU (one CPU replica without),
    the model learns, and the package it writes loads and reproduces its reference predictions."""
    from training._tf import tf
    from training.pipeline import run_train
    from training.train import read_state

    cfg = load_training_config(
        None, [*TINY_TRAIN, "train.epochs=2", "train.distribution=mirrored", "model.name=mirror", "train.version=v1"],
        data=small_demo_dir,
    )
    outcome = run_train(cfg, tmp_path, verbose=0)
    state = read_state(outcome.package)
    assert state["strategy"] == "MirroredStrategy"
    assert state["replicas"] == max(1, len(tf.config.list_logical_devices("GPU")))
    _learned(outcome.package, outcome.manifest)
    _reloads_and_reproduces_its_reference(outcome.package, small_demo_dir)


def test_multi_worker_needs_tf_config(small_demo_dir, tmp_path, monkeypatch):
    from edge.config import ConfigError
    from training.pipeline import run_train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"needs train\.version"):  # the workers must agree on the run directory
        load_training_config(None, [*TINY_TRAIN, "train.distribution=multi_worker"], data=small_demo_dir)
    cfg = load_training_config(
        None, [*TINY_TRAIN, "train.distribution=multi_worker", "train.version=v1"], data=small_demo_dir
    )
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        run_train(cfg, tmp_path, verbose=0)


def test_multi_worker_cluster_and_mixed_precision(small_demo_dir, tmp_path):
    """A one-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1, with mixed float16 (CLI subprocess:
    collectives must be configured before TensorFlow runs any op, which the test process already did)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
    sets = [*TINY_TRAIN, "train.epochs=1", "train.distribution=multi_worker", "train.mixed_precision=true",
            "model.name=mw", "train.version=v1"]
    args = ["train", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), "--data", str(small_demo_dir),
            "--output", str(tmp_path), "--quiet"]
    for item in sets:
        args += ["--set", item]
    res = run_cli(*args, env={"TF_CONFIG": json.dumps(tf_config)}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    package = Path(res.stdout.strip().splitlines()[-1])
    from training.package import load_package_model

    model, manifest = load_package_model(package)
    assert manifest.training_config["train"]["distribution"] == "multi_worker"
    assert manifest.training_config["train"]["mixed_precision"] is True
    # trained in mixed float16, exported in float32 (weights and compute) so that every edge variant converts
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers if hasattr(layer, "dtype_policy"))




def test_evaluating_on_a_subset_of_classes_keeps_the_model_label_space(tiny_package, small_demo_dir, tmp_path):
    """Data with only classes '1' and '2' of a '0'/'1'/'2' model: every label, the train split's (for
    the majority baseline) included, is the model's index, not the folder's."""
    import shutil

    from training.pipeline import _samples_for

    pngs = {c: sorted((small_demo_dir / c).glob("*.png")) for c in ("1", "2")}
    for split, counts in (("train", {"1": 1, "2": 3}), ("test", {"1": 2, "2": 2})):
        for c, n in counts.items():
            (tmp_path / split / c).mkdir(parents=True)
            offset = 0 if split == "train" else 5
            for p in pngs[c][offset : offset + n]:
                shutil.copy(p, tmp_path / split / c / p.name)
    _, samples, train_labels = _samples_for(read_manifest(tiny_package), tmp_path)
    assert sorted(s.label for s in samples) == [1, 1, 2, 2]
    assert sorted(train_labels) == [1, 2, 2, 2]


# ------------------------------------------------------------------------------- schedules (issue 18)


@pytest.mark.parametrize(
    ("sets", "factors"),
    [
        ({"lr_schedule": "constant"}, [1, 1, 1, 1]),
        ({"lr_schedule": "step", "lr_step_epochs": 2, "lr_decay": 0.5}, [1, 1, 0.5, 0.5]),
        ({"lr_schedule": "exponential", "lr_decay": 0.5}, [1, 0.5, 0.25, 0.125]),
        ({"lr_schedule": "cosine"}, [1, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))]),
        ({"lr_schedule": "cosine", "warmup_epochs": 2}, [1 / 3, 2 / 3, 1, 0.5]),
    ],
)
def test_schedule_factors(sets, factors):
    from training.config import TrainConfig
    from training.schedules import schedule_factor

    config = TrainConfig(**sets)
    np.testing.assert_allclose([schedule_factor(config, e, 4) for e in range(4)], factors, rtol=1e-6)


def test_plateau_reduction_scales_the_schedule():
    """No improvement for reduce_lr_patience epochs multiplies the schedule by reduce_lr_factor (not a reset
    to a fixed rate); the state is saved for --resume and picked up again."""
    from training._tf import keras
    from training.config import TrainConfig
    from training.schedules import ScheduledLearningRate

    config = TrainConfig(lr_schedule="exponential", lr_decay=0.9, reduce_lr_patience=2, reduce_lr_factor=0.1)
    saved: list[dict] = []
    cb = ScheduledLearningRate(config, 1.0, 10, 0, {}, saved.append)
    cb.set_model(type("M", (), {"optimizer": keras.optimizers.Adam(1.0)})())
    rates = []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.8, 0.7]):
        cb.on_epoch_begin(epoch)
        rates.append(float(keras.backend.get_value(cb.model.optimizer.learning_rate)))
        cb.on_epoch_end(epoch, {"val_loss": val_loss})
    # epochs 2 and 3 did not improve on 0.9: from epoch 4 on the schedule runs at a tenth
    np.testing.assert_allclose(rates, [0.9**e * (0.1 if e >= 4 else 1) for e in range(6)], rtol=1e-6)
    assert saved[-1]["scale"] == pytest.approx(0.1) and saved[-1]["best"] == pytest.approx(0.7)
    again = ScheduledLearningRate(config, 1.0, 10, 0, saved[-1], saved.append)
    assert again.rate_for(6) == pytest.approx(0.1 * 0.9**6)


def test_schedules_in_both_phases_recorded_drawn_and_freezing_printed(small_demo_dir, tmp_path, capsys):
    """A step schedule with warm-up in the head phase and again, from its own lower rate, in fine-tuning:
    history.csv records the rate of every epoch, the learning curves draw it, and the start of each phase
    prints its trainable/frozen counts and the batch arithmetic."""
    from training.schedules import planned_rates
    from training.train import train
    from training.visualize.drawing import plot_learning_curves

    sets = [*TINY_TRAIN, "model.freeze={until: conv2}", "train.epochs=3", "train.lr_schedule=step",
            "train.lr_step_epochs=1", "train.lr_decay=0.5", "train.warmup_epochs=1", "train.fine_tune.enabled=true",
            "train.fine_tune.epochs=2", "train.fine_tune.learning_rate=0.0005", "train.fine_tune.unfreeze=[conv3]",
            "train.fine_tune.l2=0.001", "model.head.batch_norm=true", "train.version=s1"]
    config = load_training_config(None, sets, data=small_demo_dir)
    result = train(config, tmp_path, verbose=2)
    out = capsys.readouterr().out
    assert "phase 1 (head): base layers 4 trainable / 2 frozen" in out
    assert "phase 2 (fine-tuning): base layers 1 trainable / 5 frozen" in out
    assert "batch size 32:" in out and "optimizer slots" in out
    expected = planned_rates(config.train, 0.003, 3) + planned_rates(config.train, 0.0005, 2)
    np.testing.assert_allclose(expected, [0.0015, 0.003, 0.0015, 0.00025, 0.0005])
    np.testing.assert_allclose(result.history["learning_rate"], expected, rtol=1e-5)
    assert result.history["phase"] == [1, 1, 1, 2, 2]
    import csv

    with open(result.run_dir / "logs" / "history.csv") as fh:
        assert [float(r["learning_rate"]) for r in csv.DictReader(fh)] == pytest.approx(expected, rel=1e-5)
    drawn = plot_learning_curves(result.history, tmp_path / "curves.png")
    assert "learning rate" in drawn["panels"] and drawn["learning_rate"] == pytest.approx(expected, rel=1e-5)
    assert result.datasets.plan.memory is not None and result.datasets.plan.memory.gradients > 0


def test_batch_arithmetic_is_recorded_in_the_manifest(tiny_package):
    memory = read_manifest(tiny_package).metrics["batch_memory"]
    assert memory["batch_per_replica"] == read_manifest(tiny_package).dataset.batch_size
    assert memory["total_bytes"] == memory["weights"] + memory["gradients"] + memory["optimizer_slots"] + memory[
        "batch_per_replica"
    ] * (memory["input_per_image"] + memory["activations_per_image"])
    assert "step memory" in read_manifest(tiny_package).dataset.batch_size_reason


# ------------------------------------------------------------------------- multi-worker training (issue 18)


def read_state(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run_state.json").read_text())


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _start_workers(data: Path, output: Path, sets: list[str], ports: list[int], *, resume: bool = False) -> list:
    """Two `shipyard train` processes, one TF_CONFIG task each, on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    cmd = [str(BIN / "shipyard"), "train", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), "--data",
           str(data), "--output", str(output), "--quiet"]
    for item in sets:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    procs = []
    for index in range(len(ports)):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      start_new_session=True))
    return procs


def _finish(procs: list, timeout: float = 400) -> list[str]:
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            pytest.fail("a worker did not finish")
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


MW_SETS = [*TINY_TRAIN, "train.epochs=4", "model.name=mw", "report.plots=false", "data.augment.rotation=0",
           "data.augment.translation=0"]


def test_two_worker_training_matches_one_worker_and_only_the_chief_writes(small_demo_dir, tmp_path):
    from training.pipeline import run_train

    single = run_train(load_training_config(None, [*MW_SETS, "train.version=one"], data=small_demo_dir),
                       tmp_path / "one", verbose=0)
    procs = _start_workers(small_demo_dir, tmp_path / "two", [*MW_SETS, "train.distribution=multi_worker",
                                                              "train.version=two"], _free_ports(2))
    chief_out, worker_out = _finish(procs)
    package = Path(chief_out.strip().splitlines()[-1])
    manifest = read_manifest(package)
    assert "not the chief" in worker_out and "majority baseline" in chief_out
    assert read_state(package)["replicas"] == 2  # MultiWorkerMirroredStrategy (class CollectiveAllReduceStrategy)
    assert read_state(package)["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    # the global batch is the per-replica batch (chosen from memory) times the two replicas
    assert manifest.dataset.batch_size == 2 * manifest.metrics["batch_memory"]["batch_per_replica"]
    assert "x 2 replicas" in manifest.dataset.batch_size_reason
    assert manifest.metrics["epochs"] == 4 and manifest.metrics["accuracy"] > 0.8
    assert abs(manifest.metrics["accuracy"] - single.manifest.metrics["accuracy"]) < 0.1
    # one run directory, written by the chief alone: no worker's temporary copies left behind
    assert [p.name for p in (tmp_path / "two" / "mw").iterdir()] == ["two"]
    assert not [p for p in package.rglob("*") if "workertemp" in p.name or "shipyard-worker" in p.name]
    with open(package / "logs" / "history.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + 4  # one header, one row per epoch: one writer


def test_two_worker_training_resumes_after_a_worker_is_killed(small_demo_dir, tmp_path):
    sets = [*MW_SETS, "train.epochs=6", "train.distribution=multi_worker", "train.version=k1"]
    procs = _start_workers(small_demo_dir, tmp_path, sets, _free_ports(2))
    state = tmp_path / "mw" / "k1" / "run_state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text() or "{}").get("last_epoch", 0) >= 2:
            break
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"training ended before a worker could be killed: {procs[0].stderr.read()[-1500:]}")
        time.sleep(0.1)
    else:
        pytest.fail("no epoch finished in time")
    os.killpg(procs[1].pid, signal.SIGKILL)  # the non-chief worker dies; the chief is stuck in a collective
    procs[1].wait()
    os.killpg(procs[0].pid, signal.SIGKILL)
    procs[0].wait()
    done_before = read_state(tmp_path / "mw" / "k1")["last_epoch"]
    assert 2 <= done_before < 6

    chief_out, _ = _finish(_start_workers(small_demo_dir, tmp_path, sets, _free_ports(2), resume=True))
    package = Path(chief_out.strip().splitlines()[-1])
    manifest = read_manifest(package)
    assert manifest.metrics["epochs"] == 6 and manifest.metrics["accuracy"] > 0.8
    hist = json.loads((package / "logs" / "history.json").read_text())
    assert len(hist["loss"]) == 6, "each epoch appears once in the history"
    rows = len((package / "logs" / "history.csv").read_text().strip().splitlines()) - 1
    assert rows <= 6 + 1, "resumed from the last backed-up epoch, not from the start"  # +1: killed between log and backup


# ------------------------------------------------------------- mixed precision through optimize (issue 18)


def test_mixed_precision_run_optimizes_into_every_variant(small_demo_dir, tmp_path):
    """A model trained under mixed_float16 goes through `optimize` and every variant of the table passes
    (the conversion of mixed-precision models is issue 13's; this checks it end to end)."""
    from edge.variants import VARIANTS
    from training.optimize import run_optimize
    from training.pipeline import run_train

    sets = [*TINY_TRAIN, "train.epochs=3", "train.mixed_precision=true", "model.name=mixed", "train.version=m1",
            "report.plots=false", "report.record=false", "optimize.latency=false", "optimize.qat_epochs=1",
            "optimize.prune_epochs=2", "optimize.prune_sparsity=0.5", "optimize.fine_tune_learning_rate=0.001",
            "optimize.cluster_epochs=1", "optimize.representative_samples=32",
            "optimize.gates.int8_max_accuracy_drop=0.05", "optimize.gates.dynamic_max_accuracy_drop=0.05",
            "optimize.gates.int8_min_agreement=0.9", "optimize.gates.dynamic_min_agreement=0.9"]
    config = load_training_config(None, sets, data=small_demo_dir)
    package = run_train(config, tmp_path, verbose=0).package
    outcome = run_optimize(package, config)
    assert sorted(r.key for r in outcome.results) == sorted(VARIANTS)
    assert not outcome.failed, [(r.key, r.status, r.reason) for r in outcome.failed]


# ------------------------------------------------------------------ spatial transformer on digits (issue 18)


def _jittered_digits(root: Path, classes: int = 5, seed: int = 0) -> Path:
    """Digits 0..classes-1 from scikit-learn, 16 px, rotated up to 30 degrees and placed anywhere on a 32 px canvas."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if label >= classes:
            continue
        small = Image.fromarray((pixels * 255 / 16).astype("uint8")).resize((16, 16), Image.BILINEAR)
        small = small.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR)
        canvas = Image.new("L", (32, 32))
        canvas.paste(small, (int(rng.integers(0, 17)), int(rng.integers(0, 17))))
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        canvas.convert("RGB").save(root / str(label) / f"{i:04d}.png")
    return root


def test_spatial_transformer_trains_at_least_as_well_on_shifted_rotated_digits(tmp_path):
    from training.pipeline import run_train

    data = _jittered_digits(tmp_path / "digits")
    accuracy = {}
    for name, stn in (("plain", "false"), ("stn", "true")):
        sets = [*TINY_TRAIN, "train.epochs=8", f"model.name={name}", "train.version=v1", "report.plots=false",
                "report.record=false", f"model.spatial_transformer.enabled={stn}", "train.seed=1"]
        manifest = run_train(load_training_config(None, sets, data=data), tmp_path / "runs", verbose=0).manifest
        accuracy[name] = manifest.metrics["accuracy"]
    # the same network behind a spatial transformer does at least as well (within 3 points of test-split noise)
    assert accuracy["stn"] >= accuracy["plain"] - 0.03, accuracy
    assert accuracy["stn"] > 0.7, accuracy
