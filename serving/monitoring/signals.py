"""The drift signals, one registry entry each: ``SIGNALS: dict[str, SignalSpec]``.

Each signal is a two-sample test between the package's reference split (``reference/stats.json``,
:class:`edge.reference.ReferenceStats`, and ``reference/embeddings.npy``, written by training) and a
rolling window of recent requests:

========== ================================ =========================================================
signal     data                             test
========== ================================ =========================================================
prediction predicted class                  PSI vs the reference class frequencies (chi-square p too)
confidence top-1 probability                two-sample Kolmogorov-Smirnov
input      brightness, contrast, saturation, per-feature KS, Bonferroni over the features
           original width and height
embedding  penultimate-layer embedding      RBF-kernel MMD^2, permutation null with a gamma fit
========== ================================ =========================================================

An entry says how the signal's reference sample is computed from the package (``reference``), what one
:class:`Observation` puts into its window (``feed``), its statistical test (``test``) and the
:class:`~serving.config.MonitorConfig` field holding its minimum effect size (``threshold_setting``).
The window (:class:`serving.monitoring.drift.DriftWindow`), the ``/drift`` report and the Prometheus
gauges loop over this table. Adding a signal is one entry plus its ``reference`` and ``test`` functions
(and, when its reference needs data ``stats.json`` does not hold yet, a field of ``ReferenceStats``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import Manifest, VariantInfo, verify_file
from edge.reference import EMBEDDINGS_FILE, IMAGE_FEATURES, ReferenceStats
from serving.config import MonitorConfig
from serving.monitoring.stats import (
    chi2_homogeneity,
    ks_2samp,
    ks_critical_value,
    mmd_permutation_test,
    psi,
    psi_null_quantile,
)

#: The image features of the input signal, in the order :attr:`Observation.features` holds them.
FEATURES: tuple[str, ...] = IMAGE_FEATURES
#: Features where 0 marks an image whose size could not be read.
_SIZE_FEATURES = ("width", "height")


@dataclass(frozen=True)
class Observation:
    """One served prediction, as the request path hands it to the monitor's thread."""

    request_id: str
    #: The pixels the image statistics read (:func:`edge.preprocess.stats_grid`), copied (~9 KB).
    grid: np.ndarray
    #: (width, height) of the uploaded image.
    original_size: tuple[int, int] | None
    prediction: int
    confidence: float
    #: The penultimate-layer embedding (float32, flat), ``None`` when the served variant has none.
    embedding: np.ndarray | None
    variant: str
    #: ``time.time()`` when the prediction was made.
    received: float
    #: The values of :data:`FEATURES`, measured on the monitor's thread (NaN where unknown).
    features: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ReferenceSource:
    """What a signal's reference is computed from: the validated ``stats.json`` and the package."""

    stats: ReferenceStats
    manifest: Manifest
    package_dir: Path

    def array(self, relpath: str) -> np.ndarray:
        """A ``.npy`` file of the package, after checking its sha256 against the manifest."""
        return np.load(verify_file(self.package_dir, self.manifest, relpath), allow_pickle=False)


@dataclass
class TestInput:
    """What a signal's test sees at one evaluation."""

    __test__ = False  # not a pytest class

    reference: Any
    #: The window's values of this signal (rows in storage order, not arrival order).
    values: np.ndarray
    size: int
    #: This signal's significance level (the per-evaluation budget split over the signals).
    alpha: float
    config: MonitorConfig
    seed: int
    #: The variant that served most of the window.
    variant: VariantInfo | None
    #: Kept between evaluations, for values that depend only on the reference and the window size.
    memo: dict[str, Any]
    labels: list[str]


@dataclass(frozen=True)
class Outcome:
    """The result of one test: the score against its threshold, the p-value and what explains them."""

    score: float
    threshold: float
    detected: bool
    p_value: float | None
    window_size: int
    reference_size: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SignalSpec:
    """One drift signal (see the module docstring)."""

    method: str
    #: Reference sample from the package; raises when it cannot be computed (the signal is then unavailable).
    reference: Callable[[ReferenceSource], Any]
    #: Prefix of the reason shown when ``reference`` raises.
    unusable: str
    #: The value one observation adds to the window (``None``: nothing); raises on a bad value.
    feed: Callable[[Observation, Any], Any]
    test: Callable[[TestInput], Outcome]
    #: The MonitorConfig field with the minimum effect size (``None``: the test's critical value alone).
    threshold_setting: str | None = None
    dtype: type = np.float64
    #: What feeds the window, for the warming-up message.
    values: str = "observations"
    #: Why the signal is unavailable when no observation fed it.
    missing: str = "no observation carried this signal"

    def min_threshold(self, config: MonitorConfig) -> float:
        """The configured minimum effect size (0 when the signal has none)."""
        return 0.0 if self.threshold_setting is None else float(getattr(config, self.threshold_setting))


def _num(value: float | None) -> float | None:
    """A JSON-safe float (``None`` for NaN/inf)."""
    if value is None or not np.isfinite(value):
        return None
    return float(value)


def quantize_like(values: np.ndarray, variant: VariantInfo | None) -> np.ndarray:
    """Round reference probabilities onto a quantized variant's output grid (identity for float variants).

    An int8 model outputs probabilities in steps of its output scale; comparing them with the float
    reference would show a KS distance that is only quantization.
    """
    q = variant.output_quantization if variant is not None else None
    if q is None or q.scale <= 0:
        return values
    lo, hi = (-128, 127) if variant.output_dtype == "int8" else (0, 255)
    steps = np.clip(np.round(values / q.scale) + q.zero_point, lo, hi)
    return np.sort(np.round(q.scale * (steps - q.zero_point), 6))


# -- prediction: PSI of the predicted class ------------------------------------------------------------
def _prediction_reference(src: ReferenceSource) -> np.ndarray:
    """Reference class counts, from the predicted class frequencies."""
    count, k = src.stats.count, len(src.manifest.labels)
    freqs = np.asarray(src.stats.class_frequencies, dtype=np.float64)
    if freqs.shape != (k,) or count <= 0:
        raise ValueError(f"class_frequencies has shape {freqs.shape}, expected ({k},), count {count}")
    return np.round(freqs * count)


def _prediction_test(w: TestInput) -> Outcome:
    ref = w.reference
    counts = np.bincount(w.values, minlength=len(ref))[: len(ref)]
    if "null" not in w.memo:
        w.memo["null"] = psi_null_quantile(ref, w.size, 1.0 - w.alpha)
    threshold = max(SIGNALS["prediction"].min_threshold(w.config), w.memo["null"])
    score = float(psi(ref, counts))
    chi, p, df = chi2_homogeneity(ref, counts)
    ref_f = ref / max(ref.sum(), 1)
    win_f = counts / max(counts.sum(), 1)
    top = np.argsort(-np.abs(win_f - ref_f))[:5]
    return Outcome(
        score=score,
        threshold=threshold,
        detected=bool(score > threshold),
        p_value=_num(p),
        window_size=int(counts.sum()),
        reference_size=int(ref.sum()),
        details={
            "chi2": _num(chi),
            "df": df,
            "null_quantile": w.memo["null"],
            "largest_changes": [
                {"label": w.labels[i], "reference": float(ref_f[i]), "window": float(win_f[i])} for i in top
            ],
        },
    )


# -- confidence: KS of the top-1 probability -----------------------------------------------------------
def _confidence_reference(src: ReferenceSource) -> np.ndarray:
    conf = np.asarray(src.stats.confidence.sample, dtype=np.float64)
    if conf.ndim != 1 or len(conf) < 2 or not np.all(np.isfinite(conf)):
        raise ValueError(f"confidence sample has shape {conf.shape}")
    return np.sort(conf)


def _confidence_test(w: TestInput) -> Outcome:
    ref = quantize_like(w.reference, w.variant)
    d, p = ks_2samp(ref, w.values)
    return Outcome(
        score=d,
        threshold=ks_critical_value(len(ref), w.size, w.alpha),
        detected=bool(p < w.alpha),
        p_value=p,
        window_size=w.size,
        reference_size=len(ref),
        details={
            "reference_mean": float(ref.mean()),
            "window_mean": float(w.values.mean()),
            "window_quantiles": np.quantile(w.values, [0.05, 0.25, 0.5, 0.75, 0.95]).round(6).tolist(),
        },
    )


# -- input: KS of each image feature, Bonferroni over the features -------------------------------------
def _usable(name: str, values: np.ndarray) -> np.ndarray:
    """The finite values of a feature (and only positive sizes: 0 marks an unreadable one)."""
    if name in _SIZE_FEATURES:
        values = values[values > 0]
    return values[np.isfinite(values)]


def _input_reference(src: ReferenceSource) -> dict[str, np.ndarray]:
    """Each feature's sorted reference values (features with fewer than two usable values left out)."""
    out = {}
    for name in FEATURES:
        values = _usable(name, np.asarray(src.stats.image_stats.feature(name), dtype=np.float64))
        if len(values) >= 2:
            out[name] = np.sort(values)
    if not out:
        raise ValueError("the reference has no image statistics")
    return out


def _input_test(w: TestInput) -> Outcome:
    names = list(w.reference)
    alpha = w.alpha / len(names)
    per: dict[str, dict[str, Any]] = {}
    worst, worst_p = names[0], 2.0
    for name in names:
        ref = w.reference[name]
        live = _usable(name, w.values[:, FEATURES.index(name)])
        d, p = ks_2samp(ref, live)
        per[name] = {
            "statistic": d,
            "p_value": p,
            "threshold": ks_critical_value(len(ref), max(len(live), 1), alpha),
            "reference_mean": float(ref.mean()),
            "window_mean": _num(float(live.mean())) if len(live) else None,
        }
        if p < worst_p:
            worst, worst_p = name, p
    adjusted = min(1.0, worst_p * len(names))
    return Outcome(
        score=per[worst]["statistic"],
        threshold=per[worst]["threshold"],
        detected=bool(adjusted < w.alpha),
        p_value=adjusted,
        window_size=w.size,
        reference_size=len(w.reference[worst]),
        details={"feature": worst, "features": per},
    )


# -- embedding: MMD^2 of the penultimate-layer embedding -----------------------------------------------
def _embedding_reference(src: ReferenceSource) -> np.ndarray:
    emb = src.array(EMBEDDINGS_FILE)
    if emb.ndim != 2 or len(emb) < 2 or not np.all(np.isfinite(emb)):
        raise ValueError(f"{EMBEDDINGS_FILE} has shape {emb.shape}; expected (samples, dim)")
    return emb.astype(np.float64)


def _embedding_feed(obs: Observation, ref: np.ndarray) -> np.ndarray | None:
    if obs.embedding is None:
        return None
    vec = np.asarray(obs.embedding, dtype=np.float64).ravel()
    if vec.size != ref.shape[1]:
        raise ValueError(f"the served embedding has {vec.size} values, the reference has {ref.shape[1]}")
    if not np.all(np.isfinite(vec)):
        raise ValueError("the embedding holds NaN or infinite values")
    return vec


def _embedding_test(w: TestInput) -> Outcome:
    permutations = w.config.permutations
    result = mmd_permutation_test(w.reference, w.values, alpha=w.alpha, permutations=permutations, seed=w.seed)
    threshold = max(result.threshold, SIGNALS["embedding"].min_threshold(w.config))
    return Outcome(
        score=result.statistic,
        threshold=threshold,
        detected=bool(result.statistic > threshold),
        p_value=result.p_value,
        window_size=w.size,
        reference_size=len(w.reference),
        details={
            "calibrated_threshold": result.threshold,
            "permutation_p_value": result.permutation_p_value,
            "permutations": permutations,
            "null_mean": result.null_mean,
            "null_std": result.null_std,
            "bandwidth": result.bandwidth,
        },
    )


#: The drift signals, in the order they are reported.
SIGNALS: dict[str, SignalSpec] = {
    "prediction": SignalSpec(
        method="psi",
        reference=_prediction_reference,
        unusable="reference class frequencies unusable",
        feed=lambda obs, ref: obs.prediction,
        test=_prediction_test,
        threshold_setting="psi_threshold",
        dtype=np.int64,
    ),
    "confidence": SignalSpec(
        method="ks",
        reference=_confidence_reference,
        unusable="reference confidence sample unusable",
        feed=lambda obs, ref: round(obs.confidence, 6),  # the reference sample is stored rounded to 6 decimals
        test=_confidence_test,
    ),
    "input": SignalSpec(
        method="ks-bonferroni",
        reference=_input_reference,
        unusable="reference image statistics unusable",
        feed=lambda obs, ref: obs.features,
        test=_input_test,
    ),
    "embedding": SignalSpec(
        method="mmd-rbf",
        reference=_embedding_reference,
        unusable="no usable reference embeddings",
        feed=_embedding_feed,
        test=_embedding_test,
        threshold_setting="mmd_threshold",
        values="embeddings",
        missing="the served variant returns no embedding; serve a variant with an 'embedding' output "
        "(e.g. fp32_embedding.tflite) to monitor it",
    ),
}
