"""One load test: Locust headless against a Shipyard service, summarised with the service's own metrics.

This module never imports Locust or the BentoML service: Locust runs in its own processes
(:mod:`serving.loadtest.locustrun`), and a service the load test starts itself is ``bentoml serve`` run by
:class:`serving.process.ServerProcess` for one :class:`~serving.config.ServeConfig`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.config import ServeConfig
from serving.loadtest.config import LoadTestConfig
from serving.loadtest.errors import LoadTestError
from serving.loadtest.locustrun import LocustPlan, run_locust
from serving.loadtest.metrics import metrics_report, scrape_metrics, service_metadata
from serving.loadtest.report import summarize, write_summary
from serving.process import ServerError, ServerProcess, free_port, wait_until_ready

READY_HINT = "; raise loadtest.ready_timeout_s if the model is slow to load"
#: The settings of a started server that a sweep varies, recorded with each run.
SWEPT = ("max_batch_size", "max_latency_ms", "workers", "batching")


@dataclass(frozen=True)
class LoadTestOutcome:
    """What :func:`run_loadtest` wrote and found."""

    summary: dict[str, Any]
    output: Path

    @property
    def passed(self) -> bool:
        """Every limit that was set was met."""
        return bool(self.summary["passed"])

    @property
    def exit_code(self) -> int:
        """0 when every limit passed, 1 otherwise."""
        return 0 if self.passed else 1


def serve_config_for(tag: str, config: LoadTestConfig) -> ServeConfig:
    """The server ``--serve TAG`` starts: the model, and the variant and workers the load test names."""
    chosen = {"variant": config.variant, "workers": config.serve_workers}
    return ServeConfig(model=tag, **{k: v for k, v in chosen.items() if v is not None})


def check_host(host: str) -> str:
    """A target URL without a trailing slash.

    Raises:
        LoadTestError: not an ``http://`` or ``https://`` URL with a host name.
    """
    from urllib.parse import urlparse

    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise LoadTestError(f"--host {host!r} is not a URL such as http://127.0.0.1:3000")
    return host.rstrip("/")


@contextlib.contextmanager
def started_server(
    serve: ServeConfig, log: Path, ready_timeout_s: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Serve ``serve`` on a free port of 127.0.0.1 until the block ends; yield its URL and what to record
    about it. The server and its workers are stopped on exit, also on errors.

    Raises:
        LoadTestError: the server exited or did not become ready in ``ready_timeout_s``.
    """
    config = serve.model_copy(update={"host": "127.0.0.1", "port": free_port()})
    with ServerProcess(config, log) as server:
        try:
            ready_s = server.wait_ready(ready_timeout_s, hint=READY_HINT)
        except ServerError as exc:
            raise LoadTestError(str(exc)) from None
        record = {"tag": config.model, "variant": config.variant, **{k: getattr(config, k) for k in SWEPT}}
        yield server.url, {**record, "ready_s": round(ready_s, 2)}


def _target(
    stack: contextlib.ExitStack, config: LoadTestConfig, serve: ServeConfig | None, output: Path
) -> tuple[str, dict[str, Any]]:
    """The URL to load and what to record about it: a server started for ``serve``, else ``config.host``."""
    if serve is not None:
        host, server = stack.enter_context(
            started_server(serve, output / "server.log", config.ready_timeout_s)
        )
        return host, {"server": server}
    host = check_host(config.host)
    try:
        wait_until_ready(host, min(config.ready_timeout_s, 30.0), hint=READY_HINT)
    except ServerError as exc:
        raise LoadTestError(str(exc)) from None
    return host, {}


def load_text(config: LoadTestConfig) -> str:
    """The load in words, for the progress line."""
    if config.mode == "ramp":
        return f"users ramped by {config.step_users} up to {config.users} every {config.step_s:g}s, no think time"
    if config.mode == "rate":
        return (
            f"an open workload stepped by {config.step_rps:g} req/s up to {config.max_rps:g} every "
            f"{config.step_s:g}s"
        )
    return f"{config.users} users for {LocustPlan(host='', config=config).run_time()}"


def _workers_text(config: LoadTestConfig) -> str:
    parts = [f"{config.workers} local"] if config.workers else []
    parts += [f"{config.remote_workers} remote"] if config.remote_workers else []
    return f" with {' and '.join(parts)} Locust workers" if parts else ""


def run_loadtest(
    config: LoadTestConfig,
    output: Path,
    *,
    serve: ServeConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadTestOutcome:
    """Run one load test and write ``summary.json`` plus Locust's CSV and HTML reports into ``output``.

    Args:
        config: the load, the limits and what the users send (``images`` must name a folder); its ``host``
            is the target unless ``serve`` is given. Recorded in ``summary.json`` as ``settings``.
        output: the report folder (created).
        serve: start this server on 127.0.0.1 first (its host and port are chosen here), stop it afterwards.
        progress: called with one line per step.

    Raises:
        LoadTestError: the service or Locust failed to run.
    """
    say = progress or (lambda _line: None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"settings": config.model_dump()}
    with contextlib.ExitStack() as stack:
        if serve is not None:
            say(f"starting bentoml serve for {serve.model} ...")
        host, target = _target(stack, config, serve, output)
        extra.update(target, metadata=service_metadata(host))
        plan = LocustPlan(host=host, config=config)
        before, note_before = scrape_metrics(host)
        say(f"running {load_text(config)} against {host}" + _workers_text(config))
        result = run_locust(plan, output, say)
        after, note_after = scrape_metrics(host)
    summary = summarize(
        result,
        plan=plan,
        server_metrics=metrics_report(before, after, note_after or note_before),
        extra=extra,
    )
    write_summary(summary, output)
    return LoadTestOutcome(summary, output)
