"""A shadow candidate: a second version (the target of ``serve.shadow``, e.g. alias ``candidate``) that sees a
share of the live requests off the request path and is compared with the served model.

The request path only offers a request (:meth:`Shadow.offer`: a coin flip for ``serve.shadow_share`` and a
``put_nowait`` on a bounded queue, a few microseconds); when the queue is full the request is shed and counted,
never waited for. One worker thread runs the candidate (one inference thread) and records, per window of
``serve.shadow_window`` mirrored images and since start: top-1 agreement with the primary, the largest
probability difference, both latencies, both predicted-class distributions, and the candidate's drift scores
against its own reference. ``/feedback`` labels score the candidate's prediction of the same request too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from serving.config import ServeConfig
from serving.lifecycle import ModelHolder

logger = logging.getLogger("shipyard.serving")

#: Mirrored predictions kept for ``/feedback`` to score the candidate.
REMEMBERED = 50_000


class Candidate:
    """The shadow version in this process: a one-thread predictor and a drift window on its own reference."""

    def __init__(self, tag: str, config: ServeConfig) -> None:
        from serving.inference import Predictor
        from serving.monitoring.drift import DriftWindow, load_reference
        from serving.settings import package_dir

        self.tag = tag
        self.predictor = Predictor(package_dir(tag), config.variant, threads=1, embeddings=config.embeddings,
                                   allow_failed_gate=True)
        manifest = self.predictor.manifest
        self.labels = list(manifest.labels)
        self.window = DriftWindow(load_reference(manifest, self.predictor.package_dir), config.monitor,
                                  manifest.variants)

    def close(self) -> None:
        self.predictor.close()


class Tally:
    """Agreement, differences, latencies and class counts over some mirrored images."""

    def __init__(self, classes: int) -> None:
        self.count = 0
        self.agree = 0
        self.max_diff = 0.0
        self.latency = {"primary": 0.0, "candidate": 0.0}
        self.requests = 0
        self.classes = {"primary": np.zeros(classes, np.int64), "candidate": np.zeros(classes, np.int64)}

    def add(self, primary: np.ndarray, candidate: np.ndarray, primary_s: float, candidate_s: float) -> None:
        p, c = primary.argmax(axis=1), candidate.argmax(axis=1)
        self.count += len(p)
        self.agree += int((p == c).sum())
        if primary.shape == candidate.shape:
            self.max_diff = max(self.max_diff, float(np.abs(primary - candidate).max()))
        self.requests += 1
        self.latency["primary"] += primary_s
        self.latency["candidate"] += candidate_s
        np.add.at(self.classes["primary"], p, 1)
        np.add.at(self.classes["candidate"], c[c < len(self.classes["candidate"])], 1)

    def report(self, labels: list[str]) -> dict[str, Any]:
        n = max(1, self.requests)
        return {
            "images": self.count,
            "agreement": self.agree / self.count if self.count else None,
            "max_probability_difference": self.max_diff,
            "latency_ms": {k: v / n * 1000 for k, v in self.latency.items()},
            "classes": {k: dict(zip(labels, map(int, v), strict=False)) for k, v in self.classes.items()},
        }


class Shadow:
    """The shadow candidate of one API worker (see the module docstring).

    Args:
        config: the server's config (``shadow``, ``shadow_share``, ``shadow_queue``, ``shadow_window``).
        name: the model's name (``shadow`` is one of its aliases).
    """

    def __init__(self, config: ServeConfig, name: str) -> None:
        from serving.monitoring.metrics import shadow_metrics
        from serving.settings import alias_tag

        self.config = config
        tag = alias_tag(name, config.shadow or "")
        self.models: ModelHolder[Candidate] = ModelHolder(tag, Candidate(tag, config), self._candidate,
                                                          Candidate.close)
        self.models.follow(name, config.shadow or "", poll_s=config.alias_poll_s)
        self.labels = self.models.current.value.labels
        self.cumulative, self.window, self.last_window = Tally(len(self.labels)), Tally(len(self.labels)), None
        self.shed = 0
        self.labelled = {"primary": [0, 0], "candidate": [0, 0]}  # [correct, labelled]
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.shadow_queue)
        self.metrics = shadow_metrics(tuple(self.labels))
        self._thread = threading.Thread(target=self._run, name="shipyard-shadow", daemon=True)
        self._thread.start()

    def _candidate(self, tag: str) -> Candidate:
        return Candidate(tag, self.config)

    # -------------------------------------------------------------------------------------- request path

    def offer(self, primary_tag: str, pixels: np.ndarray, scored: list[Any], primary_s: float) -> None:
        """Mirror one request to the candidate unless the coin or a full queue says no. Never raises."""
        try:
            if self.config.shadow_share < 1.0 and random.random() >= self.config.shadow_share:
                return
            self._queue.put_nowait((primary_tag, pixels, scored, primary_s))
        except queue.Full:
            self.shed += 1
            self.metrics.shed.inc()
        except Exception:
            logger.debug("shadow offer failed", exc_info=True)

    # -------------------------------------------------------------------------------------- worker

    def _run(self) -> None:
        _lowest_priority()
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._mirror(*item)
            except Exception:
                logger.warning("shadow inference failed", exc_info=True)
                self.metrics.failures.inc()

    def _mirror(self, primary_tag: str, pixels: np.ndarray, scored: list[Any], primary_s: float) -> None:
        from serving.inference import unpack

        with self.models.acquire() as slot:
            cand = slot.value
            started = time.perf_counter()
            outs = unpack(cand.predictor.predict(pixels), len(cand.labels))
            candidate_s = time.perf_counter() - started
            primary = np.stack([np.asarray(s.probabilities, np.float64) for s in scored])
            candidate = np.stack([np.asarray(o.probabilities, np.float64) for o in outs])
            with self._lock:
                for tally in (self.cumulative, self.window):
                    tally.add(primary, candidate, primary_s, candidate_s)
                for s, p, c in zip(scored, primary.argmax(1), candidate.argmax(1), strict=True):
                    self._seen[s.request_id] = (int(p), int(c))
                while len(self._seen) > REMEMBERED:
                    self._seen.popitem(last=False)
                if self.window.count >= self.config.shadow_window:
                    self.last_window = self.window.report(self.labels)
                    self.window = Tally(len(self.labels))
            self._observe(cand, pixels, scored, outs)
            self._publish(primary, candidate, primary_s, candidate_s)

    def _observe(self, cand: Candidate, pixels: np.ndarray, scored: list[Any], outs: list[Any]) -> None:
        """The candidate's predictions into its drift window (evaluated when due)."""
        from edge.preprocess import image_stats_batch, stats_grid
        from serving.monitoring.signals import Observation

        grids = [np.ascontiguousarray(stats_grid(p)) for p in pixels]
        stats = image_stats_batch(grids)
        for s, out, grid, row in zip(scored, outs, grids, stats, strict=True):
            size = (s.decoded.info.width, s.decoded.info.height)
            pred = int(np.argmax(out.probabilities))
            obs = Observation(s.request_id, grid, size, pred, float(out.probabilities[pred]),
                              out.embedding, cand.predictor.variant, time.time())
            cand.window.add(dataclasses.replace(obs, features=(*map(float, row), *map(float, size))))
            if cand.window.due():
                for signal, result in cand.window.evaluate().items():
                    if result.get("score") is not None:
                        self.metrics.drift_score.labels(signal=signal).set(float(result["score"]))

    def _publish(self, primary: np.ndarray, candidate: np.ndarray, primary_s: float, candidate_s: float) -> None:
        m = self.metrics
        m.mirrored.inc(len(primary))
        m.latency.labels(model="primary").observe(primary_s)
        m.latency.labels(model="candidate").observe(candidate_s)
        for which, probs in (("primary", primary), ("candidate", candidate)):
            for index in probs.argmax(1):
                if index < len(self.labels):
                    m.predictions.labels(model=which, label=self.labels[index]).inc()
        with self._lock:
            cum, last = self.cumulative.report(self.labels), self.last_window
        m.agreement.labels(scope="cumulative").set(cum["agreement"] or 0.0)
        m.max_difference.labels(scope="cumulative").set(cum["max_probability_difference"])
        if last is not None:
            m.agreement.labels(scope="window").set(last["agreement"] or 0.0)
            m.max_difference.labels(scope="window").set(last["max_probability_difference"])

    # -------------------------------------------------------------------------------------- reports

    def feedback(self, request_id: str, label: str) -> dict[str, Any] | None:
        """Score the candidate's (and the primary's) prediction of a mirrored request; ``None`` if not mirrored."""
        with self._lock:
            seen = self._seen.pop(request_id, None)
        if seen is None or label not in self.labels:
            return None
        truth = self.labels.index(label)
        out = {}
        for which, pred in zip(("primary", "candidate"), seen, strict=True):
            self.labelled[which][0] += int(pred == truth)
            self.labelled[which][1] += 1
            self.metrics.feedback_correct.labels(model=which).inc(int(pred == truth))
            self.metrics.feedback.labels(model=which).inc()
            out[which] = {"correct": pred == truth, "accuracy": self.labelled[which][0] / self.labelled[which][1]}
        return out

    def brief(self) -> dict[str, Any]:
        """What ``/metadata`` says about the shadow."""
        return {"alias": self.config.shadow, "candidate": self.models.current.tag, "share": self.config.shadow_share}

    def report(self) -> dict[str, Any]:
        """What ``GET /shadow`` shows."""
        cand = self.models.current.value
        with self._lock:
            cumulative = self.cumulative.report(self.labels)
            current = self.window.report(self.labels)
            last = self.last_window
        drift = cand.window.snapshot()
        return {
            "enabled": True,
            **self.brief(),
            "window_size": self.config.shadow_window,
            "cumulative": cumulative,
            "window": last,
            "current_window": current,
            "shed": self.shed,
            "pending": self._queue.qsize(),
            "labelled": {k: {"correct": c, "labelled": n, "accuracy": c / n if n else None}
                         for k, (c, n) in self.labelled.items()},
            "drift": {"detected": drift["detected"], "evaluations": drift["evaluations"],
                      "scores": {k: v.get("score") for k, v in drift["signals"].items()}},
            "lifecycle": self.models.status(),
        }

    def close(self) -> None:
        """Stop the worker (queued mirrors are dropped) and release the candidate."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=5.0)
        self.models.close()


def _lowest_priority() -> None:
    """Run this thread (and the candidate's inference, which runs on it) at the lowest CPU priority: on a busy
    machine the primary's threads go first, the shadow queue fills and mirrored requests are shed."""
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # Linux: per-thread niceness
    except (AttributeError, OSError) as exc:
        logger.info("shadow thread keeps the default priority: %s", exc)


def start_shadow(config: ServeConfig, name: str) -> Shadow | None:
    """The shadow of ``config.shadow``; ``None`` (logged) when it cannot start, so the primary still serves."""
    try:
        return Shadow(config, name)
    except Exception as exc:
        logger.error("shipyard: shadow %r not started: %s", config.shadow, exc)
        return None


def check_agreement(server: str, tag: str, minimum: float) -> float:
    """The cumulative shadow agreement of the server at ``server`` when it shadows ``tag`` at ``minimum`` or more.

    Raises:
        PackageError: the server cannot be reached, shadows another version or nothing, saw no mirrored
            traffic, or agreed less than ``minimum`` (each in one line).
    """
    import json
    import urllib.request

    from edge.errors import PackageError

    url = server.rstrip("/") + "/shadow"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            report = json.loads(resp.read())
    except Exception as exc:
        raise PackageError(f"not promoted: cannot read the shadow report at {url}: {exc}") from None
    if not report.get("enabled"):
        raise PackageError(f"not promoted: the server at {server} runs no shadow (start it with --shadow ALIAS)")
    if report.get("candidate") != tag:
        raise PackageError(f"not promoted: the server at {server} shadows {report.get('candidate')}, not {tag}")
    agreement = (report.get("cumulative") or {}).get("agreement")
    if agreement is None:
        raise PackageError(f"not promoted: the shadow of {tag} at {server} has seen no traffic yet")
    if agreement < minimum:
        raise PackageError(
            f"not promoted: {tag} agreed with the served model on {agreement:.4f} of "
            f"{report['cumulative']['images']} mirrored images, below the required {minimum}"
        )
    return float(agreement)
