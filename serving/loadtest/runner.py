"""Run Locust headless against a Shipyard service and summarise the run.

This module never imports Locust (which monkey-patches the standard library through gevent) or the BentoML
service: Locust runs in its own processes on :data:`LOCUSTFILE`, and a service that ``shipyard loadtest``
starts itself runs as a ``shipyard serve`` subprocess. Everything here is the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.errors import ShipyardError
from edge.tables import format_table, markdown_table

LOCUSTFILE = Path(__file__).with_name("locustfile.py")

#: ``--scenario`` -> the Locust user classes it runs (names in :data:`LOCUSTFILE`).
SCENARIOS: dict[str, tuple[str, ...]] = {
    "traffic": ("ClassifyUser",),
    "bad-inputs": ("ClassifyUser", "BadInputUser"),
}

METRIC_PREFIX = "shipyard_"
LOCUST_CSV_PREFIX = "locust"
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*(?:\{.*\})?)\s+(\S+)(?:\s+\d+)?$")


class LoadTestError(ShipyardError):
    """A load test could not run: the service did not start or answer, or Locust failed."""


# --- processes -------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its process group:
    SIGTERM, then SIGKILL after ``grace_s``. Only the group of this process is signalled."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    # The leader may be gone while children of its group still run (a server's workers).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """``GET url``: the status and body (an HTTP error status is returned, not raised).

    Raises:
        OSError: the server could not be reached.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(
    host: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> float:
    """Poll ``host/readyz`` until it answers 200; return the seconds waited.

    Raises:
        LoadTestError: the process exited, or ``timeout_s`` passed; the message holds the log's last lines.
    """
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise LoadTestError(
                f"the service exited with status {proc.returncode} before {host}/readyz answered; "
                f"its log ({log}) ends with:\n{_tail(log) if log else ''}"
            )
        try:
            status, _ = http_get(f"{host}/readyz", timeout_s=2.0)
            if status == 200:
                return time.monotonic() - started
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    tail = f"; its log ({log}) ends with:\n{_tail(log)}" if log else ""
    raise LoadTestError(
        f"{host}/readyz did not answer 200 within {timeout_s:.0f}s (last: {last}); "
        f"raise loadtest.ready_timeout_s if the model is slow to load{tail}"
    )


@dataclass(frozen=True)
class ServeOptions:
    """How ``shipyard loadtest`` starts ``shipyard serve`` for a model tag (one point of a sweep)."""

    tag: str
    variant: str | None = None
    workers: int | None = None
    max_batch_size: int | None = None
    max_latency_ms: int | None = None
    batching: bool | None = None

    def command(self, port: int) -> list[str]:
        """The ``shipyard serve`` command line on 127.0.0.1:``port``; the batching settings go in as
        ``--set serve.KEY=VALUE`` (``shipyard serve`` hands its whole config down to the server, so
        ``SHIPYARD_*`` variables set here would be overwritten)."""
        cmd = [
            sys.executable,
            "-m",
            "training.cli",
            "serve",
            self.tag,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if self.variant:
            cmd += ["--variant", self.variant]
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        for key in ("max_batch_size", "max_latency_ms", "batching"):
            value = getattr(self, key)
            if value is not None:
                cmd += ["--set", f"serve.{key}={str(value).lower()}"]
        return cmd

    def describe(self) -> dict[str, Any]:
        """The settings that vary in a sweep, for tables."""
        return {
            "max_batch_size": self.max_batch_size,
            "max_latency_ms": self.max_latency_ms,
            "workers": self.workers,
            "batching": self.batching,
        }


@contextlib.contextmanager
def serve(options: ServeOptions, log: Path, ready_timeout_s: float = 180.0) -> Iterator[str]:
    """Start ``shipyard serve`` on a free port of 127.0.0.1, wait for ``/readyz``, yield its URL, stop it.

    The server and its workers run in their own process group, which is stopped on exit (also on errors).

    Raises:
        LoadTestError: the service exited or did not become ready in ``ready_timeout_s``.
    """
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            options.command(port),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ,
            start_new_session=True,
        )
    try:
        wait_ready(host, ready_timeout_s, proc, log)
        yield host
    finally:
        stop_process(proc)


# --- server metrics -------------------------------------------------------------------------------------------


def parse_metrics(text: str, prefix: str = METRIC_PREFIX) -> dict[str, float]:
    """Prometheus text exposition -> ``{"name{labels}": value}`` for the samples whose name has ``prefix``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(prefix):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            out[match.group(1)] = float(match.group(2))
        except ValueError:
            continue
    return out


def scrape_metrics(host: str, prefix: str = METRIC_PREFIX) -> tuple[dict[str, float], str | None]:
    """The service's ``prefix`` metrics from ``host/metrics``, and why none could be read (or ``None``)."""
    try:
        status, body = http_get(f"{host}/metrics", timeout_s=10.0)
    except OSError as exc:
        return {}, f"{host}/metrics could not be reached: {exc}"
    if status != 200:
        return {}, f"{host}/metrics answered HTTP {status}"
    metrics = parse_metrics(body.decode("utf-8", "replace"), prefix)
    return metrics, None if metrics else f"{host}/metrics holds no {prefix}* samples"


def metric_totals(samples: dict[str, float]) -> dict[str, float]:
    """Sum the samples of each counter-like series over its labels: ``*_total``, ``*_count`` and ``*_sum``
    (``shipyard_predictions_total{model=..., label=...}`` -> ``shipyard_predictions_total``)."""
    out: dict[str, float] = {}
    for key, value in samples.items():
        name = key.split("{", 1)[0]
        if name.endswith(("_total", "_count", "_sum")):
            out[name] = round(out.get(name, 0.0) + value, 6)
    return dict(sorted(out.items()))


def metric_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` for every sample in ``after`` (a sample new in ``after`` counts from 0)."""
    return {k: round(v - before.get(k, 0.0), 6) for k, v in sorted(after.items())}


# --- Locust ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocustPlan:
    """One headless Locust run: load shape, scenario and where its reports go."""

    host: str
    users: int
    spawn_rate: float
    duration_s: float
    scenario: str = "traffic"
    workers: int = 0
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 5.0
    expect_workers_wait_s: float = 60.0

    def run_time(self) -> str:
        """``-t``: whole seconds, at least 1."""
        return f"{max(1, round(self.duration_s))}s"


def locust_commands(
    plan: LocustPlan, output: Path, master_port: int | None = None
) -> tuple[list[str], list[list[str]]]:
    """The Locust master (or single process) command and the worker commands for ``plan``."""
    if plan.scenario not in SCENARIOS:
        raise LoadTestError(f"unknown scenario {plan.scenario!r}; choose one of {', '.join(SCENARIOS)}")
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    main = [
        *base,
        "--headless",
        "--host",
        plan.host,
        "-u",
        str(plan.users),
        "-r",
        f"{plan.spawn_rate:g}",
        "-t",
        plan.run_time(),
        "--stop-timeout",
        f"{plan.stop_timeout_s:g}",
        "--csv",
        str(output / LOCUST_CSV_PREFIX),
        "--html",
        str(output / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    workers: list[list[str]] = []
    if plan.workers > 0:
        if master_port is None:
            raise ValueError("a distributed run needs master_port")
        main += [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(master_port),
            "--expect-workers",
            str(plan.workers),
            "--expect-workers-max-wait",
            f"{plan.expect_workers_wait_s:g}",
        ]
        worker = [
            *base,
            "--worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(master_port),
            "--loglevel",
            "WARNING",
            *SCENARIOS[plan.scenario],
        ]
        workers = [list(worker) for _ in range(plan.workers)]
    return [*main, *SCENARIOS[plan.scenario]], workers


def run_locust(plan: LocustPlan, output: Path) -> dict[str, Any]:
    """Run Locust headless (with ``plan.workers`` local worker processes when > 0); return its result JSON.

    Writes ``locust_stats.csv`` (and the other CSVs), ``report.html``, ``locust.log`` and
    ``locust_result.json`` into ``output``. Every process started here is stopped before returning.

    Raises:
        LoadTestError: Locust did not finish in time or wrote no result; the message holds its log tail.
    """
    output.mkdir(parents=True, exist_ok=True)
    result_path = output / "locust_result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, **plan.env, "SHIPYARD_LOADTEST_RESULT": str(result_path)}
    port = free_port() if plan.workers > 0 else None
    main_cmd, worker_cmds = locust_commands(plan, output, port)
    log = output / "locust.log"
    deadline = plan.duration_s + plan.stop_timeout_s + 90 + (plan.expect_workers_wait_s if worker_cmds else 0)
    procs: list[subprocess.Popen] = []
    try:
        with open(log, "wb") as out:
            master = subprocess.Popen(
                main_cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            procs.append(master)
            for i, cmd in enumerate(worker_cmds):
                with open(output / f"locust_worker_{i}.log", "wb") as wout:
                    procs.append(
                        subprocess.Popen(
                            cmd, stdout=wout, stderr=subprocess.STDOUT, env=env, start_new_session=True
                        )
                    )
        try:
            master.wait(deadline)
        except subprocess.TimeoutExpired:
            raise LoadTestError(
                f"Locust did not finish within {deadline:.0f}s; its log ({log}) ends with:\n{_tail(log)}"
            ) from None
    finally:
        for proc in procs:
            stop_process(proc, grace_s=10.0)
    if not result_path.is_file():
        raise LoadTestError(
            f"Locust exited with status {procs[0].returncode} and wrote no result; its log ({log}) ends with:\n"
            f"{_tail(log)}"
        )
    result = json.loads(result_path.read_text())
    result["exit_code"] = procs[0].returncode
    return result


# --- summary and limits ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LimitCheck:
    """One pass/fail limit: its name, the bound, what was measured and whether it passed."""

    name: str
    bound: str
    limit: float
    measured: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "bound": self.bound,
            "limit": self.limit,
            "measured": self.measured,
            "passed": self.passed,
        }


def _endpoint_row(entry: dict[str, Any]) -> dict[str, Any]:
    n = int(entry.get("num_requests") or 0)
    failures = int(entry.get("num_failures") or 0)
    return {
        "method": entry.get("method") or "",
        "name": entry.get("name"),
        "requests": n,
        "failures": failures,
        "fail_ratio": failures / n if n else 0.0,
        "rps": float(entry.get("total_rps") or 0.0),
        "p50_ms": entry.get("p50_ms"),
        "p95_ms": entry.get("p95_ms"),
        "p99_ms": entry.get("p99_ms"),
        "avg_ms": float(entry.get("avg_response_time") or 0.0),
        "max_ms": float(entry.get("max_response_time") or 0.0),
    }


def check_limits(
    totals: dict[str, Any],
    *,
    max_p95_ms: float | None = None,
    max_fail_ratio: float | None = None,
    min_rps: float | None = None,
) -> list[LimitCheck]:
    """Compare the aggregated row of a summary with the limits that are set (``None``: not checked).

    A run with no requests fails every limit that is set: there is nothing to show it met them.
    """
    checks = []
    has = totals.get("requests", 0) > 0
    if max_p95_ms is not None:
        p95 = totals.get("p95_ms")
        checks.append(
            LimitCheck(
                "p95 latency (ms)", "<=", max_p95_ms, p95, has and p95 is not None and p95 <= max_p95_ms
            )
        )
    if max_fail_ratio is not None:
        ratio = totals.get("fail_ratio")
        checks.append(
            LimitCheck(
                "failure ratio",
                "<=",
                max_fail_ratio,
                ratio,
                has and ratio is not None and ratio <= max_fail_ratio,
            )
        )
    if min_rps is not None:
        rps = totals.get("rps")
        checks.append(
            LimitCheck("throughput (req/s)", ">=", min_rps, rps, has and rps is not None and rps >= min_rps)
        )
    return checks


def summarize(
    result: dict[str, Any],
    *,
    plan: LocustPlan,
    limits: dict[str, float | None],
    metrics_before: dict[str, float],
    metrics_after: dict[str, float],
    metrics_note: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` of one run: totals, per-endpoint rows, errors, server metrics and limit checks."""
    totals = _endpoint_row(result["total"])
    totals["name"] = "Aggregated"
    checks = check_limits(totals, **limits)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": plan.host,
        "scenario": plan.scenario,
        "users": plan.users,
        "spawn_rate": plan.spawn_rate,
        "duration_s": plan.duration_s,
        "locust_workers": plan.workers,
        "workers_reporting": len(result.get("workers_reporting", [])),
        "worker_requests": result.get("worker_requests", {}),
        "requests": totals["requests"],
        "failures": totals["failures"],
        "fail_ratio": totals["fail_ratio"],
        "throughput_rps": totals["rps"],
        "latency_ms": {k: totals[f"{k}_ms"] for k in ("p50", "p95", "p99", "avg", "max")},
        "endpoints": [_endpoint_row(e) for e in sorted(result["endpoints"], key=lambda e: e["name"])],
        "total": totals,
        "errors": result.get("errors", []),
        "server_metrics": {
            "before": metrics_before,
            "after": metrics_after,
            "delta": metric_delta(metrics_before, metrics_after),
            "totals_delta": metric_delta(metric_totals(metrics_before), metric_totals(metrics_after)),
            "note": metrics_note,
        },
        "limits": [c.to_dict() for c in checks],
        "passed": all(c.passed for c in checks),
        "machine": machine(),
        **(extra or {}),
    }


def machine() -> dict[str, Any]:
    """Where the load was generated: CPU count, load average, platform (the service ran on this machine
    too when ``shipyard loadtest`` started it)."""
    import platform

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "loadavg_1_5_15": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# --- tables ----------------------------------------------------------------------------------------------------


def format_value(value: Any, spec: str = ".1f") -> str:
    """A table cell: ``-`` for ``None``, floats with ``spec``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render_table(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """A Markdown table, or an aligned plain-text one for the terminal."""
    if markdown:
        return markdown_table(headers, rows)
    return format_table(headers, rows, "l" * len(headers))


def endpoint_table(summary: dict[str, Any], markdown: bool = False) -> str:
    """Requests, failures, throughput and p50/p95/p99 per endpoint, then the aggregated row."""
    headers = ["endpoint", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    rows = [
        [
            r["name"],
            str(r["requests"]),
            str(r["failures"]),
            format_value(r["rps"]),
            format_value(r["p50_ms"], ".0f"),
            format_value(r["p95_ms"], ".0f"),
            format_value(r["p99_ms"], ".0f"),
            format_value(r["max_ms"], ".0f"),
        ]
        for r in [*summary["endpoints"], summary["total"]]
    ]
    return render_table(headers, rows, markdown)


def limits_table(summary: dict[str, Any], markdown: bool = False) -> str:
    """One row per limit: the limit, what was measured and whether it passed."""
    rows = [
        [
            c["name"],
            f"{c['bound']} {c['limit']:g}",
            format_value(c["measured"], ".4g"),
            "pass" if c["passed"] else "FAIL",
        ]
        for c in summary["limits"]
    ]
    return (
        render_table(["limit", "required", "measured", "pass"], rows, markdown) if rows else "(no limits set)"
    )


# --- one load test ------------------------------------------------------------------------------------------


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


def service_metadata(host: str) -> dict[str, Any] | None:
    """``GET host/metadata`` as a dict (what model and variant answered), or ``None``."""
    try:
        status, body = http_get(f"{host}/metadata", timeout_s=10.0)
        data = json.loads(body) if status == 200 else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def run_loadtest(
    plan: LocustPlan,
    output: Path,
    *,
    limits: dict[str, float | None],
    serve_options: ServeOptions | None = None,
    ready_timeout_s: float = 180.0,
    progress: Callable[[str], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> LoadTestOutcome:
    """Run one load test and write ``summary.json`` plus Locust's CSV and HTML reports into ``output``.

    Args:
        plan: the load; its ``host`` is used unless ``serve_options`` is given.
        output: the report folder (created).
        limits: ``max_p95_ms``, ``max_fail_ratio``, ``min_rps`` (``None``: not checked).
        serve_options: start ``shipyard serve`` on 127.0.0.1 for this tag first, and stop it afterwards.
        ready_timeout_s: how long the started service may take to answer ``/readyz``.
        progress: called with one line per step.
        settings: recorded in ``summary.json`` as ``settings`` (the effective load-test config).

    Raises:
        LoadTestError: the service or Locust failed to run.
    """
    say = progress or (lambda _line: None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {"settings": settings or {}}
        if serve_options is not None:
            say(f"starting shipyard serve {serve_options.tag} ...")
            started = time.monotonic()
            host = stack.enter_context(serve(serve_options, output / "server.log", ready_timeout_s))
            extra["server"] = {
                "tag": serve_options.tag,
                "variant": serve_options.variant,
                **serve_options.describe(),
                "ready_s": round(time.monotonic() - started, 2),
            }
            plan = replace(plan, host=host)
        else:
            plan = replace(plan, host=check_host(plan.host))
            wait_ready(plan.host, min(ready_timeout_s, 30.0))
        extra["metadata"] = service_metadata(plan.host)
        before, note_before = scrape_metrics(plan.host)
        say(
            f"running {plan.users} users for {plan.run_time()} against {plan.host}"
            + (f" with {plan.workers} Locust workers" if plan.workers else "")
        )
        result = run_locust(plan, output)
        after, note_after = scrape_metrics(plan.host)
    summary = summarize(
        result,
        plan=plan,
        limits=limits,
        metrics_before=before,
        metrics_after=after,
        metrics_note=note_after or note_before,
        extra=extra,
    )
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (output / "summary.md").write_text(
        f"# Load test: {plan.host}\n\n{endpoint_table(summary, markdown=True)}\n\n"
        f"{limits_table(summary, markdown=True)}\n"
    )
    return LoadTestOutcome(summary, output)
