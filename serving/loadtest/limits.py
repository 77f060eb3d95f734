"""Pass/fail limits of a load test: p95 latency, failure ratio and throughput."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
        return asdict(self)


def _check(name: str, bound: str, limit: float, measured: float | None, has_requests: bool) -> LimitCheck:
    within = measured is not None and (measured <= limit if bound == "<=" else measured >= limit)
    return LimitCheck(name, bound, limit, measured, has_requests and within)


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
    has = totals.get("requests", 0) > 0
    wanted = [
        ("p95 latency (ms)", "<=", max_p95_ms, "p95_ms"),
        ("failure ratio", "<=", max_fail_ratio, "fail_ratio"),
        ("throughput (req/s)", ">=", min_rps, "rps"),
    ]
    return [
        _check(name, bound, limit, totals.get(key), has)
        for name, bound, limit, key in wanted
        if limit is not None
    ]


def missed_limits(summary: dict[str, Any]) -> str:
    """The limits a summary missed, with what was measured, in one line (empty when none was missed)."""
    return "; ".join(
        f"{c['name']} {'n/a' if c['measured'] is None else format(c['measured'], '.4g')} "
        f"(required {c['bound']} {c['limit']:g})"
        for c in summary["limits"]
        if not c["passed"]
    )
