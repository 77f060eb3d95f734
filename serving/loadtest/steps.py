"""Stepped load (``loadtest.mode`` ``ramp`` or ``rate``): the schedule, each step's statistics, when to stop,
and the saturation point. Pure functions on plain data, importable without Locust: the locustfile's load
shape calls them on the master, the report reads what they wrote.

``ramp`` adds ``step_users`` users without think time every ``step_s`` seconds, up to ``users``; ``rate`` is an
open workload: each user sends ``user_rps`` requests/s whatever the latency (Locust's constant throughput), and
the arrival rate grows by ``step_rps`` per step, up to ``max_rps``. The run stops at the first step that breaks
``max_p95_ms`` or ``max_fail_ratio``, when throughput has stopped growing for :data:`PATIENCE` steps, when the
rate target is no longer delivered, at the cap, or after ``duration_s``. The saturation point is the step with
the highest throughput among those within the limits.
"""

from __future__ import annotations

import math
from typing import Any

from serving.loadtest.config import LoadTestConfig

#: Steps in a row without :data:`GAIN` more throughput than the best step so far before a run stops.
PATIENCE = 2
#: The throughput gain over the best step so far that counts as growth.
GAIN = 0.05
#: ``rate``: a step that delivers less than this share of its target rate is past saturation.
DELIVERED = 0.9


def step_count(config: LoadTestConfig) -> int:
    """Steps until the cap (``users`` in ``ramp``, ``max_rps`` in ``rate``); 1 in ``users`` mode."""
    if config.mode == "ramp":
        return max(1, math.ceil(config.users / config.step_users))
    if config.mode == "rate":
        return max(1, math.ceil(config.max_rps / config.step_rps - 1e-9))
    return 1


def step_load(config: LoadTestConfig, step: int) -> tuple[int, float | None]:
    """Users and target arrival rate (``None`` outside ``rate``) of ``step`` (0-based)."""
    if config.mode == "ramp":
        return min(config.users, config.step_users * (step + 1)), None
    if config.mode == "rate":
        rate = min(config.max_rps, config.step_rps * (step + 1))
        return max(1, math.ceil(rate / config.user_rps - 1e-9)), rate
    return config.users, None


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile of a ``{response time ms: count}`` histogram (Locust's buckets), ``None`` when empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def snapshot(
    elapsed_s: float, requests: int, failures: int, response_times: dict[int, int]
) -> dict[str, Any]:
    """Locust's cumulative totals at one moment (what :func:`step_row` subtracts)."""
    return {"t": elapsed_s, "requests": requests, "failures": failures, "times": dict(response_times)}


def step_row(config: LoadTestConfig, step: int, start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """One step's row from the snapshots at its start and end: load, throughput, latency, failures, limits."""
    users, rate = step_load(config, step)
    requests = end["requests"] - start["requests"]
    failures = end["failures"] - start["failures"]
    times = {k: n - start["times"].get(k, 0) for k, n in end["times"].items()}
    times = {k: n for k, n in times.items() if n > 0}
    seconds = max(end["t"] - start["t"], 1e-9)
    row = {
        "step": step + 1,
        "users": users,
        "target_rps": rate,
        "seconds": round(seconds, 2),
        "requests": requests,
        "failures": failures,
        "fail_ratio": failures / requests if requests else None,
        "rps": round(requests / seconds, 2),
        "p50_ms": percentile(times, 0.5),
        "p95_ms": percentile(times, 0.95),
        "p99_ms": percentile(times, 0.99),
    }
    return {**row, "broke": broken_limit(config, row)}


def broken_limit(config: LoadTestConfig, row: dict[str, Any]) -> str | None:
    """Which limit a step broke (p95, failure ratio, a step without requests), or ``None``."""
    if not row["requests"]:
        return "no request completed"
    if config.max_p95_ms is not None and row["p95_ms"] is not None and row["p95_ms"] > config.max_p95_ms:
        return f"p95 {row['p95_ms']:.0f} ms > {config.max_p95_ms:g} ms"
    if row["fail_ratio"] > config.max_fail_ratio:
        return f"failure ratio {row['fail_ratio']:.3f} > {config.max_fail_ratio:g}"
    return None


def stop_reason(config: LoadTestConfig, rows: list[dict[str, Any]]) -> str | None:
    """Why the run should stop after the steps in ``rows`` (``None``: go on to the next step)."""
    last = rows[-1]
    if last["broke"]:
        return f"step {last['step']} broke the limit: {last['broke']}"
    if last["target_rps"] and last["rps"] < DELIVERED * last["target_rps"]:
        return (
            f"step {last['step']} delivered {last['rps']:.1f} of {last['target_rps']:g} req/s asked "
            f"(< {DELIVERED:.0%}): the service is saturated"
        )
    best = 0.0
    stalled = 0
    for row in rows:
        stalled = stalled + 1 if best and row["rps"] < best * (1 + GAIN) else 0
        best = max(best, row["rps"])
    if stalled >= PATIENCE:
        return f"throughput stopped growing ({PATIENCE} steps without {GAIN:.0%} more than {best:.1f} req/s)"
    if last["step"] >= step_count(config):
        return f"reached the cap ({'users' if config.mode == 'ramp' else 'max_rps'}) without breaking a limit"
    return None


def saturation(config: LoadTestConfig, steps: list[dict[str, Any]], stopped: str | None) -> dict[str, Any]:
    """The saturation point: the step with the highest throughput among those within the limits.

    ``found`` is false when the run ended at the cap or the time limit without a sign of saturation (a
    limit broken, throughput stalled or a rate not delivered): then the service may handle more.
    """
    within = [s for s in steps if not s["broke"]]
    best = max(within, key=lambda s: (s["rps"], -(s["p95_ms"] or 0.0)), default=None)
    found = bool(stopped) and not stopped.startswith("reached the cap")
    return {
        "mode": config.mode,
        "found": found,
        "stop_reason": stopped or f"ran out of time (duration_s {config.duration_s:g})",
        "rps": best["rps"] if best else None,
        "p50_ms": best["p50_ms"] if best else None,
        "p95_ms": best["p95_ms"] if best else None,
        "p99_ms": best["p99_ms"] if best else None,
        "fail_ratio": best["fail_ratio"] if best else None,
        "users": best["users"] if best else None,
        "target_rps": best["target_rps"] if best else None,
        "step": best["step"] if best else None,
        "peak_rps": max((s["rps"] for s in steps), default=None),
    }
