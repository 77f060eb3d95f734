"""Monitoring of the prediction service: latency, predictions, live accuracy and drift.

``from serving.monitoring import Monitor`` is the surface the service uses; the statistics are in
:mod:`serving.monitoring.stats`, the drift window in :mod:`serving.monitoring.drift` and the
Prometheus metric definitions in :mod:`serving.monitoring.metrics`.
"""

from serving.monitoring.drift import DriftWindow, Reference, load_reference
from serving.monitoring.feedback import FeedbackConflictError, FeedbackNotFoundError, FeedbackStore
from serving.monitoring.metrics import LATENCY_BUCKETS, SIGNALS, STAGES, metrics_for
from serving.monitoring.monitor import Monitor

__all__ = [
    "LATENCY_BUCKETS",
    "SIGNALS",
    "STAGES",
    "DriftWindow",
    "FeedbackConflictError",
    "FeedbackNotFoundError",
    "FeedbackStore",
    "Monitor",
    "Reference",
    "load_reference",
    "metrics_for",
]
