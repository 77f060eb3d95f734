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
        """Locust worker processes under a master (0: one process)."""
        return self.config.workers

    def run_time(self) -> str:
        """``-t``: whole seconds, at least 1."""
        return f"{max(1, round(self.duration_s))}s"

    def deadline_s(self) -> float:
        """How long the Locust master may take before it is stopped."""
        return (
            self.duration_s + self.stop_timeout_s + 90 + (self.expect_workers_wait_s if self.workers else 0)
        )


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
        *("--host", plan.host, "-u", str(plan.users), "-r", f"{plan.spawn_rate:g}", "-t", plan.run_time()),
        *("--stop-timeout", f"{plan.stop_timeout_s:g}"),
        *("--csv", str(output / LOCUST_CSV_PREFIX), "--html", str(output / "report.html")),
        *("--only-summary", "--loglevel", "WARNING"),
    ]
    if plan.workers <= 0:
        return [*main, *SCENARIOS[plan.scenario]], []
    if master_port is None:
        raise ValueError("a distributed run needs master_port")
    main += [
        *("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)),
        *(
            "--expect-workers",
            str(plan.workers),
            "--expect-workers-max-wait",
            f"{plan.expect_workers_wait_s:g}",
        ),
    ]
    worker = [
        *base,
        *("--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)),
        *("--loglevel", "WARNING"),
        *SCENARIOS[plan.scenario],
    ]
    return [*main, *SCENARIOS[plan.scenario]], [list(worker) for _ in range(plan.workers)]


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """``cmd`` in its own process group, its output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


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
    env = {**os.environ, **plan.config.to_env(), RESULT_ENV: str(result_path)}
    main_cmd, worker_cmds = locust_commands(plan, output, free_port() if plan.workers > 0 else None)
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
