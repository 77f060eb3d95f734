"""Ensembles: one Keras model that averages the probabilities of several packages (``shipyard ensemble``).

The members are copied into one flat functional graph (their layers renamed ``m1_``, ``m2_``, ...), so
the ensemble is a normal package: one ``keras/model.keras`` file that ``optimize`` converts to one TFLite
or ONNX graph, that ``register``, ``serve`` and the edge runner use unchanged. The average is a
``Dense`` layer named ``probabilities`` with a fixed kernel (stacked identities divided by the number of
members) over the members' concatenated probabilities, which therefore serve as the ensemble's
"embedding" for the reference statistics, drift monitoring and the embedding pictures.

Members must share the labels (in the same order), the input contract and the test split (the same
images, as recorded in ``reference/predictions.npz``): the ensemble is evaluated on that split beside
each member, and the table is written to ``eval/ensemble.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from edge.files import write_json_atomic
from edge.manifest import Manifest, check_version_string, write_manifest

ENSEMBLE_FILE = "eval/ensemble.json"


@dataclass
class EnsembleOutcome:
    """What :func:`run_ensemble` made: the package, its manifest, the comparison table and the metrics
    by name (``ensemble`` first, then each member's tag)."""

    package: Path
    manifest: Manifest
    table: str
    metrics: dict[str, dict[str, Any]]


@dataclass
class _Member:
    package: Path
    model: Any
    manifest: Manifest
    predictions: dict[str, np.ndarray]


def _load_member(package: Path) -> _Member:
    from training.package import load_package_model

    model, manifest = load_package_model(package)
    path = package / "reference" / "predictions.npz"
    if not path.is_file():
        raise ConfigError(f"{package} has no reference/predictions.npz (its test-split predictions); retrain it")
    with np.load(path, allow_pickle=False) as npz:
        predictions = {k: npz[k] for k in ("paths", "labels", "probabilities")}
    return _Member(package, model, manifest, predictions)


def check_members(members: list[_Member]) -> None:
    """Refuse members that cannot be averaged or compared: one line naming the first difference.

    Raises:
        ConfigError: fewer than two members, other labels, another input contract, no recorded dataset,
            or another test split.
    """
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 packages, got {len(members)}")
    first = members[0]
    for m in members[1:]:
        where = f"{m.package} ({m.manifest.tag}) and {first.package} ({first.manifest.tag})"
        if m.manifest.labels != first.manifest.labels:
            raise ConfigError(
                f"{where} have other labels ({m.manifest.labels} vs {first.manifest.labels}); "
                "ensemble members must be trained on the same classes"
            )
        if m.manifest.input != first.manifest.input:
            raise ConfigError(
                f"{where} take other inputs ({m.manifest.input.height}x{m.manifest.input.width} vs "
                f"{first.manifest.input.height}x{first.manifest.input.width}); set the same data.image_size"
            )
        same_split = all(
            np.array_equal(m.predictions[k], first.predictions[k]) for k in ("paths", "labels")
        )
        if not same_split:
            raise ConfigError(
                f"{where} were evaluated on different test splits; train the members on the same data with "
                "the same data.seed, data.val_fraction and data.test_fraction"
            )
    if first.manifest.dataset is None:
        raise ConfigError(f"{first.package} records no dataset; an ensemble is evaluated on its members' test split")


def build_ensemble(models: list[Any], name: str = "ensemble"):
    """One flat Keras model that averages the probabilities of ``models`` (same input shape and classes).

    Each member is cloned onto the shared input with its layers renamed ``m<i>_<name>`` and its
    weights copied; the average is a fixed, non-trainable ``Dense`` named ``probabilities``.
    """
    from training._tf import keras
    from training.models import INPUT_NAME, OUTPUT_NAME

    shape = tuple(int(d) for d in models[0].inputs[0].shape[1:])
    inputs = keras.Input(shape, name=INPUT_NAME, dtype="float32")
    outputs = []
    for i, member in enumerate(models, start=1):
        prefix = f"m{i}_"
        clone = keras.models.clone_model(
            member,
            input_tensors=inputs,
            clone_function=lambda layer, p=prefix: layer.__class__.from_config(
                {**layer.get_config(), "name": p + layer.name}
            ),
        )
        clone.set_weights(member.get_weights())
        outputs.append(clone.outputs[0])
    classes = int(models[0].outputs[0].shape[-1])
    stacked = keras.layers.Concatenate(name="member_probabilities")(outputs)
    kernel = np.tile(np.eye(classes, dtype=np.float32), (len(models), 1)) / len(models)
    average = keras.layers.Dense(
        classes,
        use_bias=False,
        trainable=False,
        dtype="float32",
        kernel_initializer=keras.initializers.Constant(kernel),
        name=OUTPUT_NAME,
    )(stacked)
    return keras.Model(inputs, average, name=name.replace("-", "_").replace(".", "_"))


@dataclass
class _EnsembleData:
    """The slice of :class:`training.data.Datasets` that :func:`training.package.write_package` reads."""

    scan: Any
    contract: Any
    info: Any
    plan: Any = None  # no loading plan: nothing was trained

    def dataset_info(self):
        return self.info


def _member_data(member: _Member, config) -> _EnsembleData:
    """The first member's dataset, scanned again and checked against its fingerprint."""
    from training.data import scan_dataset

    path = config.data.path
    if path is None or not Path(path).is_dir():
        raise ConfigError(f"the members' dataset {path} is not here; the ensemble is evaluated on its test split")
    scan = scan_dataset(path, config.data)
    if scan.fingerprint() != member.manifest.dataset.fingerprint:
        raise ConfigError(f"the dataset at {path} changed since the members were trained (fingerprint differs)")
    return _EnsembleData(scan, member.manifest.input, member.manifest.dataset)


def _comparison(members: list[_Member], ensemble_probs: np.ndarray, labels: np.ndarray, names: list[str], top_k: int):
    """Metrics of the ensemble and of each member on the same test images, by name."""
    from training.evaluate import classification_metrics

    out = {"ensemble": classification_metrics(labels, ensemble_probs, names, top_k)}
    for m in members:
        out[m.manifest.tag] = classification_metrics(labels, m.predictions["probabilities"], names, top_k)
    return out


def comparison_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Rows of metrics, a column per model (the ensemble first), and the best member's value."""
    from training.evaluate import _get, _metric_keys
    from training.tables import format_table

    names = list(metrics)
    rows = []
    for key in _metric_keys(metrics["ensemble"]):
        values = [_get(metrics[n], key) for n in names]
        member_values = [v for v in values[1:] if v is not None]
        best = (min if key == "loss" else max)(member_values) if member_values else None
        rows.append(
            [key, *("n/a" if v is None else f"{v:.4f}" for v in values), "" if best is None else f"{best:.4f}"]
        )
    return format_table(["metric", *names, "best member"], rows)


def run_ensemble(
    packages: list[Path | str], output: Path | str, *, name: str | None = None, progress=None
) -> EnsembleOutcome:
    """Build the ensemble of ``packages``, evaluate it beside them and write it as a package at ``output``.

    Args:
        packages: two or more package folders (same labels, input contract and test split).
        output: the new package folder (its name is the version; it must not exist or be empty).
        name: the model name (default: the first member's name with ``-ensemble``).
        progress: called with a line per step.

    Returns:
        An :class:`EnsembleOutcome`.

    Raises:
        ConfigError: members that differ (one line saying how), an output folder that is taken.
    """
    from training.package import write_package
    from training.train import TrainResult

    say = progress or (lambda line: None)
    output = Path(output)
    check_version_string(output.name, "ensemble folder name (it becomes the version)")
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"{output} exists and is not empty; choose a new --output folder")
    members = [_load_member(Path(p)) for p in packages]
    check_members(members)
    config = _ensemble_config(members[0], name)
    data = _member_data(members[0], config)
    say(f"building the ensemble of {len(members)}: {', '.join(m.manifest.tag for m in members)}")
    model = build_ensemble([m.model for m in members], config.model.name)
    output.mkdir(parents=True, exist_ok=True)
    result = TrainResult(run_dir=output, model=model, history={}, datasets=data, epochs_run=0)
    say("evaluating and writing the package")
    pkg, manifest = write_package(result, config)
    return _record_comparison(pkg, manifest, members, config.train.top_k)


def _ensemble_config(first: _Member, name: str | None):
    """The first member's training config, renamed (its data section says where the test split is)."""
    from training.config import saved_training_config

    config = saved_training_config(first.manifest.training_config)
    model_name = check_version_string(name or f"{first.manifest.name}-ensemble", "ensemble name")
    return config.model_copy(update={"model": config.model.model_copy(update={"name": model_name})})


def _record_comparison(pkg: Path, manifest: Manifest, members: list[_Member], top_k: int) -> EnsembleOutcome:
    """Evaluate beside the members, write ``eval/ensemble.json`` and name the members in the manifest."""
    from training.package import refresh_files

    with np.load(pkg / "reference" / "predictions.npz", allow_pickle=False) as npz:
        labels, probs = npz["labels"], npz["probabilities"]
    metrics = _comparison(members, probs, labels, manifest.labels, top_k)
    payload = {
        "members": [{"tag": m.manifest.tag, "package": str(m.package.resolve())} for m in members],
        "metrics": metrics,
    }
    write_json_atomic(pkg / ENSEMBLE_FILE, payload)
    manifest.base_model = {
        "name": "ensemble",
        "members": [m.manifest.tag for m in members],
        "member_bases": [m.manifest.base_model.get("name") for m in members],
        "parameters": manifest.base_model.get("parameters"),
    }
    manifest.metrics["members_accuracy"] = {m.manifest.tag: metrics[m.manifest.tag]["accuracy"] for m in members}
    refresh_files(pkg, manifest, ("eval",))
    write_manifest(pkg, manifest)
    return EnsembleOutcome(pkg, manifest, comparison_table(metrics), metrics)


__all__ = ["ENSEMBLE_FILE", "EnsembleOutcome", "build_ensemble", "check_members", "comparison_table", "run_ensemble"]
