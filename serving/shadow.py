"""A shadow candidate: a second version (the target of ``serve.shadow``, e.g. alias ``candidate``) that sees a
share of the live requests off the request path and is compared with the served model.

The request path only offers a request (:meth:`Shadow.offer`: a coin flip for ``serve.shadow_share`` and a
``put_nowait`` on a bounded queue, a few microseconds); when the queue is full the request is shed and counted,
never waited for. The candidate runs in its own process at the lowest CPU priority (:mod:`serving.shadow_worker`):
no share of this worker's GIL, only the CPU the primary leaves idle and at most ``serve.shadow_cpu`` cores;
when it falls behind, mirrored requests are shed first. This worker's shadow thread hands it up to
``serve.max_batch_size`` queued images at a time and records, per window of ``serve.shadow_window`` mirrored
images and since start: top-1 agreement with the primary, the largest probability difference, both latencies,
both predicted-class distributions; the candidate's drift scores against its own reference come from its
process. The candidate's predictions go to the feedback store beside the primary's, so ``/feedback`` labels
score both, across API workers and server restarts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import ServeConfig
from serving.threads import SHADOW, name_native_thread

logger = logging.getLogger("shipyard.serving")

#: Seconds the candidate's process may take to load and warm up before the shadow is given up.
START_TIMEOUT_S = 300.0


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
        np.add.at(self.classes["primary"], p[p < len(self.classes["primary"])], 1)
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


@dataclasses.dataclass(slots=True)
class Offered:
    """One request offered to the shadow: its pixels, the primary's answers and their seconds."""

    pixels: np.ndarray
    scored: list[Any]
    primary_s: float


class Shadow:
    """The shadow candidate of one API worker (see the module docstring).

    Args:
        config: the server's config (``shadow``, ``shadow_share``, ``shadow_queue``, ``shadow_window``).
        name: the model's name (``shadow`` is one of its aliases).
        served: the version this worker serves now (a :class:`serving.lifecycle.Loaded`: ``tag``, ``monitor``).

    Raises:
        RuntimeError: the candidate's process did not start (the reason in one line).
    """

    def __init__(self, config: ServeConfig, name: str, served: Callable[[], Any]) -> None:
        from serving.monitoring.metrics import shadow_metrics

        self.config = config
        self.served = served
        self._proc, self._conn = _start_worker(config, name)
        self.state: dict[str, Any] = self._expect("ready")[1]
        self.labels: list[str] = list(self.state["labels"])
        self.cumulative, self.window, self.last_window = Tally(len(self.labels)), Tally(len(self.labels)), None
        self._tallied = self.state["tag"]
        self.shed = 0
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue: queue.Queue[Offered] = queue.Queue(maxsize=config.shadow_queue)
        self.metrics = shadow_metrics(tuple(self.labels))
        self._thread = threading.Thread(target=self._run, name="shipyard-shadow", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------------------- request path

    def offer(self, pixels: np.ndarray, scored: list[Any], primary_s: float) -> None:
        """Mirror one request to the candidate unless the coin or a full queue says no. Never raises."""
        try:
            if self.failed or (self.config.shadow_share < 1.0 and random.random() >= self.config.shadow_share):
                return
            self._queue.put_nowait(Offered(pixels, scored, primary_s))
        except queue.Full:
            self.shed += 1
            self.metrics.shed.inc()
        except Exception:
            logger.debug("shadow offer failed", exc_info=True)

    # -------------------------------------------------------------------------------------- shadow thread

    def _run(self) -> None:
        name_native_thread(SHADOW)
        try:
            while not self._stop.is_set():
                batch = self._take()
                try:
                    if batch:
                        self._mirror(batch)
                    else:
                        self._set_state(self._exchange(("state",))[-1])
                except (EOFError, OSError, _Stopped):
                    raise
                except Exception:  # one bad batch (e.g. an unpicklable answer) costs that batch only
                    logger.warning("shadow mirror failed", exc_info=True)
                    self.metrics.failures.inc(sum(len(item.scored) for item in batch))
        except (EOFError, OSError) as exc:
            self.failed = f"the candidate's process ended ({type(exc).__name__}: {exc}); see the server log"
            logger.error("shipyard: shadow stopped: %s", self.failed)
        except _Stopped:
            pass

    def _take(self) -> list[Offered]:
        """Queued requests of up to ``serve.max_batch_size`` images (waits up to 1 s for the first)."""
        try:
            batch = [self._queue.get(timeout=1.0)]
        except queue.Empty:
            return []
        images = len(batch[0].scored)
        while images < self.config.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
            images += len(batch[-1].scored)
        return batch

    def _exchange(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send ``message`` to the candidate's process and wait for its answer (however busy the machine is)."""
        self._conn.send(message)
        while not self._conn.poll(1.0):
            if self._stop.is_set():
                raise _Stopped
        return self._conn.recv()

    def _mirror(self, batch: list[Offered]) -> None:
        scored = [s for item in batch for s in item.scored]
        reply = self._exchange((
            "mirror",
            np.concatenate([item.pixels for item in batch]),
            [(s.decoded.info.width, s.decoded.info.height) for s in scored],
            [s.request_id for s in scored],
        ))
        self._set_state(reply[-1])
        if reply[0] == "failed":
            logger.warning("shadow inference failed: %s", reply[1])
            self.metrics.failures.inc(len(scored))
            return
        _, tag, labels, probabilities, candidate_s, _ = reply
        self._remember(tag, labels, scored, probabilities)
        if tag != self._tallied:  # the candidate changed during this batch: its numbers start with the next
            return
        start = 0
        for item in batch:
            n = len(item.scored)
            primary = np.stack([np.asarray(s.probabilities, np.float64) for s in item.scored])
            candidate = probabilities[start:start + n].astype(np.float64)
            start += n
            self._tally(primary, candidate, item.primary_s, candidate_s)
            self._publish(primary, candidate, item.primary_s, candidate_s)

    def _set_state(self, state: dict[str, Any]) -> None:
        """The candidate process's latest state; a new candidate behind the alias starts its tallies afresh."""
        with self._lock:
            if state["tag"] != self._tallied:
                self.cumulative, self.window, self.last_window = Tally(len(self.labels)), Tally(len(self.labels)), None
                self._tallied = state["tag"]
            self.state = state

    def _remember(self, tag: str, labels: list[str], scored: list[Any], probabilities: np.ndarray) -> None:
        """The candidate's predictions into the feedback store beside the primary's, so that labels score them
        too; not when the candidate is the very version that answered (one row per request and version)."""
        monitor = self.served().monitor.monitor  # the Monitor inside the guard; None: monitoring is off
        if monitor is None:
            return
        rows = [(s.request_id, labels[int(i)]) for s, i in zip(scored, probabilities.argmax(axis=1), strict=True)
                if s.served.tag != tag]
        if rows:
            monitor.observe_shadow(tag, rows)

    def _tally(self, primary: np.ndarray, candidate: np.ndarray, primary_s: float, candidate_s: float) -> None:
        with self._lock:
            for tally in (self.cumulative, self.window):
                tally.add(primary, candidate, primary_s, candidate_s)
            if self.window.count >= self.config.shadow_window:
                self.last_window = self.window.report(self.labels)
                self.window = Tally(len(self.labels))

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
        for signal, score in self.state["drift"]["scores"].items():
            if score is not None:
                m.drift_score.labels(signal=signal).set(float(score))

    # -------------------------------------------------------------------------------------- reports

    def feedback(self, request_id: str) -> dict[str, Any] | None:
        """After the label of ``request_id`` is recorded: whether the primary and the candidate predicted it,
        with each one's labelled accuracy so far; ``None`` when the candidate never saw the request."""
        monitor = self.served().monitor.monitor
        if monitor is None:
            return None
        rows = {"primary" if row["role"] == "primary" else "candidate": row for row in monitor.outcomes(request_id)}
        if set(rows) != {"primary", "candidate"}:
            return None
        out = {}
        for which, row in rows.items():
            self.metrics.feedback.labels(model=which).inc()
            self.metrics.feedback_correct.labels(model=which).inc(int(row["correct"]))
            counts = monitor.labelled_accuracy(row["model"]) or {}
            out[which] = {"model": row["model"], "correct": row["correct"], "accuracy": counts.get("accuracy")}
        return out

    def brief(self) -> dict[str, Any]:
        """What ``/metadata`` says about the shadow."""
        return {"alias": self.config.shadow, "candidate": self._tallied, "share": self.config.shadow_share}

    def report(self) -> dict[str, Any]:
        """What ``GET /shadow`` shows."""
        with self._lock:
            cumulative = self.cumulative.report(self.labels)
            current = self.window.report(self.labels)
            last, candidate, state = self.last_window, self._tallied, self.state
        served = self.served()
        monitor = served.monitor.monitor
        labelled: dict[str, Any] = {}
        for which, tag in (("primary", served.tag), ("candidate", candidate)):
            counts = (monitor.labelled_accuracy(tag) if monitor is not None else None) or {}
            labelled[which] = {"correct": counts.get("correct", 0), "labelled": counts.get("count", 0),
                               "accuracy": counts.get("accuracy")}
        # the same requests for both: what to compare (the totals above count every label of each version)
        labelled["paired"] = monitor.paired_accuracy(candidate) if monitor is not None else None
        return {
            "enabled": True,
            **self.brief(),
            "failed": self.failed,
            "window_size": self.config.shadow_window,
            "cumulative": cumulative,
            "window": last,
            "current_window": current,
            "shed": self.shed,
            "pending": self._queue.qsize(),
            "labelled": labelled,
            "drift": state["drift"],
            "lifecycle": state["lifecycle"],
        }

    # -------------------------------------------------------------------------------------- process

    def _expect(self, kind: str) -> tuple[Any, ...]:
        if not self._conn.poll(START_TIMEOUT_S):
            self._kill()
            raise RuntimeError(f"the candidate's process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._kill()
            raise RuntimeError(
                f"the candidate's process exited with {self._proc.returncode} before loading; see the log"
            ) from None
        if message[0] != kind:
            self._kill()
            raise RuntimeError(str(message[1]))
        return message

    def _kill(self) -> None:
        self._conn.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)

    def close(self) -> None:
        """Stop the shadow thread (queued mirrors are dropped) and the candidate's process."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():  # else it may be mid-send: closing the socket is the message
            with contextlib.suppress(EOFError, OSError):
                self._conn.send(("close",))
        self._kill()


class _Stopped(Exception):
    """The shadow was closed while it waited for the candidate."""


def _start_worker(config: ServeConfig, name: str) -> tuple[subprocess.Popen, Connection]:
    """``python -m serving.shadow_worker`` with one end of a socket pair; the other end, as a Connection."""
    ours, theirs = socket.socketpair()
    env = config.child_env()
    root = str(Path(__file__).resolve().parents[1])  # where ``serving`` is importable from, installed or not
    env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.shadow_worker", str(theirs.fileno()), name],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
        )
    finally:
        theirs.close()
    return proc, Connection(ours.detach())


def start_shadow(config: ServeConfig, name: str, served: Callable[[], Any]) -> tuple[Shadow | None, str | None]:
    """The shadow of ``config.shadow`` and ``None``; or ``None`` and why it did not start (logged), so that the
    primary still serves and ``/shadow`` says why."""
    try:
        return Shadow(config, name, served), None
    except Exception as exc:
        logger.error("shipyard: shadow %r not started: %s", config.shadow, exc)
        return None, f"the shadow {config.shadow!r} did not start: {exc}"


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
    if report.get("failed"):
        raise PackageError(f"not promoted: the shadow at {server} stopped: {report['failed']}")
    if not report.get("enabled"):
        raise PackageError(f"not promoted: the server at {server} runs no shadow ({report.get('reason')})")
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
