"""Monitoring of the prediction service: latency, predictions, live and estimated accuracy, and drift.

``from serving.monitoring import Monitor`` is the surface the service uses; the drift signals (one
registry entry each) are in :mod:`serving.monitoring.signals`, their statistics in
:mod:`serving.monitoring.stats`, the drift window in :mod:`serving.monitoring.drift` and the
Prometheus metric definitions in :mod:`serving.monitoring.metrics`.
"""

from serving.monitoring.drift import DriftWindow, Reference, load_reference
from serving.monitoring.estimate import AccuracyEstimate
from serving.monitoring.feedback import (
    FeedbackConflictError,
    FeedbackNotFoundError,
    FeedbackStore,
    FeedbackUnavailableError,
)
from serving.monitoring.metrics import LATENCY_BUCKETS, STAGES, metrics_for
from serving.monitoring.monitor import Monitor
from serving.monitoring.signals import SIGNALS, Observation, SignalSpec

__all__ = [
    "LATENCY_BUCKETS",
    "SIGNALS",
    "STAGES",
    "AccuracyEstimate",
    "DriftWindow",
    "FeedbackConflictError",
    "FeedbackNotFoundError",
    "FeedbackStore",
    "FeedbackUnavailableError",
    "Monitor",
    "Observation",
    "Reference",
    "SignalSpec",
    "load_reference",
    "metrics_for",
]
