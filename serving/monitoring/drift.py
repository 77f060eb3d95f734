"""Drift of live traffic against the reference statistics stored in the model package.

Four signals, each a two-sample test between the package's reference split (``reference/stats.json``
and ``reference/embeddings.npy``, written by training) and a rolling window of recent requests:

========== ================================ =========================================================
signal     data                             test
========== ================================ =========================================================
prediction predicted class                  PSI vs the reference class frequencies (chi-square p too)
confidence top-1 probability                two-sample Kolmogorov-Smirnov
input      brightness, contrast, saturation, per-feature KS, Bonferroni over the features
           original width and height
embedding  penultimate-layer embedding      RBF-kernel MMD^2, permutation null with a gamma fit
========== ================================ =========================================================

Calibration: ``MonitorConfig.ks_pvalue`` is the false-alarm probability of one evaluation *over all
signals*. It is split evenly over the signals the reference supports (Bonferroni), and the input
signal splits its share again over its features. PSI and MMD^2 thresholds are the larger of the
configured minimum effect size and the statistic's null quantile at that level (PSI: simulated by
resampling both sides at their sizes; MMD^2: the gamma fit of the permutation distribution), so small
reference samples and small windows do not raise false alarms. A signal reports drift once
``MonitorConfig.alarm_after`` consecutive evaluations flag it. For a quantized variant, the reference
confidences are first rounded onto the variant's output grid (:func:`quantize_like`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import Manifest, VariantInfo, verify_file
from serving.config import MonitorConfig
from serving.monitoring.metrics import SIGNALS
from serving.monitoring.stats import (
    chi2_homogeneity,
    ks_2samp,
    ks_critical_value,
    mmd_permutation_test,
    psi,
    psi_null_quantile,
)

logger = logging.getLogger(__name__)

STATS_FILE = "reference/stats.json"
EMBEDDINGS_FILE = "reference/embeddings.npy"
#: The image features of the input signal, in the order :class:`DriftWindow` stores them.
FEATURES: tuple[str, ...] = ("brightness", "contrast", "saturation", "width", "height")
#: Evaluations kept in :attr:`DriftWindow.history`.
HISTORY = 100
_METHODS = {
    "prediction": "psi",
    "confidence": "ks",
    "input": "ks-bonferroni",
    "embedding": "mmd-rbf",
}


@dataclass
class Reference:
    """The reference sample of each signal; ``problems`` names the signals that cannot be computed and why."""

    labels: list[str]
    count: int = 0
    class_counts: np.ndarray | None = None
    confidence: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def supported(self) -> list[str]:
        """The signals this reference can test."""
        return [s for s in SIGNALS if s not in self.problems]


def load_reference(manifest: Manifest, package_dir: Path) -> Reference:
    """Read the package's reference statistics, verifying each file's sha256 against the manifest.

    Never raises: a missing, altered or inconsistent file makes the signals that need it unavailable,
    with the reason in :attr:`Reference.problems`.
    """
    ref = Reference(labels=list(manifest.labels))
    try:
        stats = json.loads(verify_file(package_dir, manifest, STATS_FILE).read_text())
        if not isinstance(stats, dict):
            raise ValueError(f"{STATS_FILE} holds {type(stats).__name__}, not an object")
    except Exception as exc:
        reason = f"no usable reference statistics: {exc}"
        ref.problems = dict.fromkeys(SIGNALS, reason)
        return ref
    if stats.get("labels") not in (None, manifest.labels):
        reason = (
            f"{STATS_FILE} was computed for labels {stats.get('labels')}, the manifest has {manifest.labels}"
        )
        ref.problems = dict.fromkeys(SIGNALS, reason)
        return ref
    ref.count = int(stats.get("count") or 0)
    k = len(manifest.labels)
    try:
        freqs = np.asarray(stats["class_frequencies"], dtype=np.float64)
        if freqs.shape != (k,) or ref.count <= 0:
            raise ValueError(f"class_frequencies has shape {freqs.shape}, expected ({k},), count {ref.count}")
        ref.class_counts = np.round(freqs * ref.count)
    except Exception as exc:
        ref.problems["prediction"] = f"reference class frequencies unusable: {exc}"
    try:
        conf = np.asarray(stats["confidence"]["sample"], dtype=np.float64)
        if conf.ndim != 1 or len(conf) < 2 or not np.all(np.isfinite(conf)):
            raise ValueError(f"confidence sample has shape {conf.shape}")
        ref.confidence = np.sort(conf)
    except Exception as exc:
        ref.problems["confidence"] = f"reference confidence sample unusable: {exc}"
    image = stats.get("image_stats") or {}
    for name in FEATURES:
        try:
            values = np.asarray(image.get(name, []), dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if name in ("width", "height"):
            values = values[values > 0]  # 0 marks an image whose size could not be read
        values = values[np.isfinite(values)]
        if len(values) >= 2:
            ref.features[name] = np.sort(values)
    if not ref.features:
        ref.problems["input"] = "the reference has no image statistics"
    try:
        emb = np.load(verify_file(package_dir, manifest, EMBEDDINGS_FILE), allow_pickle=False)
        if emb.ndim != 2 or len(emb) < 2 or not np.all(np.isfinite(emb)):
            raise ValueError(f"{EMBEDDINGS_FILE} has shape {emb.shape}; expected (samples, dim)")
        ref.embeddings = emb.astype(np.float64)
    except Exception as exc:
        ref.problems["embedding"] = f"no usable reference embeddings: {exc}"
    return ref


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


def _need(value: np.ndarray | None, what: str) -> np.ndarray:
    if value is None:
        raise RuntimeError(f"the reference {what} is missing")
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _num(value: float | None) -> float | None:
    """A JSON-safe float (``None`` for NaN/inf)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class DriftWindow:
    """The rolling window of recent observations and the last drift result of each signal.

    :meth:`add` and :meth:`evaluate` are called from one thread (the monitor's worker);
    :meth:`snapshot` may be called from any thread.
    """

    def __init__(
        self, reference: Reference, config: MonitorConfig, variants: dict[str, VariantInfo] | None = None
    ):
        self.reference = reference
        self.config = config
        self.variants = dict(variants or {})
        self.size = config.window
        self.every = config.evaluate_every or max(1, self.size // 2)
        supported = max(1, len(reference.supported))
        #: Significance level of one signal: the per-evaluation false-alarm budget split over the signals.
        self.alpha = config.ks_pvalue / supported
        self._pred = np.zeros(self.size, dtype=np.int64)
        self._conf = np.zeros(self.size, dtype=np.float64)
        self._feat = np.full((self.size, len(FEATURES)), np.nan, dtype=np.float64)
        self._variant: list[str] = [""] * self.size
        self._emb: np.ndarray | None = None
        self._count = 0
        self._emb_count = 0
        self._since = 0
        self._emb_problem: str | None = None
        self._psi_null: float | None = None
        self._streak: dict[str, int] = {}
        self.evaluations = 0
        #: One line per recent evaluation: when, which signals detected drift, and every score.
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        #: How many evaluations detected drift, per signal, since start.
        self.alarms: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._results: dict[str, dict[str, Any]] = {s: self._initial(s) for s in SIGNALS}

    # -- window ------------------------------------------------------------------------------------
    def add(
        self,
        pred: int,
        confidence: float,
        features: tuple[float, ...],
        embedding: np.ndarray | None,
        variant: str,
    ) -> None:
        """Append one observation (the oldest one leaves once the window is full)."""
        i = self._count % self.size
        self._pred[i] = pred
        self._conf[i] = round(confidence, 6)  # the reference sample is stored rounded to 6 decimals
        self._feat[i] = features
        self._variant[i] = variant
        self._count += 1
        self._since += 1
        if embedding is not None:
            self._add_embedding(embedding)

    def _add_embedding(self, embedding: np.ndarray) -> None:
        ref = self.reference.embeddings
        if ref is None:
            return
        vec = np.asarray(embedding, dtype=np.float64).ravel()
        if vec.size != ref.shape[1]:
            self._emb_problem = (
                f"the served embedding has {vec.size} values, the reference has {ref.shape[1]}"
            )
            raise ValueError(self._emb_problem)
        if not np.all(np.isfinite(vec)):
            raise ValueError("the embedding holds NaN or infinite values")
        if self._emb is None:
            self._emb = np.zeros((self.size, ref.shape[1]), dtype=np.float64)
        self._emb[self._emb_count % self.size] = vec
        self._emb_count += 1
        self._emb_problem = None

    def due(self) -> bool:
        """True when the window is full and ``evaluate_every`` observations arrived since the last evaluation."""
        return self._count >= self.size and self._since >= self.every

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Test every available signal on the current window; store and return the results.

        A signal whose computation fails is reported unavailable with the error; the others still run.
        """
        self._since = 0
        seed = self.evaluations
        results: dict[str, dict[str, Any]] = {}
        for signal in SIGNALS:
            if signal in self.reference.problems:
                results[signal] = self._unavailable(signal, self.reference.problems[signal])
                continue
            try:
                results[signal] = getattr(self, f"_eval_{signal}")(seed)
            except Exception as exc:
                logger.warning("drift signal %s failed: %s", signal, exc, exc_info=True)
                results[signal] = self._unavailable(signal, f"evaluation failed: {type(exc).__name__}: {exc}")
                results[signal]["error"] = True
        for signal, result in results.items():
            flagged = bool(result.get("detected"))
            self._streak[signal] = self._streak.get(signal, 0) + 1 if flagged else 0
            result["flagged"] = flagged
            result["consecutive"] = self._streak[signal]
            result["detected"] = flagged and self._streak[signal] >= self.config.alarm_after
        summary = {
            "evaluation": self.evaluations + 1,
            "updated": _now(),
            "observed": self._count,
            "detected": [s for s, r in results.items() if r.get("detected")],
            "scores": {s: r.get("score") for s, r in results.items()},
        }
        with self._lock:
            self._results = results
            self.evaluations += 1
            self.history.append(summary)
            for signal in summary["detected"]:
                self.alarms[signal] += 1
        return results

    def _base(self, signal: str, window: int, reference: int) -> dict[str, Any]:
        return {
            "available": True,
            "method": _METHODS[signal],
            "window_size": window,
            "reference_size": reference,
            "alpha": self.alpha,
            "updated": _now(),
        }

    def _eval_prediction(self, seed: int) -> dict[str, Any]:
        ref = _need(self.reference.class_counts, "class counts")
        counts = np.bincount(self._pred, minlength=len(ref))[: len(ref)]
        if self._psi_null is None:
            self._psi_null = psi_null_quantile(ref, self.size, 1.0 - self.alpha)
        threshold = max(self.config.psi_threshold, self._psi_null)
        score = float(psi(ref, counts))
        chi, p, df = chi2_homogeneity(ref, counts)
        ref_f = ref / max(ref.sum(), 1)
        win_f = counts / max(counts.sum(), 1)
        top = np.argsort(-np.abs(win_f - ref_f))[:5]
        out = self._base("prediction", int(counts.sum()), int(ref.sum()))
        out.update(
            score=score,
            threshold=threshold,
            detected=bool(score > threshold),
            p_value=_num(p),
            details={
                "chi2": _num(chi),
                "df": df,
                "null_quantile": self._psi_null,
                "largest_changes": [
                    {
                        "label": self.reference.labels[i],
                        "reference": float(ref_f[i]),
                        "window": float(win_f[i]),
                    }
                    for i in top
                ],
            },
        )
        return out

    def _eval_confidence(self, seed: int) -> dict[str, Any]:
        ref = _need(self.reference.confidence, "confidence sample")
        variant = Counter(self._variant).most_common(1)[0][0]
        ref = quantize_like(ref, self.variants.get(variant))
        d, p = ks_2samp(ref, self._conf)
        out = self._base("confidence", self.size, len(ref))
        out.update(
            score=d,
            threshold=ks_critical_value(len(ref), self.size, self.alpha),
            detected=bool(p < self.alpha),
            p_value=p,
            details={
                "reference_mean": float(ref.mean()),
                "window_mean": float(self._conf.mean()),
                "window_quantiles": np.quantile(self._conf, [0.05, 0.25, 0.5, 0.75, 0.95]).round(6).tolist(),
            },
        )
        return out

    def _eval_input(self, seed: int) -> dict[str, Any]:
        names = list(self.reference.features)
        alpha = self.alpha / len(names)
        per: dict[str, dict[str, Any]] = {}
        worst, worst_p = names[0], 2.0
        for name in names:
            ref = self.reference.features[name]
            live = self._feat[:, FEATURES.index(name)]
            live = live[np.isfinite(live)]
            if name in ("width", "height"):
                live = live[live > 0]
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
        out = self._base("input", self.size, len(self.reference.features[worst]))
        out.update(
            score=per[worst]["statistic"],
            threshold=per[worst]["threshold"],
            detected=bool(adjusted < self.alpha),
            p_value=adjusted,
            details={"feature": worst, "features": per},
        )
        return out

    def _eval_embedding(self, seed: int) -> dict[str, Any]:
        ref = _need(self.reference.embeddings, "embeddings")
        if self._emb_problem is not None:
            return self._unavailable("embedding", self._emb_problem)
        if self._emb_count == 0:
            return self._unavailable(
                "embedding",
                "the served variant returns no embedding; serve a variant with an 'embedding' output "
                "(e.g. model_embedding.onnx) to monitor it",
            )
        if self._emb_count < self.size:
            out = self._unavailable(
                "embedding", f"warming up: {self._emb_count}/{self.size} embeddings received"
            )
            out["available"] = True
            return out
        result = mmd_permutation_test(
            ref,
            _need(self._emb, "embedding window"),
            alpha=self.alpha,
            permutations=self.config.permutations,
            seed=seed,
        )
        threshold = max(result.threshold, self.config.mmd_threshold)
        out = self._base("embedding", self.size, len(ref))
        out.update(
            score=result.statistic,
            threshold=threshold,
            detected=bool(result.statistic > threshold),
            p_value=result.p_value,
            details={
                "calibrated_threshold": result.threshold,
                "permutation_p_value": result.permutation_p_value,
                "permutations": self.config.permutations,
                "null_mean": result.null_mean,
                "null_std": result.null_std,
                "bandwidth": result.bandwidth,
            },
        )
        return out

    # -- reporting ---------------------------------------------------------------------------------
    def _initial(self, signal: str) -> dict[str, Any]:
        if signal in self.reference.problems:
            return self._unavailable(signal, self.reference.problems[signal])
        out = self._unavailable(signal, "warming up: no full window yet")
        out["available"] = True
        return out

    def _unavailable(self, signal: str, reason: str) -> dict[str, Any]:
        return {
            "available": False,
            "method": _METHODS[signal],
            "reason": reason,
            "score": None,
            "threshold": None,
            "detected": False,
            "p_value": None,
            "window_size": min(self._count, self.size),
            "reference_size": None,
            "alpha": self.alpha,
            "updated": None,
        }

    def snapshot(self) -> dict[str, Any]:
        """The last result of each signal (a copy), plus the window's fill level."""
        with self._lock:
            results = {k: dict(v) for k, v in self._results.items()}
            evaluations = self.evaluations
            history = [dict(h) for h in self.history]
            alarms = {signal: self.alarms.get(signal, 0) for signal in SIGNALS}
        return {
            "window": self.size,
            "evaluate_every": self.every,
            "observed": self._count,
            "in_window": min(self._count, self.size),
            "evaluations": evaluations,
            "alpha": self.config.ks_pvalue,
            "signal_alpha": self.alpha,
            "detected": any(r.get("detected") for r in results.values()),
            "signals": results,
            "alarms": alarms,
            "history": history,
        }
