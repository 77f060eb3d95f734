"""The Prometheus metrics of the prediction service (all named ``shipyard_*``).

``prometheus_client`` is imported inside :func:`metrics_for`, never at module import: BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` for its workers and the client picks its value class (in-memory or the
multiprocess files that BentoML's ``/metrics`` endpoint aggregates) when it is first imported.
Gauges carry a ``multiprocess_mode`` so that, with several workers, ``/metrics`` shows one value per
series (the worst drift of any live worker, the most recent accuracy).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Histogram buckets (seconds) from 0.5 ms to 5 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: The request stages :meth:`serving.monitoring.Monitor.observe_timing` accepts.
STAGES: tuple[str, ...] = ("decode", "queue", "inference", "total")
#: The stages of monitoring whose own errors ``shipyard_monitoring_errors_total{stage}`` counts.
MONITORING_STAGES: tuple[str, ...] = (
    "count_error", "drift", "estimate", "feedback", "feedback_store", "image_stats", "metrics", "observe", "original_size",
    "sink", "timing", "window", "worker",
)  # fmt: skip


@dataclass(frozen=True)
class MonitorMetrics:
    """The metric objects one process registers (shared by every :class:`Monitor` on one registry)."""

    latency: Any
    predictions: Any
    errors: Any
    monitoring_errors: Any
    dropped: Any
    feedback: Any
    feedback_correct: Any
    live_accuracy: Any
    estimated_accuracy: Any
    drift_score: Any
    drift_threshold: Any
    drift_pvalue: Any
    drift_detected: Any
    drift_available: Any
    drift_evaluations: Any
    drift_alarms: Any


_CACHE: weakref.WeakKeyDictionary[Any, MonitorMetrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _make(registry: Any, kind: type, name: str, doc: str, labels: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """Create and register one metric; when the name is taken, reuse the collector that holds it."""
    try:
        return kind(name, doc, labels, registry=registry, **kwargs)
    except ValueError:
        names = getattr(registry, "_names_to_collectors", {})
        existing = names.get(name) or names.get(name + "_total")
        if isinstance(existing, kind):
            return existing
        logger.warning("metric %s is already registered as something else; keeping ours unregistered", name)
        return kind(name, doc, labels, registry=None, **kwargs)


#: The metrics, one row each: MonitorMetrics field, prometheus_client class, name, help, labels, options.
_METRICS: tuple[tuple[str, str, str, str, tuple[str, ...], dict[str, Any]], ...] = (
    ("latency", "Histogram", "shipyard_latency_seconds",
     "Time spent per request stage: decode, queue (waiting for a batch), inference, total.",
     ("stage",), {"buckets": LATENCY_BUCKETS}),
    ("predictions", "Counter", "shipyard_predictions_total",
     "Predictions served, by predicted label and model variant.", ("label", "variant"), {}),
    ("errors", "Counter", "shipyard_errors_total", "Request errors, by kind.", ("kind",), {}),
    ("monitoring_errors", "Counter", "shipyard_monitoring_errors_total",
     "Errors inside monitoring (swallowed; predictions were not affected), by stage.", ("stage",), {}),
    ("dropped", "Counter", "shipyard_monitoring_dropped_total",
     "Observations dropped because the monitoring queue was full.", (), {}),
    ("feedback", "Counter", "shipyard_feedback_total",
     "Ground-truth labels received on /feedback, by true label.", ("label",), {}),
    ("feedback_correct", "Counter", "shipyard_feedback_correct_total",
     "Feedback whose true label matched the prediction, by true label.", ("label",), {}),
    ("live_accuracy", "Gauge", "shipyard_live_accuracy",
     "Accuracy of the served model version over its most recent feedback (the last `window` labels, kept "
     "across server restarts by the feedback store).",
     (), {"multiprocess_mode": "livemostrecent"}),
    ("estimated_accuracy", "Gauge", "shipyard_estimated_accuracy",
     "Accuracy of the last `window` predictions estimated without labels: the mean of their top-1 probabilities "
     "calibrated on the package's reference split (NaN until the first full window or without a calibration).",
     (), {"multiprocess_mode": "livemostrecent"}),
    ("drift_score", "Gauge", "shipyard_drift_score",
     "Drift statistic of the last evaluated window (PSI, KS distance or MMD^2), by signal.",
     ("signal",), {"multiprocess_mode": "livemax"}),
    ("drift_threshold", "Gauge", "shipyard_drift_threshold",
     "Score above which drift is detected, by signal.", ("signal",), {"multiprocess_mode": "livemax"}),
    ("drift_pvalue", "Gauge", "shipyard_drift_pvalue",
     "p-value of the last drift test, by signal (1 when not evaluated).", ("signal",),
     {"multiprocess_mode": "livemin"}),
    ("drift_detected", "Gauge", "shipyard_drift_detected",
     "1 when the last evaluated window drifted from the training reference, by signal.",
     ("signal",), {"multiprocess_mode": "livemax"}),
    ("drift_available", "Gauge", "shipyard_drift_available",
     "1 when the signal was evaluated on a full window (reference present, inputs received), by signal.",
     ("signal",), {"multiprocess_mode": "livemax"}),
    ("drift_evaluations", "Counter", "shipyard_drift_evaluations_total", "Drift evaluations completed.", (), {}),
    ("drift_alarms", "Counter", "shipyard_drift_alarms_total",
     "Drift evaluations in which the signal detected drift, by signal.", ("signal",), {}),
)  # fmt: skip


def metrics_for(registry: Any | None = None) -> MonitorMetrics:
    """The Shipyard metrics registered in ``registry`` (default: ``prometheus_client.REGISTRY``).

    Creating them twice on the same registry returns the same objects, so several monitors (or tests)
    in one process do not collide.
    """
    import prometheus_client as pc

    registry = pc.REGISTRY if registry is None else registry
    with _LOCK:
        cached = _CACHE.get(registry)
        if cached is not None:
            return cached
        m = MonitorMetrics(
            **{
                field: _make(registry, getattr(pc, kind), name, doc, labels, **options)
                for field, kind, name, doc, labels, options in _METRICS
            }
        )
        _CACHE[registry] = m
        return m


def zero_series(
    m: MonitorMetrics, signals: tuple[str, ...] = (), labels: tuple[str, ...] = (), variant: str | None = None
) -> None:
    """Create every counter series at 0 (each kind of :data:`serving.errors.ERROR_KINDS`, each monitoring stage,
    each drift signal's alarms, each label's feedback and, with ``variant``, predictions), so that an alert on their rate sees 0 from the start instead of no data."""
    from serving.errors import ERROR_KINDS

    for signal in signals:
        m.drift_alarms.labels(signal=signal)
    for label in labels:
        m.feedback.labels(label=label)
        m.feedback_correct.labels(label=label)
        if variant is not None:
            m.predictions.labels(label=label, variant=variant)
    for kind in ERROR_KINDS:
        m.errors.labels(kind=kind)
    for stage in MONITORING_STAGES:
        m.monitoring_errors.labels(stage=stage)


# ------------------------------------------------------------------------------- model lifecycle and shadow


@dataclass(frozen=True)
class LifecycleMetrics:
    """Version switches of a server following an alias (:mod:`serving.lifecycle`)."""

    swaps: Any
    load_failures: Any


@dataclass(frozen=True)
class ShadowMetrics:
    """The shadow candidate against the served model (:mod:`serving.shadow`)."""

    mirrored: Any
    shed: Any
    failures: Any
    agreement: Any
    max_difference: Any
    latency: Any
    predictions: Any
    drift_score: Any
    feedback: Any
    feedback_correct: Any


#: Rows as in :data:`_METRICS`.
_LIFECYCLE: tuple[tuple[str, str, str, str, tuple[str, ...], dict[str, Any]], ...] = (
    ("swaps", "Counter", "shipyard_model_swaps_total",
     "Times this server switched to the version its alias points at.", (), {}),
    ("load_failures", "Counter", "shipyard_model_load_failures_total",
     "Versions the alias pointed at that failed to load or warm up (the previous one kept serving).", (), {}),
)  # fmt: skip
_SHADOW: tuple[tuple[str, str, str, str, tuple[str, ...], dict[str, Any]], ...] = (
    ("mirrored", "Counter", "shipyard_shadow_mirrored_total", "Images the shadow candidate predicted.", (), {}),
    ("shed", "Counter", "shipyard_shadow_shed_total",
     "Requests not mirrored because the shadow queue was full.", (), {}),
    ("failures", "Counter", "shipyard_shadow_failures_total", "Mirrored requests the candidate failed on.", (), {}),
    ("agreement", "Gauge", "shipyard_shadow_agreement",
     "Top-1 agreement of the candidate with the served model, by scope (window, cumulative).", ("scope",),
     {"multiprocess_mode": "livemostrecent"}),
    ("max_difference", "Gauge", "shipyard_shadow_max_probability_difference",
     "Largest probability difference between candidate and served model, by scope.", ("scope",),
     {"multiprocess_mode": "livemax"}),
    ("latency", "Histogram", "shipyard_shadow_latency_seconds",
     "Model time of mirrored requests, by model (primary, candidate).", ("model",), {"buckets": LATENCY_BUCKETS}),
    ("predictions", "Counter", "shipyard_shadow_predictions_total",
     "Predicted classes of mirrored images, by model (primary, candidate) and label.", ("model", "label"), {}),
    ("drift_score", "Gauge", "shipyard_shadow_drift_score",
     "The candidate's drift statistic against its own reference, by signal.", ("signal",),
     {"multiprocess_mode": "livemax"}),
    ("feedback", "Counter", "shipyard_shadow_feedback_total",
     "Feedback labels of mirrored requests, by model (primary, candidate).", ("model",), {}),
    ("feedback_correct", "Counter", "shipyard_shadow_feedback_correct_total",
     "Feedback labels of mirrored requests that matched the prediction, by model.", ("model",), {}),
)  # fmt: skip
_EXTRA: dict[tuple[int, str], Any] = {}


def pc_registry(registry: Any | None) -> Any:
    """``registry``, or prometheus_client's global one."""
    import prometheus_client as pc

    return pc.REGISTRY if registry is None else registry


def _table(kind: type, rows: tuple, registry: Any | None) -> Any:
    import prometheus_client as pc

    registry = pc_registry(registry)
    with _LOCK:
        key = (id(registry), kind.__name__)
        if key not in _EXTRA:
            _EXTRA[key] = kind(**{f: _make(registry, getattr(pc, k), n, d, lb, **o) for f, k, n, d, lb, o in rows})
        return _EXTRA[key]


def lifecycle_metrics(registry: Any | None = None) -> LifecycleMetrics:
    """The lifecycle metrics in ``registry`` (default: the global one), created once, at 0."""
    return _table(LifecycleMetrics, _LIFECYCLE, registry)


def lifecycle_event(kind: str, tag: str) -> None:
    """Count a ``swap`` or a ``failure`` of :class:`serving.lifecycle.ModelHolder`. Never raises."""
    try:
        m = lifecycle_metrics()
        (m.swaps if kind == "swap" else m.load_failures).inc()
    except Exception:
        logger.debug("lifecycle metric failed", exc_info=True)


def shadow_metrics(labels: tuple[str, ...] = (), signals: tuple[str, ...] | None = None,
                   registry: Any | None = None) -> ShadowMetrics:
    """The shadow metrics, every series created at 0 (``labels``: the model's; ``signals``: the drift signals)."""
    from serving.monitoring.signals import SIGNALS

    fresh = (id(pc_registry(registry)), ShadowMetrics.__name__) not in _EXTRA
    m = _table(ShadowMetrics, _SHADOW, registry)
    for scope in ("window", "cumulative"):
        if fresh:  # no agreement measured yet: NaN (as shipyard_live_accuracy), not a 0 that would alarm
            m.agreement.labels(scope=scope).set(float("nan"))
        m.max_difference.labels(scope=scope)
    for model in ("primary", "candidate"):
        m.latency.labels(model=model)
        m.feedback.labels(model=model)
        m.feedback_correct.labels(model=model)
        for label in labels:
            m.predictions.labels(model=model, label=label)
    for signal in SIGNALS if signals is None else signals:
        m.drift_score.labels(signal=signal)
    return m
