"""The summary of one load test (``summary.json``, ``summary.md``) and its tables for the terminal."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.files import write_bytes_atomic, write_json_atomic
from edge.tables import format_table, markdown_table
from serving.loadtest.limits import check_limits
from serving.loadtest.locustrun import LocustPlan
from serving.loadtest.steps import saturation


def endpoint_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One Locust stats entry as a table row: requests, failures, throughput and latencies."""
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


def summarize(
    result: dict[str, Any],
    *,
    plan: LocustPlan,
    server_metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` of one run: totals, per-endpoint rows, errors, server metrics and limit checks.

    Args:
        result: what the locustfile wrote.
        plan: the run (its config holds the limits).
        server_metrics: :func:`serving.loadtest.metrics.metrics_report` of the run.
        extra: more top-level keys (settings, the started server, its metadata).
    """
    totals = {**endpoint_row(result["total"]), "name": "Aggregated"}
    steps = result.get("steps") or []
    limit_point = saturation(plan.config, steps, result.get("stop_reason")) if plan.config.stepped else None
    checks = check_limits(_judged(totals, limit_point), **plan.config.limits())
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": plan.host,
        "scenario": plan.scenario,
        "users": plan.users,
        "spawn_rate": plan.spawn_rate,
        "duration_s": plan.duration_s,
        "locust_workers": plan.expected_workers,
        "workers_reporting": len(result.get("workers_reporting", [])),
        "worker_requests": result.get("worker_requests", {}),
        "requests": totals["requests"],
        "failures": totals["failures"],
        "fail_ratio": totals["fail_ratio"],
        "throughput_rps": totals["rps"],
        "latency_ms": {k: totals[f"{k}_ms"] for k in ("p50", "p95", "p99", "avg", "max")},
        "endpoints": [endpoint_row(e) for e in sorted(result["endpoints"], key=lambda e: e["name"])],
        "total": totals,
        "errors": result.get("errors", []),
        "server_metrics": server_metrics,
        "mode": plan.config.mode,
        "steps": steps,
        "saturation": limit_point,
        "limits": [c.to_dict() for c in checks],
        "passed": all(c.passed for c in checks),
        "machine": machine(),
        **(extra or {}),
    }


def _judged(totals: dict[str, Any], limit_point: dict[str, Any] | None) -> dict[str, Any]:
    """What the limits judge: the whole run, or in a stepped run its saturation step (the steps after it broke a
    limit on purpose). No step within the limits: nothing met them."""
    if limit_point is None:
        return totals
    if limit_point["rps"] is None:
        return {"requests": 0}
    return {**totals, **{k: limit_point[k] for k in ("p95_ms", "rps", "fail_ratio")}}


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


def write_summary(summary: dict[str, Any], output: Path) -> None:
    """``summary.json`` and ``summary.md`` (the endpoint and limit tables) into ``output``."""
    write_json_atomic(output / "summary.json", summary, default=str)
    stepped = (
        f"{steps_table(summary, markdown=True)}\n\n{saturation_line(summary)}\n\n"
        if summary.get("steps")
        else ""
    )
    markdown = (
        f"# Load test: {summary['host']}\n\n{stepped}{endpoint_table(summary, markdown=True)}\n\n"
        f"{limits_table(summary, markdown=True)}\n"
    )
    write_bytes_atomic(output / "summary.md", markdown.encode("utf-8"))


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
            *(format_value(r[key], ".0f") for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
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


def steps_table(summary: dict[str, Any], markdown: bool = False) -> str:
    """A stepped run, one row per step: load, throughput, latency, failures and the limit it broke."""
    sat = summary.get("saturation") or {}
    headers = ["step", "users", "target req/s", "req/s", "p50 ms", "p95 ms", "fail %", "broke"]
    rows = [
        [
            f"{s['step']}{' *' if s['step'] == sat.get('step') else ''}",
            str(s["users"]),
            format_value(s["target_rps"], "g"),
            format_value(s["rps"]),
            format_value(s["p50_ms"], ".0f"),
            format_value(s["p95_ms"], ".0f"),
            format_value(100 * s["fail_ratio"] if s["fail_ratio"] is not None else None, ".2f"),
            s["broke"] or "",
        ]
        for s in summary.get("steps") or []
    ]
    return render_table(headers, rows, markdown)


def saturation_line(summary: dict[str, Any]) -> str:
    """One sentence: the saturation throughput of a stepped run (the step marked ``*``) and why it stopped."""
    sat = summary.get("saturation")
    if not sat:
        return ""
    if sat["rps"] is None:
        return f"No step stayed within the limits ({sat['stop_reason']})."
    where = f"{sat['users']} users" + (f", {sat['target_rps']:g} req/s offered" if sat["target_rps"] else "")
    return (
        f"Saturation: {sat['rps']:.1f} req/s at p95 {format_value(sat['p95_ms'], '.0f')} ms (step {sat['step']}, "
        f"{where}); peak {format_value(sat['peak_rps'])} req/s. Stopped: {sat['stop_reason']}."
        + ("" if sat["found"] else " The limit was not reached: raise users (ramp) or max_rps (rate).")
    )
