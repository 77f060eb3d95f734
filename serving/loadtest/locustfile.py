"""Locust scenarios against a running Shipyard service.

Run it through ``shipyard loadtest`` (which sets the variables below, starts Locust headless and writes the
reports), or by hand::

    SHIPYARD_LOADTEST_CONFIG='{"images": "demo_data"}' locust -f serving/loadtest/locustfile.py \\
        --host http://127.0.0.1:3000 --headless -u 8 -r 8 -t 20s ClassifyUser

Two user classes:

``ClassifyUser``
    realistic traffic: real images from a folder uploaded to ``POST /classify``, a share of
    ``POST /classify_batch`` calls with several images, and think time between requests. Every 200 is
    checked: a body that is not the documented JSON (fields, label names, probabilities in [0, 1] that sum
    to at most 1, and to 1 when every class is returned, one result per image in order) is a failure.

``BadInputUser``
    bad inputs mixed into good traffic: corrupt bytes, an empty file, a text file, a PNG header that claims
    a huge pixel count, and a body that is not multipart at all. Each bad request must get a 4xx with a JSON
    error (a 4xx is a success there; a 2xx or 5xx is a failure), while its good requests must keep succeeding.

Settings come from one environment variable, so that Locust workers on other machines can be given them too
(they need the ``shipyard`` package installed, which holds this file):

``SHIPYARD_LOADTEST_CONFIG``
    the whole :class:`~serving.loadtest.config.LoadTestConfig`, as a JSON object (what ``shipyard loadtest``
    hands down) or the path of a YAML file with a ``loadtest:`` section; ``images`` is required, the scenario
    reads ``batch_share``, ``batch_images``, ``think_min_s``/``think_max_s``, ``bad_share``,
    ``request_timeout_s`` and ``max_images``
``SHIPYARD_LOADTEST_RESULT``
    where the master (or the single process) writes its JSON result

This module imports Locust (which monkey-patches the standard library through gevent): import it only in a
Locust process, never in the ``shipyard`` command.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, constant, constant_throughput, events, task
from locust.runners import MasterRunner, WorkerRunner

from edge.files import write_json_atomic
from serving.loadtest.checks import (
    BAD_NAME,
    BATCH_FIELD,
    CLASSIFY,
    CLASSIFY_BATCH,
    FILE_FIELD,
    METADATA,
    TOP_K_FIELD,
    Image,
    bad_inputs,
    check_batch,
    check_result,
    error_message,
    load_images,
    multipart,
)
from serving.loadtest.config import LoadTestConfig
from serving.loadtest.locustrun import RESULT_ENV
from serving.loadtest.steps import snapshot, step_load, step_row, stop_reason

# --- per-process state -------------------------------------------------------------------------------------

SETTINGS: LoadTestConfig | None = None
IMAGES: list[Image] = []
_labels: list[str] | None = None
_labels_lock = threading.Lock()
_worker_requests: dict[str, int] = {}
STEPS: list[dict[str, Any]] = []  # a stepped run's steps, measured on the master (or the single process)
_stopped: list[str] = []


def _settings() -> LoadTestConfig:
    if SETTINGS is None:
        raise RuntimeError("the locustfile was not initialised (the init event did not run)")
    return SETTINGS


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    """Read the settings and the images once per process (a master loads none: it sends no requests)."""
    global SETTINGS, IMAGES
    SETTINGS = LoadTestConfig.from_env()
    _ShipyardUser.network_timeout = _ShipyardUser.connection_timeout = SETTINGS.request_timeout_s
    _ShipyardUser.wait_time = _wait_time(SETTINGS)
    if isinstance(environment.runner, MasterRunner):
        return
    if not SETTINGS.images:
        raise ValueError(
            f'name a folder of images in {LoadTestConfig.ENV}, e.g. {{"images": "demo_data"}} '
            "(shipyard loadtest --images DIR)"
        )
    IMAGES = load_images(SETTINGS.images, SETTINGS.max_images)


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kwargs) -> None:
    """On the master: count the requests each worker reported, to prove that every worker sent load."""
    sent = sum(int(e.get("num_requests", 0)) for e in data.get("stats", []))
    _worker_requests[client_id] = _worker_requests.get(client_id, 0) + sent


def _entry(entry: Any) -> dict[str, Any]:
    """One Locust stats entry as a dict, with its p50/p95/p99 in milliseconds (Locust's response-time buckets:
    exact below 100 ms, rounded to 2 significant digits above)."""
    out = entry.to_dict()
    for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        out[key] = entry.get_response_time_percentile(q) if entry.num_requests else None
    return out


@events.quitting.add_listener
def _on_quitting(environment, **_kwargs) -> None:
    """On the master or a single process: write the result JSON that ``shipyard loadtest`` summarises."""
    result_path = os.environ.get(RESULT_ENV)
    if SETTINGS is None or not result_path or isinstance(environment.runner, WorkerRunner):
        return
    stats = environment.runner.stats
    entries = [_entry(e) for e in stats.entries.values() if e.num_requests or e.num_failures]
    errors = [
        {"method": e.method, "name": e.name, "error": str(e.error), "occurrences": e.occurrences}
        for e in stats.errors.values()
    ]
    result = {
        "mode": "master" if isinstance(environment.runner, MasterRunner) else "local",
        "workers_reporting": sorted(c for c, n in _worker_requests.items() if n > 0),
        "worker_requests": dict(sorted(_worker_requests.items())),
        "user_count": environment.runner.user_count,
        "start_time": stats.start_time,
        "last_request_timestamp": stats.total.last_request_timestamp,
        "endpoints": entries,
        "total": _entry(stats.total),
        "errors": errors,
        "steps": STEPS,
        "stop_reason": _stopped[0] if _stopped else None,
        "written": time.time(),
    }
    path = Path(result_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result, default=str)


# --- users ---------------------------------------------------------------------------------------------------


def _top_k() -> list[tuple[str, None, bytes, None]]:
    """Ask for every class once the labels are known, so that the probabilities must sum to 1."""
    return [(TOP_K_FIELD, None, str(len(_labels)).encode(), None)] if _labels else []


def _wait_time(settings: LoadTestConfig) -> Callable[[Any], float]:
    """Between a user's requests: think time (``users``), none (``ramp``), or pacing to ``user_rps`` (``rate``:
    an open workload, each user sends at its rate whatever the latency, up to one request in flight)."""
    if settings.mode == "ramp":
        return constant(0)
    if settings.mode == "rate":
        return constant_throughput(settings.user_rps)
    return between(settings.think_min_s, settings.think_max_s)


class StepShape(LoadTestShape):
    """A stepped run (``loadtest.mode`` ``ramp`` or ``rate``), driven on the master: each step's load comes from
    :func:`~serving.loadtest.steps.step_load`; at the end of a step its row is measured from Locust's totals and
    :func:`~serving.loadtest.steps.stop_reason` decides whether to go on. Locust uses a shape class only when
    it is not abstract, so a ``users`` run keeps ``-u``/``-r``/``-t``."""

    abstract = not LoadTestConfig.from_env().stepped

    def __init__(self) -> None:
        super().__init__()
        self._step = 0
        self._start: dict[str, Any] | None = None

    def _snapshot(self, elapsed: float) -> dict[str, Any]:
        total = self.runner.stats.total
        return snapshot(elapsed, total.num_requests, total.num_failures, total.response_times)

    def tick(self) -> tuple[int, float] | None:
        """The users and spawn rate of the current step, or ``None`` when the run is over."""
        settings = _settings()
        elapsed = self.get_run_time()
        if self._start is None:
            self._start = self._snapshot(elapsed)
        if elapsed >= min((self._step + 1) * settings.step_s, settings.duration_s):
            end = self._snapshot(elapsed)
            STEPS.append(step_row(settings, self._step, self._start, end))
            reason = stop_reason(settings, STEPS)
            if reason or elapsed >= settings.duration_s:
                _stopped.append(reason or f"ran out of time (duration_s {settings.duration_s:g})")
                return None
            self._step, self._start = self._step + 1, end
        users, _rate = step_load(settings, self._step)
        return users, float(max(users, 1))  # each step's users start within about a second


class _ShipyardUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)  # replaced from the settings when the process starts (_wait_time)

    def on_start(self) -> None:
        """Learn the model's labels once per process from ``/metadata`` (so that labels can be checked)."""
        global _labels
        if _labels is not None:
            return
        with _labels_lock:
            if _labels is not None:
                return
            with self.client.get(METADATA, name=METADATA, catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:120]}")
                    return
                try:
                    body = resp.json()
                except Exception:
                    resp.failure("metadata is not JSON")
                    return
                labels = body.get("labels") if isinstance(body, dict) else None
                if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
                    resp.failure(f"metadata has no list of labels: {str(body)[:120]}")
                    return
                _labels = list(labels)

    def classify_one(self) -> None:
        """Upload one real image to ``/classify`` and check the result."""
        image = random.choice(IMAGES)
        body, ctype = multipart([(FILE_FIELD, image.name, image.content, image.content_type), *_top_k()])
        self._post_checked(CLASSIFY, body, ctype, lambda payload: check_result(payload, _labels))

    def classify_batch(self) -> None:
        """Upload several real images to ``/classify_batch``; expect one valid result per image, in order."""
        n = _settings().batch_images
        images = random.sample(IMAGES, n) if len(IMAGES) >= n else random.choices(IMAGES, k=n)
        body, ctype = multipart(
            [*((BATCH_FIELD, im.name, im.content, im.content_type) for im in images), *_top_k()]
        )
        self._post_checked(CLASSIFY_BATCH, body, ctype, lambda payload: check_batch(payload, n, _labels))

    def _post_checked(self, path: str, body: bytes, ctype: str, check: Callable[[Any], str | None]) -> None:
        """POST ``body`` to ``path``; a non-200, a body that is not JSON or a ``check`` problem is a failure."""
        with self.client.post(
            path, data=body, headers={"Content-Type": ctype}, name=path, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:160]}")
                return
            try:
                payload = resp.json()
            except Exception:
                resp.failure(f"200 with a body that is not JSON: {(resp.text or '')[:80]!r}")
                return
            problem = check(payload)
            if problem:
                resp.failure(f"malformed 200: {problem}")


class ClassifyUser(_ShipyardUser):
    """Realistic traffic: single images, a share of batches, think time, every response checked."""

    @task
    def classify(self) -> None:
        """One request: ``/classify_batch`` with probability ``batch_share``, else ``/classify``."""
        if random.random() < _settings().batch_share:
            self.classify_batch()
        else:
            self.classify_one()


class BadInputUser(_ShipyardUser):
    """Bad inputs mixed into good traffic: bad ones must get a 4xx with a JSON error, good ones a valid 200."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.bad = bad_inputs(IMAGES[0].content)

    @task
    def mixed(self) -> None:
        """A bad request with probability ``bad_share``, else a good ``/classify``."""
        if random.random() >= _settings().bad_share:
            self.classify_one()
            return
        kind = random.choice(sorted(self.bad))
        body, ctype = self.bad[kind]
        with self.client.post(
            CLASSIFY,
            data=body,
            headers={"Content-Type": ctype},
            name=BAD_NAME.format(endpoint=CLASSIFY, kind=kind),
            catch_response=True,
        ) as resp:
            code = resp.status_code
            if 400 <= code < 500:
                if error_message(resp) is None:
                    resp.failure(f"HTTP {code} without a JSON error body: {(resp.text or '')[:80]!r}")
                else:
                    resp.success()
            else:
                resp.failure(f"bad input ({kind}) got HTTP {code}, expected 4xx: {(resp.text or '')[:120]}")
