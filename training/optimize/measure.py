"""Measuring a built variant against the Keras float reference: outputs, accuracy, agreement, latency.

Every variant is run by its format's runner from :data:`edge.variants.FORMATS` (the edge runners for
TFLite and ONNX); a format no edge runtime runs (the SavedModel) is run with TensorFlow here, behind
the same :class:`edge.runners.Runner` surface, so that evaluation and latency treat every format alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import InputContract
from edge.runners import Runner, TensorSpec, default_threads
from edge.variants import EMBEDDING, PROBABILITIES, Variant
from training.optimize.builders import OptimizeData
from training.optimize.errors import OptimizeError
from training.optimize.gates import gate_checks
from training.optimize.results import VariantResult

EVAL_BATCH = 64


class SavedModelRunner(Runner):
    """Runs a SavedModel's ``serving_default`` with TensorFlow (a training-side check; devices use TFLite/ONNX)."""

    format = "saved_model"

    def __init__(self, directory: Path, num_threads: int | None = None):
        from training._tf import tf

        self._loaded = tf.saved_model.load(str(directory))
        self._fn = self._loaded.signatures["serving_default"]
        self.path = Path(directory)
        self.num_threads = num_threads or default_threads()  # TensorFlow's pool: not set per model
        spec = self._fn.structured_input_signature[1]["image"]
        self.input_shape = tuple(None if d is None else int(d) for d in spec.shape)
        self.input_specs = [TensorSpec("image", self.input_shape, np.dtype(np.float32))]
        self.output_names = [PROBABILITIES]
        self.output_specs = [TensorSpec(PROBABILITIES, (None, None), np.dtype(np.float32))]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from training._tf import tf

        out = self._fn(image=tf.constant(self.prepare(batch)))
        return {PROBABILITIES: out[PROBABILITIES].numpy()}

    def close(self) -> None:
        self._loaded = None


#: Runners for the formats no edge runtime runs, keyed by format name.
TENSORFLOW_RUNNERS: dict[str, type[Runner]] = {"saved_model": SavedModelRunner}


def open_variant(variant: Variant, path: Path, num_threads: int | None = None) -> Runner:
    """A runner for a built variant: its format's edge runner, or TensorFlow for a SavedModel."""
    fmt = variant.file_format
    if fmt.open is not None:
        return fmt.open(path, num_threads)
    return TENSORFLOW_RUNNERS[fmt.name](path, num_threads)  # type: ignore[call-arg]


def run_all(runner: Runner, x: np.ndarray, batch: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Every output of ``runner`` on ``x``, run in batches and concatenated."""
    outs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch):
        for name, arr in runner.run(x[start : start + batch]).items():
            outs.setdefault(name, []).append(arr)
    return {k: np.concatenate(v) for k, v in outs.items()}


def keras_outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    """A Keras model's outputs on ``uint8`` images, as a list."""
    out = model.predict(x.astype(np.float32), verbose=0, batch_size=EVAL_BATCH)
    return out if isinstance(out, list) else [out]


def _accuracy_f1(
    y: np.ndarray | None, probs: np.ndarray, num_classes: int
) -> tuple[float | None, float | None]:
    if y is None:
        return None, None
    from edge.evaluate import classification_metrics

    preds = probs.argmax(axis=1)
    metrics = classification_metrics(
        y, preds, [str(i) for i in range(num_classes)]
    )  # as training's evaluation
    return float(metrics["accuracy"]), float(metrics["macro"]["f1"])


def io_info(variant: Variant, path: Path) -> dict[str, Any]:
    """Input/output dtypes and quantization of a built file, read from the file by its format's reader."""
    return variant.file_format.inspect(path)


def latency(variant: Variant, path: Path, threads: int, config: Any) -> dict[str, float]:
    """p50/p90/p99 (ms) of one-image predictions with ``threads`` threads (warm-up, then >= N runs and >= T s)."""
    from edge.bench import benchmark

    runner = open_variant(variant, path, num_threads=threads)
    try:
        res = benchmark(
            runner,
            runs=config.latency_runs,
            min_time=config.latency_min_time_s,
            warmup_runs=config.latency_warmup_runs,
            mode="predict",
        )
    finally:
        runner.close()
    return {"p50": res.p50_ms, "p90": res.p90_ms, "p99": res.p99_ms, "runs": res.runs, "threads": threads}


def latencies(variant: Variant, path: Path, config: Any) -> dict[str, dict[str, float]]:
    """Latency with one thread (formats whose runner takes a thread count) and with all cores."""
    all_threads = default_threads()
    one = latency(variant, path, 1, config) if variant.file_format.threads else None
    every = one if all_threads == 1 and one else latency(variant, path, all_threads, config)
    return {k: v for k, v in (("1", one), ("all", every)) if v is not None}


@dataclass
class Reference:
    """The Keras float reference's outputs and scores on the evaluation images."""

    probabilities: np.ndarray
    embedding: np.ndarray | None
    accuracy: float | None
    macro_f1: float | None
    evaluated_on: str = "test"
    notes: list[str] = field(default_factory=list)


def reference_outputs(model: Any, data: OptimizeData, num_classes: int) -> Reference:
    """Run the Keras model (with its embedding) on the evaluation images."""
    from training.models import embedding_model

    probs, emb = keras_outputs(embedding_model(model), _test_images(data))
    acc, f1 = _accuracy_f1(data.test_y, probs, num_classes)
    where = "synthetic" if data.synthetic_test else data.test_split
    return Reference(probs, emb, acc, f1, evaluated_on=where, notes=list(data.notes))


def _test_images(data: OptimizeData) -> np.ndarray:
    if data.test_x is None:
        raise OptimizeError("no evaluation images; pass the data through evaluation_data() first")
    return data.test_x


def _agreement_metrics(probs: np.ndarray, reference: Reference, y: np.ndarray | None) -> dict[str, Any]:
    acc, f1 = _accuracy_f1(y, probs, reference.probabilities.shape[1])
    return {
        "count": len(probs),
        "accuracy": acc,
        "macro_f1": f1,
        "reference_accuracy": reference.accuracy,
        "accuracy_drop": None if acc is None or reference.accuracy is None else reference.accuracy - acc,
        "agreement": float(np.mean(probs.argmax(axis=1) == reference.probabilities.argmax(axis=1))),
        "max_prob_diff": float(np.max(np.abs(probs - reference.probabilities))),
    }


def _parent_metrics(probs: np.ndarray, parent: Any, data: OptimizeData, m: dict[str, Any]) -> dict[str, Any]:
    """Agreement with the fine-tuned float model the file was converted from (the reference when none)."""
    if parent is None:
        return {"agreement_parent": m["agreement"], "max_prob_diff_parent": m["max_prob_diff"]}
    parent_probs = keras_outputs(parent, _test_images(data))[0]
    return {
        "agreement_parent": float(np.mean(probs.argmax(axis=1) == parent_probs.argmax(axis=1))),
        "max_prob_diff_parent": float(np.max(np.abs(probs - parent_probs))),
        "parent_accuracy": _accuracy_f1(data.test_y, parent_probs, probs.shape[1])[0],
    }


def _embedding_metrics(key: str, outs: dict[str, np.ndarray], reference: Reference) -> dict[str, Any]:
    if EMBEDDING not in outs:
        raise OptimizeError(f"{key} has no 'embedding' output (outputs: {', '.join(outs)})")
    diff = float(np.max(np.abs(outs[EMBEDDING] - reference.embedding)))
    scale = float(np.max(np.abs(reference.embedding))) or 1.0  # type: ignore[arg-type]
    return {"embedding_max_diff": diff, "embedding_rel_diff": diff / scale}


def variant_metrics(
    result: VariantResult, path: Path, parent: Any, reference: Reference, data: OptimizeData
) -> dict[str, Any]:
    """Accuracy, agreement and probability differences of a built variant against the reference.

    Raises:
        OptimizeError: the variant's probabilities have another shape, or its embedding output is missing.
    """
    runner = open_variant(result.spec, path)
    try:
        outs = run_all(runner, _test_images(data))
    finally:
        runner.close()
    probs = outs.get(PROBABILITIES, next(iter(outs.values())))
    if probs.shape != reference.probabilities.shape:
        raise OptimizeError(
            f"{result.key} returned probabilities of shape {probs.shape}, the Keras model {reference.probabilities.shape}"
        )
    m = _agreement_metrics(probs, reference, data.test_y)
    m["evaluated_on"] = "synthetic" if data.synthetic_test else data.test_split
    m.update(_parent_metrics(probs, parent, data, m))
    if result.spec.outputs_embedding and reference.embedding is not None:
        m.update(_embedding_metrics(result.key, outs, reference))
    return m


def judge(result: VariantResult, gates: Any) -> None:
    """Set the gate's checks, the status and the reason of ``result`` from its metrics (in place)."""
    spec = result.spec
    result.checks = gate_checks(spec.gate, result.metrics, gates, retrained=spec.needs_fine_tuning)
    failed = result.failed_checks()
    unknown = [c for c in result.checks if c.passed is None]
    if failed:
        result.status = "failed_gate"
        result.reason = "gate failed: " + "; ".join(c.describe() for c in failed)
    elif unknown:
        result.status = "not_checked"
        result.reason = (
            "gate not checked: "
            + "; ".join(c.describe() for c in unknown)
            + " (no labelled test images; make the package's data available with --data DIR)"
        )
    else:
        result.status, result.reason = "passed", None


def evaluate_variant(
    result: VariantResult, path: Path, parent: Any, reference: Reference, data: OptimizeData, config: Any
) -> None:
    """Fill ``result`` with accuracy, agreement, probability differences and the gate verdict (in place)."""
    result.metrics = variant_metrics(result, path, parent, reference, data)
    judge(result, config.gates)


def evaluation_data(data: OptimizeData, contract: InputContract, config: Any) -> OptimizeData:
    """``data`` with test images capped at ``eval_samples``, or random ones (and no labels) when there are none."""
    if data.test_x is None or len(data.test_x) == 0:
        rng = np.random.default_rng(config.seed)
        images = rng.integers(0, 256, (32, contract.height, contract.width, 3), dtype=np.uint8)
        note = "no test images: parity was checked on 32 random images and accuracy was not measured"
        return replace(data, test_x=images, test_y=None, synthetic_test=True, notes=[*data.notes, note])
    if config.eval_samples is not None and len(data.test_x) > config.eval_samples:
        # a random subset: splits are ordered by class, so the first N would hold the first classes only
        keep = np.sort(
            np.random.default_rng(config.seed).choice(len(data.test_x), config.eval_samples, replace=False)
        )
        return replace(
            data, test_x=data.test_x[keep], test_y=None if data.test_y is None else data.test_y[keep]
        )
    return data


def representative(data: OptimizeData, count: int, seed: int) -> np.ndarray | None:
    """Up to ``count`` training images, drawn at random, to calibrate int8 ranges (``None`` without any)."""
    if data.train_x is None or not len(data.train_x):
        return None
    rng = np.random.default_rng(seed)
    n = min(count, len(data.train_x))
    return data.train_x[np.sort(rng.choice(len(data.train_x), n, replace=False))]
