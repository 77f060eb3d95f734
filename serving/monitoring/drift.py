"""Drift of live traffic against the reference statistics stored in the model package.

:func:`load_reference` computes each signal's reference sample; :class:`DriftWindow` keeps the rolling
window of recent observations, runs each signal's test and keeps the results. Both loop over
:data:`serving.monitoring.signals.SIGNALS`, where each signal's data and test are described.

Calibration: ``MonitorConfig.ks_pvalue`` is the false-alarm probability of one evaluation *over all
signals*. It is split evenly over the signals the reference supports (Bonferroni), and the input
signal splits its share again over its features. PSI and MMD^2 thresholds are the larger of the
configured minimum effect size and the statistic's null quantile at that level (PSI: simulated by
resampling both sides at their sizes; MMD^2: the gamma fit of the permutation distribution), so small
reference samples and small windows do not raise false alarms. A signal reports drift once
``MonitorConfig.alarm_after`` consecutive evaluations flag it. For a quantized variant, the reference
confidences are first rounded onto the variant's output grid (:func:`~serving.monitoring.signals.quantize_like`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import Manifest, VariantInfo, verify_file
from edge.reference import STATS_FILE, read_reference_stats
from serving.config import MonitorConfig
from serving.monitoring.signals import SIGNALS, Observation, Outcome, ReferenceSource, SignalSpec, TestInput

logger = logging.getLogger(__name__)

#: Evaluations kept in :attr:`DriftWindow.history`.
HISTORY = 100


@dataclass
class Reference:
    """The reference sample of each signal; ``problems`` names the signals that cannot be computed and why."""

    labels: list[str]
    samples: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def supported(self) -> list[str]:
        """The signals this reference can test."""
        return [s for s in SIGNALS if s not in self.problems]


def load_reference(manifest: Manifest, package_dir: Path) -> Reference:
    """Read the package's reference statistics, verifying each file's sha256 against the manifest.

    Never raises: a missing, altered or invalid file makes the signals that need it unavailable,
    with the reason in :attr:`Reference.problems`.
    """
    ref = Reference(labels=list(manifest.labels))
    try:
        stats = read_reference_stats(verify_file(package_dir, manifest, STATS_FILE))
    except Exception as exc:
        ref.problems = dict.fromkeys(SIGNALS, f"no usable reference statistics: {exc}")
        return ref
    if stats.labels != manifest.labels:
        reason = f"{STATS_FILE} was computed for labels {stats.labels}, the manifest has {manifest.labels}"
        ref.problems = dict.fromkeys(SIGNALS, reason)
        return ref
    source = ReferenceSource(stats, manifest, Path(package_dir))
    for name, spec in SIGNALS.items():
        try:
            ref.samples[name] = spec.reference(source)
        except Exception as exc:
            ref.problems[name] = f"{spec.unusable}: {exc}"
    return ref


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Ring:
    """The last ``size`` values one signal received (allocated on the first value)."""

    def __init__(self, size: int, dtype: type) -> None:
        self.size = size
        self.dtype = dtype
        self.data: np.ndarray | None = None
        self.count = 0
        #: Why the last value was refused (cleared by the next good one).
        self.problem: str | None = None

    def push(self, value: Any) -> None:
        if self.data is None:
            self.data = np.zeros((self.size, *np.shape(value)), dtype=self.dtype)
        self.data[self.count % self.size] = value
        self.count += 1
        self.problem = None

    @property
    def values(self) -> np.ndarray:
        if self.data is None:
            raise RuntimeError("the window holds no values")
        return self.data if self.count >= self.size else self.data[: self.count]


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
        self._rings = {name: _Ring(self.size, spec.dtype) for name, spec in SIGNALS.items()}
        self._variant: list[str] = [""] * self.size
        self._memo: dict[str, dict[str, Any]] = {name: {} for name in SIGNALS}
        self._count = 0
        self._since = 0
        self._streak: dict[str, int] = {}
        self.evaluations = 0
        #: One line per recent evaluation: when, which signals detected drift, and every score.
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        #: How many evaluations detected drift, per signal, since start.
        self.alarms: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._results: dict[str, dict[str, Any]] = {s: self._initial(s) for s in SIGNALS}

    # -- window ------------------------------------------------------------------------------------
    def add(self, obs: Observation) -> None:
        """Append one observation to each signal it feeds (the oldest one leaves once the window is full).

        Raises:
            ValueError: a value was refused (e.g. an embedding of the wrong size); the other signals
                still took theirs, and the refused signal reports why until a good value arrives.
        """
        self._variant[self._count % self.size] = obs.variant
        self._count += 1
        self._since += 1
        refused: list[str] = []
        for name, spec in SIGNALS.items():
            if name in self.reference.problems:
                continue
            ring = self._rings[name]
            try:
                value = spec.feed(obs, self.reference.samples.get(name))
            except Exception as exc:
                ring.problem = str(exc)
                refused.append(f"{name}: {exc}")
                continue
            if value is not None:
                ring.push(value)
        if refused:
            raise ValueError("; ".join(refused))

    def due(self) -> bool:
        """True when the window is full and ``evaluate_every`` observations arrived since the last evaluation."""
        return self._count >= self.size and self._since >= self.every

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Test every available signal on the current window; store and return the results.

        A signal whose computation fails is reported unavailable with the error; the others still run.
        """
        self._since = 0
        results = {name: self._test(name, spec, self.evaluations) for name, spec in SIGNALS.items()}
        self._count_streaks(results)
        self._record(results)
        return results

    def _test(self, name: str, spec: SignalSpec, seed: int) -> dict[str, Any]:
        """One signal's result: its test's outcome, or why it could not run."""
        if name in self.reference.problems:
            return self._unavailable(name, self.reference.problems[name])
        ring = self._rings[name]
        if ring.problem is not None:
            return self._unavailable(name, ring.problem)
        if ring.count == 0:
            return self._unavailable(name, spec.missing)
        if ring.count < self.size:
            return self._warming_up(name, f"warming up: {ring.count}/{self.size} {spec.values} received")
        try:
            outcome = spec.test(self._test_input(name, ring, seed))
        except Exception as exc:
            logger.warning("drift signal %s failed: %s", name, exc, exc_info=True)
            out = self._unavailable(name, f"evaluation failed: {type(exc).__name__}: {exc}")
            out["error"] = True
            return out
        return self._available(name, outcome)

    def _test_input(self, name: str, ring: _Ring, seed: int) -> TestInput:
        variant = Counter(self._variant).most_common(1)[0][0]
        return TestInput(
            reference=self.reference.samples[name],
            values=ring.values,
            size=self.size,
            alpha=self.alpha,
            config=self.config,
            seed=seed,
            variant=self.variants.get(variant),
            memo=self._memo[name],
            labels=self.reference.labels,
        )

    def _count_streaks(self, results: dict[str, dict[str, Any]]) -> None:
        """Flagged by the test, detected once flagged ``alarm_after`` evaluations in a row."""
        for signal, result in results.items():
            flagged = bool(result.get("detected"))
            self._streak[signal] = self._streak.get(signal, 0) + 1 if flagged else 0
            result["flagged"] = flagged
            result["consecutive"] = self._streak[signal]
            result["detected"] = flagged and self._streak[signal] >= self.config.alarm_after

    def _record(self, results: dict[str, dict[str, Any]]) -> None:
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

    # -- reporting ---------------------------------------------------------------------------------
    def _available(self, signal: str, outcome: Outcome) -> dict[str, Any]:
        return {
            "available": True,
            "method": SIGNALS[signal].method,
            "window_size": outcome.window_size,
            "reference_size": outcome.reference_size,
            "alpha": self.alpha,
            "updated": _now(),
            "score": outcome.score,
            "threshold": outcome.threshold,
            "detected": outcome.detected,
            "p_value": outcome.p_value,
            "details": outcome.details,
        }

    def _initial(self, signal: str) -> dict[str, Any]:
        if signal in self.reference.problems:
            return self._unavailable(signal, self.reference.problems[signal])
        return self._warming_up(signal, "warming up: no full window yet")

    def _warming_up(self, signal: str, reason: str) -> dict[str, Any]:
        out = self._unavailable(signal, reason)
        out["available"] = True
        return out

    def _unavailable(self, signal: str, reason: str) -> dict[str, Any]:
        return {
            "available": False,
            "method": SIGNALS[signal].method,
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
