"""Locust, headless, in its own processes: the plan of one run, its command lines, and the run.

Locust is never imported here (it monkey-patches the standard library through gevent): it runs on
:data:`LOCUSTFILE`, which reads the whole :class:`LoadTestConfig` from one ``SHIPYARD_LOADTEST_CONFIG``
variable and writes its result JSON to the file named by ``SHIPYARD_LOADTEST_RESULT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.loadtest.config import LoadTestConfig
from serving.loadtest.errors import LoadTestError
from serving.process import free_port, log_tail, stop_process_group

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LOCUST_CSV_PREFIX = "locust"
#: Where the Locust master (or single process) writes its JSON result.
RESULT_ENV = "SHIPYARD_LOADTEST_RESULT"
#: The master's port when workers on other hosts join and ``loadtest.master_port`` is not set (Locust's own).
REMOTE_MASTER_PORT = 5557

#: ``--scenario`` -> the Locust user classes it runs (names in :data:`LOCUSTFILE`).
SCENARIOS: dict[str, tuple[str, ...]] = {
    "traffic": ("ClassifyUser",),
    "bad-inputs": ("ClassifyUser", "BadInputUser"),
}


@dataclass(frozen=True)
class LocustPlan:
    """One headless Locust run: the target, the load-test config (load shape, scenario, what the users send;
    handed to every Locust process) and how long to wait for Locust itself."""

    host: str
    config: LoadTestConfig
    stop_timeout_s: float = 5.0
    expect_workers_wait_s: float = 60.0

    @property
    def users(self) -> int:
        """Simulated users."""
        return self.config.users

    @property
    def spawn_rate(self) -> float:
        """Users started per second."""
        return self.config.spawn_rate

    @property
    def duration_s(self) -> float:
        """Run time in seconds."""
        return self.config.duration_s

    @property
    def scenario(self) -> str:
        """The scenario (a key of :data:`SCENARIOS`)."""
        return self.config.scenario

    @property
    def workers(self) -> int:
        """Locust worker processes started on this machine under a master (0: one process, unless remote)."""
        return self.config.workers

    @property
    def expected_workers(self) -> int:
        """Every worker the master waits for: the local ones and those started on other hosts."""
        return self.config.workers + self.config.remote_workers

    @property
    def distributed(self) -> bool:
        """A master with workers (local or remote) rather than one process."""
        return self.expected_workers > 0

    def run_time(self) -> str:
        """``-t``: whole seconds, at least 1."""
        return f"{max(1, round(self.duration_s))}s"

    def deadline_s(self) -> float:
        """How long the Locust master may take before it is stopped."""
        return (
            self.duration_s
            + self.stop_timeout_s
            + 90
            + (self.expect_workers_wait_s if self.distributed else 0)
        )


def _connect_host(bind_host: str) -> str:
    """Where workers on this machine reach a master bound to ``bind_host``."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def worker_command(config: LoadTestConfig, master_host: str, master_port: int) -> list[str]:
    """A Locust worker for a master at ``master_host:master_port``; run it with ``config.to_env()`` set (on
    another host: the same ``shipyard`` installed and ``config.images`` present there)."""
    return [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)),
        *("--worker", "--master-host", master_host, "--master-port", str(master_port)),
        *("--loglevel", "WARNING"),
        *SCENARIOS[config.scenario],
    ]


def locust_commands(
    plan: LocustPlan, output: Path, master_port: int | None = None
) -> tuple[list[str], list[list[str]]]:
    """The Locust master (or single process) command and the worker commands for ``plan``."""
    if plan.scenario not in SCENARIOS:
        raise LoadTestError(f"unknown scenario {plan.scenario!r}; choose one of {', '.join(SCENARIOS)}")
    # a stepped run's load comes from the locustfile's shape; -u/-r/-t would only draw a warning
    load = (
        ()
        if plan.config.stepped
        else ("-u", str(plan.users), "-r", f"{plan.spawn_rate:g}", "-t", plan.run_time())
    )
    main = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)),
        *("--headless", "--host", plan.host, *load),
        *("--stop-timeout", f"{plan.stop_timeout_s:g}"),
        *("--csv", str(output / LOCUST_CSV_PREFIX), "--html", str(output / "report.html")),
        *("--only-summary", "--loglevel", "WARNING"),
    ]
    if not plan.distributed:
        return [*main, *SCENARIOS[plan.scenario]], []
    if master_port is None:
        raise ValueError("a distributed run needs master_port")
    bind = plan.config.master_bind_host
    main += [
        *("--master", "--master-bind-host", bind, "--master-bind-port", str(master_port)),
        *("--expect-workers", str(plan.expected_workers)),
        *("--expect-workers-max-wait", f"{plan.expect_workers_wait_s:g}"),
    ]
    worker = worker_command(plan.config, _connect_host(bind), master_port)
    return [*main, *SCENARIOS[plan.scenario]], [list(worker) for _ in range(plan.workers)]


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """``cmd`` in its own process group, its output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def remote_worker_hint(config: LoadTestConfig, port: int) -> str:
    """What to run on each other host so that its worker joins a master on ``port`` of this one."""
    import shlex

    cmd = worker_command(config, "<this host>", port)
    cmd[0] = "python"
    return f"{LoadTestConfig.ENV}={shlex.quote(config.model_dump_json())} {shlex.join(cmd)}"


def run_locust(
    plan: LocustPlan, output: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run Locust headless (with ``plan.workers`` local worker processes when > 0); return its result JSON.

    Writes ``locust_stats.csv`` (and the other CSVs), ``report.html``, ``locust.log`` and
    ``locust_result.json`` into ``output``. Every process started here is stopped before returning.

    Raises:
        LoadTestError: Locust did not finish in time or wrote no result; the message holds its log tail.
    """
    output.mkdir(parents=True, exist_ok=True)
    result_path = output / "locust_result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, **plan.config.to_env(), RESULT_ENV: str(result_path)}
    port = None
    if plan.distributed:
        port = plan.config.master_port or (REMOTE_MASTER_PORT if plan.config.remote_workers else free_port())
    main_cmd, worker_cmds = locust_commands(plan, output, port)
    if plan.config.remote_workers and port is not None and progress is not None:
        progress(
            f"waiting for {plan.config.remote_workers} worker(s) from other hosts on "
            f"{plan.config.master_bind_host}:{port}; on each, run:\n  {remote_worker_hint(plan.config, port)}"
        )
    log = output / "locust.log"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start(main_cmd, log, env))
        procs += [_start(cmd, output / f"locust_worker_{i}.log", env) for i, cmd in enumerate(worker_cmds)]
        try:
            procs[0].wait(plan.deadline_s())
        except subprocess.TimeoutExpired:
            raise LoadTestError(
                f"Locust did not finish within {plan.deadline_s():.0f}s; its log ({log}) ends with:\n"
                f"{log_tail(log)}"
            ) from None
    finally:
        for proc in procs:
            stop_process_group(proc, grace_s=10.0)
    if not result_path.is_file():
        raise LoadTestError(
            f"Locust exited with status {procs[0].returncode} and wrote no result; its log ({log}) ends with:\n"
            f"{log_tail(log)}"
        )
    result = json.loads(result_path.read_text())
    result["exit_code"] = procs[0].returncode
    return result
