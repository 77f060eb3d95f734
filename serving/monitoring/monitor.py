"""The service's monitor: latency histograms, prediction counts, live and estimated accuracy, drift, a request log.

The request path only does cheap work: :meth:`Monitor.observe_prediction` takes the argmax, bumps a
counter, remembers the prediction for ``/feedback`` and puts the observation on a bounded queue. A
daemon thread takes it from there: image statistics, the ``bentoml.monitor`` record, the rolling
window, the estimated accuracy (:mod:`serving.monitoring.estimate`), the feedback store's file and, when it
is due, the drift tests. Every method that the request path calls swallows its
own errors: they are logged (rate-limited) and counted in ``shipyard_monitoring_errors_total``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import InputError
from edge.manifest import Manifest
from edge.preprocess import image_stats_batch, stats_grid
from serving.config import MonitorConfig
from serving.monitoring.drift import DriftWindow, load_reference
from serving.monitoring.estimate import AccuracyEstimate
from serving.monitoring.feedback import FeedbackNotFoundError, FeedbackStore, store_path
from serving.monitoring.metrics import STAGES, MonitorMetrics, metrics_for, zero_series
from serving.monitoring.signals import FEATURES, SIGNALS, Observation
from serving.monitoring.sink import RequestLog, request_log_dir
from serving.threads import MONITOR, name_native_thread

logger = logging.getLogger("serving.monitoring")

_STOP = object()
#: Log the first error of each stage with its traceback, then one line every this many.
_LOG_EVERY = 100
#: Most observations the monitor's thread takes from its queue at once.
_BATCH = 64
#: Seconds the monitor's thread waits after an observation for more to process with it (the feedback store's
#: transaction, the request log's record and the statistics are per batch); ``flush`` and ``close`` cut it
#: short. Measured on MobileNetV2, 2 cores, 32 clients, interleaved rounds: the monitor's thread took 0.47 ms of
#: CPU per request without waiting, 0.28 ms at 20 ms and 0.19 ms at 100 ms (262, 273 and 284 requests/s); once
#: the wait no longer woke on every queued observation, 0.15-0.18 ms (monitoring on / off 0.96x at 32 clients).
_LINGER_S = 0.1


class Monitor:
    """Latency, prediction, accuracy and drift monitoring of one served model.

    Args:
        manifest: the served package's manifest (labels, variants).
        package_dir: the package directory; its ``reference/`` statistics are the drift baseline
            (verified against the manifest's sha256; when missing or altered, drift is reported as
            unavailable and everything else still works).
        config: window size, thresholds, sink and limits.
        registry: the ``prometheus_client`` registry for the ``shipyard_*`` metrics (default: the
            global one, which BentoML's ``/metrics`` endpoint exposes).
        workers: how many API worker processes serve this model, when known (informational: every
            worker shares the feedback store's file).
        variant: the served variant, when known: its prediction series start at 0.

    Construct it where the service loads its model (in each worker process). It starts a daemon
    thread on first use; :meth:`close` stops it.
    """

    def __init__(
        self,
        manifest: Manifest,
        package_dir: str | Path,
        config: MonitorConfig,
        *,
        registry: Any | None = None,
        workers: int | None = None,
        variant: str | None = None,
    ) -> None:
        self.manifest = manifest
        self.package_dir = Path(package_dir)
        self.config = config
        self.labels: list[str] = list(manifest.labels)
        self._label_index = {label: i for i, label in enumerate(self.labels)}
        self._lock = threading.Lock()
        self._feedback: FeedbackStore | None = None
        self._errors: dict[str, int] = {}
        self._errors_lock = threading.Lock()
        self._dropped = 0
        self._submitted = 0
        self._processed = 0
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._closed = False
        self._alarmed: set[str] = set()
        self._timing_children: dict[str, Any] = {}
        self._prediction_children: dict[tuple[int, str], Any] = {}
        self._metrics: MonitorMetrics | None = None
        self.request_log = RequestLog(config, self.labels)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        self._hurry = threading.Event()  # set by flush and close: no lingering (see _LINGER_S)
        self.reference = load_reference(manifest, self.package_dir)
        for signal, reason in self.reference.problems.items():
            logger.warning("drift signal %r unavailable: %s", signal, reason)
        self.window = DriftWindow(self.reference, config, manifest.variants)
        self.estimate = AccuracyEstimate.for_package(manifest, self.package_dir, config.window)
        if self.estimate.reason and not self.estimate.available:
            logger.warning("estimated accuracy unavailable: %s", self.estimate.reason)
        self.workers = workers
        if not config.enabled:
            return
        self._feedback = FeedbackStore(
            self.labels,
            manifest.tag,
            ttl_s=config.feedback_ttl_s,
            capacity=config.feedback_capacity,
            recent=config.window,
            path=store_path(config.feedback_store, request_log_dir(config)),
        )
        self._start_metrics(registry, variant)

    def _start_metrics(self, registry: Any | None, variant: str | None) -> None:
        """The ``shipyard_*`` series, every one at its starting value; a failure leaves monitoring without metrics."""
        try:
            self._metrics = metrics_for(registry)
            self._timing_children = {stage: self._metrics.latency.labels(stage=stage) for stage in STAGES}
            zero_series(self._metrics, tuple(SIGNALS), tuple(self.labels), variant)
            self._publish_drift(self.window.snapshot()["signals"])
            self._metrics.estimated_accuracy.set(float("nan"))
            self._publish_live_accuracy()  # what the store kept from earlier server starts
        except Exception as exc:
            self._metrics = None
            self._fail("metrics", exc)

    # -- request path ------------------------------------------------------------------------------
    def observe_timing(self, stage: str, seconds: float) -> None:
        """Record how long a request stage took (``decode``, ``queue``, ``inference`` or ``total``). Never raises."""
        if self._metrics is None:
            return
        try:
            child = self._timing_children.get(stage)
            if child is None:
                raise ValueError(f"unknown timing stage {stage!r}; use one of {', '.join(STAGES)}")
            seconds = float(seconds)
            if not seconds >= 0.0 or seconds == float("inf"):
                raise ValueError(
                    f"timing of {stage!r} is {seconds}; it must be a finite number of seconds >= 0"
                )
            child.observe(seconds)
        except Exception as exc:
            self._fail("timing", exc)

    def observe_prediction(
        self,
        request_id: str,
        pixels: np.ndarray,
        original_size: tuple[int, int],
        probabilities: np.ndarray,
        embedding: np.ndarray | None,
        *,
        variant: str,
    ) -> None:
        """Record one prediction: counts it, keeps it for :meth:`feedback` and queues it for drift.

        Args:
            request_id: the id the client can later send to ``/feedback``.
            pixels: the ``uint8`` (H, W, 3) model input; the pixels its statistics read
                (:func:`edge.preprocess.stats_grid`) are copied onto the queue.
            original_size: (width, height) of the uploaded image.
            probabilities: the model's output for this image, shape (classes,).
            embedding: the penultimate-layer embedding, or ``None`` when the variant has none.
            variant: the served variant's name (a key of ``manifest.variants``).

        Never raises; costs a few microseconds (the heavy work runs on the monitor's thread).
        """
        if self._metrics is None:
            return
        try:
            probs = np.asarray(probabilities).reshape(-1)
            if probs.shape[0] != len(self.labels):
                raise ValueError(f"probabilities have {probs.shape[0]} values for {len(self.labels)} labels")
            pred = int(probs.argmax())
            self._count_prediction(pred, str(variant))
            now = time.time()
            rid = str(request_id)
            if self._feedback is not None:
                self._feedback.remember(rid, pred, now)
            pixels = np.asarray(pixels)
            if pixels.ndim != 3 or pixels.shape[-1] != 3:
                raise ValueError(f"pixels have shape {pixels.shape}; expected (height, width, 3)")
            self._ensure_worker()
            self._enqueue(
                Observation(
                    request_id=rid,
                    grid=np.ascontiguousarray(stats_grid(pixels)),  # all the statistics read: ~9 KB
                    original_size=original_size,
                    prediction=pred,
                    confidence=float(probs[pred]),
                    embedding=None if embedding is None else np.array(embedding, np.float32, copy=True).reshape(-1),
                    variant=str(variant),
                    received=now,
                )
            )
        except Exception as exc:
            self._fail("observe", exc)

    def _count_prediction(self, pred: int, variant: str) -> None:
        child = self._prediction_children.get((pred, variant))
        if child is None:
            child = self._metrics.predictions.labels(label=self.labels[pred], variant=variant)
            self._prediction_children[(pred, variant)] = child
        child.inc()

    def _enqueue(self, obs: Observation) -> None:
        """Queue an observation for the monitor's thread; when the queue is full, drop and count it."""
        with self._done:
            self._submitted += 1
        try:
            self._queue.put_nowait(obs)
        except queue.Full:
            with self._done:
                self._submitted -= 1
            self._dropped += 1
            self._metrics.dropped.inc()

    def count_error(self, kind: str) -> None:
        """Count one failed request of ``kind`` (e.g. ``"bad_image"``, ``"timeout"``). Never raises."""
        if self._metrics is None:
            return
        try:
            self._metrics.errors.labels(kind=str(kind)[:64]).inc()
        except Exception as exc:
            self._fail("count_error", exc)

    # -- feedback ----------------------------------------------------------------------------------
    def feedback(self, request_id: str, true_label: str) -> dict[str, Any]:
        """Record the true label of an earlier prediction and return the live accuracy.

        Returns:
            ``request_id``, ``model`` (the version that made the prediction), ``predicted_label``,
            ``true_label``, ``correct``, ``accuracy`` (all labels of that version so far), ``recent_accuracy``
            (its last ``window`` labels), ``feedback_count`` and ``correct_count``; across all workers and
            server starts when the feedback store is a file (see ``MonitorConfig.feedback_store``).

        Raises:
            InputError: (400) ``true_label`` is not one of the model's labels.
            FeedbackNotFoundError: (404) the request id is unknown, expired or was forgotten.
            FeedbackConflictError: (409) this request already received its label.
            FeedbackUnavailableError: (503) the store's file failed.
        """
        index = self._label_index.get(true_label) if isinstance(true_label, str) else None
        if index is None:
            shown = ", ".join(repr(label) for label in self.labels[:20])
            more = f" and {len(self.labels) - 20} more" if len(self.labels) > 20 else ""
            raise InputError(f"unknown label {true_label!r}; this model's labels are {shown}{more}")
        if self._metrics is None or self._feedback is None:
            raise FeedbackNotFoundError(
                f"request {request_id!r} is unknown: monitoring is disabled (serve.monitor.enabled=false), "
                "so predictions are not kept for feedback"
            )
        result = self._feedback.record(str(request_id), index)
        try:
            self._metrics.feedback.labels(label=true_label).inc()
            if result["correct"]:
                self._metrics.feedback_correct.labels(label=true_label).inc()
            if result["model"] == self.manifest.tag:
                self._metrics.live_accuracy.set(result["recent_accuracy"])
            else:  # a label for a prediction of an earlier version: the gauge is the served version's
                self._publish_live_accuracy()
        except Exception as exc:
            self._fail("feedback", exc)
        return result

    def _publish_live_accuracy(self) -> None:
        """Set ``shipyard_live_accuracy`` to the served version's recent accuracy in the store (NaN: no label)."""
        if self._metrics is None or self._feedback is None:
            return
        recent = self._feedback.accuracy()["recent_accuracy"]
        self._metrics.live_accuracy.set(float("nan") if recent is None else recent)

    def observe_shadow(self, model: str, predictions: list[tuple[str, str]]) -> None:
        """Keep a second model's predictions of requests the served model answered, so that the labels sent
        to ``/feedback`` for those requests score it too (read it with :meth:`labelled_accuracy`).

        Args:
            model: the second model's tag (e.g. the shadow candidate's ``name:version``).
            predictions: ``(request_id, predicted label)`` pairs; the request ids are the served model's.

        Writes to the feedback store in one transaction: call it off the request path (e.g. from the
        shadow's own thread), with as many predictions at once as are at hand. Never raises.
        """
        if self._feedback is None:
            return
        try:
            now = time.time()
            self._feedback.remember_many(str(model), [(str(rid), str(label), now) for rid, label in predictions])
        except Exception as exc:
            self._fail("feedback_store", exc)

    def outcomes(self, request_id: str) -> list[dict[str, Any]]:
        """Every model's labelled prediction of ``request_id`` (see :meth:`FeedbackStore.outcomes`); empty when
        monitoring is off or the request has no label yet. Never raises."""
        if self._feedback is None:
            return []
        try:
            return self._feedback.outcomes(str(request_id))
        except Exception as exc:
            self._fail("feedback_store", exc)
            return []

    def paired_accuracy(self, model: str) -> dict[str, Any] | None:
        """The served models' and ``model``'s accuracy on the same labelled requests (see
        :meth:`FeedbackStore.paired`); ``None`` when monitoring is off. Never raises."""
        if self._feedback is None:
            return None
        try:
            return self._feedback.paired(str(model))
        except Exception as exc:
            self._fail("feedback_store", exc)
            return None

    def labelled_accuracy(self, model: str | None = None) -> dict[str, Any] | None:
        """The accuracy that ``/feedback`` labels give ``model`` (default: the served version), across server
        starts when the store is a file: ``model``, ``count``, ``correct``, ``accuracy`` and
        ``recent_accuracy`` (``None`` before the first label). ``None`` when monitoring is off. Never raises."""
        if self._feedback is None:
            return None
        try:
            return self._feedback.accuracy(model)
        except Exception as exc:
            self._fail("feedback_store", exc)
            return None

    # -- drift -------------------------------------------------------------------------------------
    def drift(self) -> dict[str, Any]:
        """The current drift statistics, JSON-able.

        Returns:
            ``enabled``, ``window``, ``evaluate_every``, ``observed``, ``in_window``, ``evaluations``,
            ``alpha`` (false-alarm budget per evaluation), ``signal_alpha``, ``detected`` (any signal),
            ``signals`` (per signal: ``available``, ``method``, ``score``, ``threshold``, ``detected``,
            ``p_value``, ``window_size``, ``reference_size``, ``updated``, ``details`` or ``reason``),
            ``pending`` (observations not processed yet), ``dropped`` and ``errors`` (per stage).
        """
        try:
            out = self.window.snapshot()
        except Exception as exc:
            self._fail("drift", exc)
            out = {"signals": {}, "detected": False, "error": str(exc)}
        with self._done:
            pending = self._submitted - self._processed
        out.update(
            enabled=self._metrics is not None,
            model=self.manifest.tag,
            pending=pending,
            dropped=self._dropped,
            errors=self._error_counts(),
            feedback=self._feedback.summary() if self._feedback is not None else None,
            estimated_accuracy=self.estimate.snapshot(),
        )
        return out

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every observation queued so far is processed (and any due drift evaluation done).

        Returns:
            True when done, False on timeout.
        """
        deadline = time.monotonic() + timeout
        self._hurry.set()  # the thread processes what is queued without waiting for more (see _LINGER_S)
        with self._done:
            target = self._submitted
            while self._processed < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._worker_alive():
                    return self._processed >= target
                self._done.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the monitor's thread after it has processed what is queued."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
                self._hurry.set()
                thread.join(timeout)
            except queue.Full:
                pass
        if self._feedback is not None and (thread is None or not thread.is_alive()):
            self._feedback.close()

    # -- worker ------------------------------------------------------------------------------------
    def _worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def _ensure_worker(self) -> None:
        if self._closed or (self._pid == os.getpid() and self._thread is not None):
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._pid = os.getpid()  # a forked child gets its own thread
            self._thread = threading.Thread(target=self._run, name="shipyard-monitor", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        name_native_thread(MONITOR)
        while True:
            batch = [self._queue.get()]
            if batch[0] is not _STOP:
                # wait without taking items: a put then wakes no one (each wake-up is a GIL hand-over)
                self._hurry.wait(_LINGER_S)
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    self._hurry.clear()
                    break
            stop = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP]
            try:
                if items:
                    self._process(items)
            except Exception as exc:
                self._fail("worker", exc)
            finally:
                with self._done:
                    self._processed += len(items)
                    self._done.notify_all()
            if stop:
                return
            time.sleep(0)  # let request threads take the GIL between batches

    def _process(self, items: list[Observation]) -> None:
        """Image statistics, the sink record, the window and (when due) a drift evaluation, for a batch."""
        items = self._measure(items)
        if self._feedback is not None:
            try:
                self._feedback.sync([(o.request_id, o.prediction, o.received) for o in items])
            except Exception as exc:
                self._fail("feedback_store", exc)
        try:
            estimate = self.estimate.add([o.confidence for o in items])
            if estimate is not None and self._metrics is not None:
                self._metrics.estimated_accuracy.set(estimate)
        except Exception as exc:
            self._fail("estimate", exc)
        if self.config.sink_enabled:
            try:
                self.request_log.write(items)
            except Exception as exc:
                self._fail("sink", exc)
        for obs in items:
            try:
                self.window.add(obs)
            except Exception as exc:
                self._fail("window", exc)
            if self.window.due():
                self._evaluate()

    def _measure(self, items: list[Observation]) -> list[Observation]:
        """The observations with their :data:`FEATURES` (NaN where they could not be measured)."""
        features = np.full((len(items), len(FEATURES)), np.nan)
        try:
            features[:, :3] = image_stats_batch([obs.grid for obs in items])
        except Exception as exc:
            self._fail("image_stats", exc)
        for row, obs in zip(features, items, strict=True):
            try:
                row[3:] = [float(v) for v in obs.original_size]
            except Exception as exc:
                self._fail("original_size", exc)
        return [dataclasses.replace(obs, features=tuple(row)) for row, obs in zip(features, items, strict=True)]

    def _evaluate(self) -> None:
        """Run the due drift evaluation and publish it."""
        try:
            results = self.window.evaluate()
        except Exception as exc:
            self._fail("drift", exc)
            return
        self._publish_drift(results)
        if self._metrics is not None:
            self._metrics.drift_evaluations.inc()
        time.sleep(0)

    def _publish_drift(self, results: dict[str, dict[str, Any]]) -> None:
        """Set the drift gauges and log a warning when a signal starts (or stops) detecting drift."""
        for signal in SIGNALS:
            r = results.get(signal) or {}
            detected = bool(r.get("detected"))
            if detected and self._metrics is not None:
                try:
                    self._metrics.drift_alarms.labels(signal=signal).inc()
                except Exception as exc:
                    self._fail("metrics", exc)
            if detected and signal not in self._alarmed:
                self._alarmed.add(signal)
                logger.warning(
                    "drift detected on %s: score %.4g > threshold %.4g (p=%s) over the last %s requests",
                    signal, r.get("score"), r.get("threshold"), r.get("p_value"), r.get("window_size"),
                )  # fmt: skip
            elif not detected and signal in self._alarmed and r.get("available"):
                self._alarmed.discard(signal)
                logger.info("drift on %s is back under its threshold", signal)
        if self._metrics is None:
            return
        try:
            m = self._metrics
            for signal in SIGNALS:
                r = results.get(signal) or {}
                evaluated = r.get("available") and r.get("score") is not None
                m.drift_available.labels(signal=signal).set(1.0 if evaluated else 0.0)
                m.drift_detected.labels(signal=signal).set(1.0 if r.get("detected") else 0.0)
                m.drift_score.labels(signal=signal).set(r.get("score") or 0.0)
                m.drift_threshold.labels(signal=signal).set(r.get("threshold") or 0.0)
                p = r.get("p_value")
                m.drift_pvalue.labels(signal=signal).set(1.0 if p is None else p)
        except Exception as exc:
            self._fail("metrics", exc)

    def _error_counts(self) -> dict[str, int]:
        with self._errors_lock:
            return dict(self._errors)

    # -- errors ------------------------------------------------------------------------------------
    def _fail(self, stage: str, exc: BaseException) -> None:
        """Count and log an error inside monitoring; never raises."""
        try:
            with self._errors_lock:
                count = self._errors.get(stage, 0) + 1
                self._errors[stage] = count
            if self._metrics is not None:
                self._metrics.monitoring_errors.labels(stage=stage).inc()
            if count == 1:
                logger.warning("monitoring error in %s (predictions are not affected)", stage, exc_info=exc)
            elif count % _LOG_EVERY == 0:
                logger.warning(
                    "monitoring error in %s (%d so far): %s: %s", stage, count, type(exc).__name__, exc
                )
        except Exception:  # logging or metrics broken: nothing left to report to
            pass
