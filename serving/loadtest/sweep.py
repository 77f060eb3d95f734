"""A batching sweep: restart the service over a grid of settings, load each the same way, pick one.

Each point of ``max_batch_size x max_latency_ms x workers`` is one :class:`~serving.config.ServeConfig`,
served afresh by ``bentoml serve`` on 127.0.0.1 and loaded the same way
(:func:`serving.loadtest.runner.run_loadtest`); it becomes one row of a table. A point that fails to start or
run is a row with its error, not a crash. The recommendation is the highest throughput among the points that
meet the limits (ties: the lower p95).

In a stepped mode (``loadtest.mode`` ``ramp``, the sweep's default, or ``rate``) each point's load grows until p95
or errors break the limits, and its row is the point's saturation step: the most throughput it delivers
within the limits. The recommended point is then served and loaded once more at its saturation load, a
single step, to confirm the figure (``confirmation`` in ``sweep.json``). The plot draws throughput against p95
as a frontier: the Pareto points (no other point has more throughput at a lower p95) joined, the dominated
ones faded.
"""

from __future__ import annotations

import csv
import itertools
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.files import write_bytes_atomic, write_json_atomic
from serving.config import ServeConfig
from serving.loadtest.config import LoadTestConfig
from serving.loadtest.errors import LoadTestError
from serving.loadtest.locustrun import LocustPlan
from serving.loadtest.report import format_value, render_table
from serving.loadtest.runner import load_text, run_loadtest

COLUMNS = [
    "point",
    "max_batch_size",
    "max_latency_ms",
    "workers",
    "requests",
    "failures",
    "fail_ratio",
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mode",
    "users",
    "target_rps",
    "peak_rps",
    "meets_limits",
    "missed",
    "load_1m",
    "error",
]


def sweep_grid(
    base: ServeConfig, batch_sizes: list[int], latencies_ms: list[int], workers: list[int]
) -> list[ServeConfig]:
    """Every combination, in order, as server configs derived from ``base`` (batching on).

    Raises:
        ValueError: an empty axis or a value below 1 (a pydantic ``ValidationError`` for values the
            server's config refuses).
    """
    for name, axis in (("batch sizes", batch_sizes), ("latencies", latencies_ms), ("workers", workers)):
        if not axis:
            raise ValueError(f"the sweep needs at least one of {name}")
        if any(v < 1 for v in axis):
            raise ValueError(f"sweep {name} must be >= 1, got {axis}")
    fields = base.model_dump()
    return [
        ServeConfig.model_validate(
            {**fields, "max_batch_size": b, "max_latency_ms": lat, "workers": w, "batching": True}
        )
        for w, b, lat in itertools.product(workers, batch_sizes, latencies_ms)
    ]


def point_name(point: ServeConfig) -> str:
    """A short folder-safe name, e.g. ``b16-l20-w1``."""
    return f"b{point.max_batch_size}-l{point.max_latency_ms}-w{point.workers}"


@dataclass(frozen=True)
class SweepOutcome:
    """The rows of a sweep, the recommended row (or ``None``) and the files written."""

    rows: list[dict[str, Any]]
    recommended: dict[str, Any] | None
    output: Path
    plot: Path | None
    notes: list[str]
    confirmation: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        """0 when some point met the limits, 1 when none did."""
        return 0 if self.recommended is not None else 1


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the highest throughput among those meeting the limits (ties: lower p95), or ``None``."""
    ok = [r for r in rows if r["meets_limits"]]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["rps"], -(r["p95_ms"] or float("inf"))))


def sweep_table(
    rows: list[dict[str, Any]], recommended: dict[str, Any] | None, markdown: bool = False
) -> str:
    """The sweep as a table; the recommended row is marked with ``*``."""
    headers = [
        "point",
        "batch",
        "latency ms",
        "workers",
        "requests",
        "fail %",
        "users",
        "req/s",
        "peak req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "load 1m",
        "meets limits",
    ]
    body = []
    for r in rows:
        mark = " *" if recommended is not None and r["point"] == recommended["point"] else ""
        body.append(
            [
                r["point"] + mark,
                str(r["max_batch_size"]),
                str(r["max_latency_ms"]),
                str(r["workers"]),
                str(r["requests"]),
                format_value(100 * r["fail_ratio"] if r["fail_ratio"] is not None else None, ".2f"),
                format_value(r["users"]),
                format_value(r["rps"]),
                format_value(r["peak_rps"]),
                format_value(r["p50_ms"], ".0f"),
                format_value(r["p95_ms"], ".0f"),
                format_value(r["p99_ms"], ".0f"),
                format_value(r["load_1m"], ".1f"),
                "yes" if r["meets_limits"] else f"no ({r['error'][:60] if r['error'] else r['missed']})",
            ]
        )
    return render_table(headers, body, markdown)


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row dominates (as much throughput or more at a p95 as low or lower, one of them
    strictly), by throughput; rows without a p95 are left out."""
    measured = [r for r in rows if r["p95_ms"] is not None and r["rps"]]

    def dominated(r: dict[str, Any]) -> bool:
        return any(
            o["rps"] >= r["rps"]
            and o["p95_ms"] <= r["p95_ms"]
            and (o["rps"], o["p95_ms"]) != (r["rps"], r["p95_ms"])
            for o in measured
        )

    return sorted((r for r in measured if not dominated(r)), key=lambda r: r["rps"])


def plot_sweep(
    rows: list[dict[str, Any]],
    recommended: dict[str, Any] | None,
    limits: dict[str, float | None],
    path: Path,
    confirmation: dict[str, Any] | None = None,
) -> Path:
    """Throughput (x) against p95 latency (y) as a frontier: the Pareto points joined by a line, the dominated
    ones faded; green meets the limits, red does not; the recommended point starred and its re-measurement
    (``confirmation``) drawn as a diamond.

    Raises:
        ImportError: matplotlib is not installed (``pip install -e .[train]``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    plotted = [r for r in rows if r["p95_ms"] is not None]
    _draw_frontier(ax, plotted)
    marks = (
        (recommended, "*", 260, "black", "recommended"),
        (confirmation, "D", 50, "tab:purple", "re-measured"),
    )
    for row, marker, size, edge, what in marks:
        if row is not None and row.get("p95_ms") is not None:
            label = f"{what}: {row['point']}"
            ax.scatter(
                row["rps"],
                row["p95_ms"],
                marker=marker,
                s=size,
                facecolor="none",
                edgecolor=edge,
                zorder=4,
                label=label,
            )
    if limits.get("max_p95_ms") is not None:
        ax.axhline(limits["max_p95_ms"], color="gray", linestyle="--", linewidth=1, label="max p95")
    if limits.get("min_rps") is not None:
        ax.axvline(limits["min_rps"], color="gray", linestyle=":", linewidth=1, label="min req/s")
    ax.margins(x=0.18, y=0.12)  # room for the labels of the outermost points
    _label_points(ax, [(r["rps"], r["p95_ms"], r["point"]) for r in plotted])
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title("Sweep frontier: green meets the limits, faded is dominated", fontsize=11)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _draw_frontier(ax: Any, plotted: list[dict[str, Any]]) -> None:
    """The points, green when they meet the limits and red when not, faded when dominated; the Pareto points
    joined by a line."""
    front = pareto_front(plotted)
    on_front = {r["point"] for r in front}
    if front:
        ax.plot(
            [r["rps"] for r in front],
            [r["p95_ms"] for r in front],
            color="tab:blue",
            lw=1.2,
            zorder=2,
            label="frontier (Pareto points)",
        )
    for r in plotted:
        color = "tab:green" if r["meets_limits"] else "tab:red"
        ax.scatter(
            r["rps"], r["p95_ms"], color=color, s=40, zorder=3, alpha=1.0 if r["point"] in on_front else 0.3
        )


def applied_settings(point: ServeConfig, metadata: dict[str, Any] | None) -> str | None:
    """Why the service did not run with the point's settings (from ``/metadata``'s ``serving``), or ``None``.

    A sweep whose settings silently did not reach the server would compare one configuration with itself.
    """
    serving = (metadata or {}).get("serving")
    if not isinstance(serving, dict):
        return None  # a server that does not report its settings cannot be checked
    wrong = [
        f"{k}={serving[k]!r} (asked {getattr(point, k)!r})"
        for k in ("max_batch_size", "max_latency_ms", "workers")
        if k in serving and serving[k] != getattr(point, k)
    ]
    return f"the server reports {', '.join(wrong)}" if wrong else None


def _label_points(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point, moving a label to another side of its point when it would cover another point
    or a label already placed (configurations often land on the same spot)."""
    ax.figure.canvas.draw()  # fixes the axis limits, so that data map to pixels
    scale = ax.figure.dpi / 72.0  # pixels per typographic point
    height = 10 * scale
    offsets = [(5, 4), (5, -12), (-5, 4), (-5, -12), (5, 16), (5, -24), (-5, 16), (-5, -24)]
    pixels = [ax.transData.transform((x, y)) for x, y, _ in points]
    labels: list[tuple[float, float, float, float]] = []  # left, bottom, right, top in pixels

    def free(box: tuple[float, float, float, float], own: int) -> bool:
        markers = [(px - 9, py - 9, px + 9, py + 9) for k, (px, py) in enumerate(pixels) if k != own]
        return all(box[2] < o[0] or o[2] < box[0] or box[3] < o[1] or o[3] < box[1] for o in markers + labels)

    for k, ((x, y, text), (px, py)) in enumerate(zip(points, pixels, strict=True)):
        width = 8 * 0.62 * len(text) * scale  # 8 pt text
        for dx, dy in offsets:
            left = px + dx * scale - (width if dx < 0 else 0)
            box = (left, py + dy * scale, left + width, py + dy * scale + height)
            if free(box, k):
                break
        labels.append(box)
        ax.annotate(
            text,
            (x, y),
            textcoords="offset points",
            xytext=(dx, dy),
            fontsize=8,
            ha="left" if dx > 0 else "right",
        )


def _row(name: str, point: ServeConfig, summary: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """One row of the sweep: the point's settings and what its run measured (or why it did not run)."""
    base = {
        "point": name,
        "max_batch_size": point.max_batch_size,
        "max_latency_ms": point.max_latency_ms,
        "workers": point.workers,
    }
    if summary is None:
        empty = dict.fromkeys(
            ("fail_ratio", "p50_ms", "p95_ms", "p99_ms", "load_1m", "mode", "users", "target_rps", "peak_rps")
        )
        return {
            **base,
            **empty,
            "requests": 0,
            "failures": 0,
            "rps": 0.0,
            "meets_limits": False,
            "missed": "",
            "error": error or "did not run",
        }
    lat = summary["latency_ms"]
    mismatch = applied_settings(point, summary.get("metadata"))
    sat = summary.get("saturation") or {}
    return {
        **base,
        "requests": summary["requests"],
        "failures": summary["failures"],
        "fail_ratio": summary["fail_ratio"],
        "rps": sat.get("rps", summary["throughput_rps"]) or 0.0,
        **{f"{q}_ms": sat.get(f"{q}_ms", lat[q]) for q in ("p50", "p95", "p99")},
        "mode": summary.get("mode", "users"),
        "users": sat.get("users", summary["users"]),
        "target_rps": sat.get("target_rps"),
        "peak_rps": sat.get("peak_rps", summary["throughput_rps"]),
        "meets_limits": bool(summary["passed"]) and not mismatch,
        "missed": ", ".join(c["name"] for c in summary["limits"] if not c["passed"]),
        "load_1m": (summary.get("machine", {}).get("loadavg_1_5_15") or [None])[0],
        "error": mismatch,
    }


def confirm_config(config: LoadTestConfig, row: dict[str, Any]) -> LoadTestConfig:
    """The load that re-measures a row: one step at its saturation load (its users in ``ramp``, its arrival
    rate in ``rate``), or the same fixed load in ``users`` mode."""
    if config.mode == "ramp" and row.get("users"):
        return config.model_copy(
            update={"users": row["users"], "step_users": row["users"], "duration_s": config.step_s}
        )
    if config.mode == "rate" and row.get("target_rps"):
        rate = row["target_rps"]
        return config.model_copy(update={"step_rps": rate, "max_rps": rate, "duration_s": config.step_s})
    return config


def _confirm(
    points: list[ServeConfig],
    best: dict[str, Any],
    config: LoadTestConfig,
    output: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Serve the recommended point again and load it once at its saturation load; the row, with the ratio of
    its throughput to the sweep's figure."""
    point = next(p for p in points if point_name(p) == best["point"])
    say(f"confirming {best['point']} at its saturation load ...")
    row = _run_point(point, confirm_config(config, best), output / "confirm", say)
    return {**row, "ratio_to_sweep": round(row["rps"] / best["rps"], 3) if best["rps"] else None}


def _run_point(
    point: ServeConfig, config: LoadTestConfig, output: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Load one point; its reports go into ``output/<point>/``."""
    name = point_name(point)
    try:
        row = _row(name, point, run_loadtest(config, output / name, serve=point).summary, None)
    except LoadTestError as exc:
        row = _row(name, point, None, str(exc).splitlines()[0])
    say(
        f"    {format_value(row['rps'])} req/s, p95 {format_value(row['p95_ms'], '.0f')} ms, "
        f"{'meets' if row['meets_limits'] else 'misses'} the limits"
        + (f": {row['error']}" if row["error"] else "")
    )
    return row


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in COLUMNS})


def _confirmation_text(confirmation: dict[str, Any] | None) -> str:
    if confirmation is None:
        return ""
    return (
        f"Re-measured at its saturation load: {confirmation['rps']:.1f} req/s at p95 "
        f"{format_value(confirmation['p95_ms'], '.0f')} ms ({format_value(confirmation['ratio_to_sweep'], '.2f')}x "
        f"the sweep's figure), {'within' if confirmation['meets_limits'] else 'outside'} the limits."
    )


def _markdown(
    rows: list[dict[str, Any]],
    best: dict[str, Any] | None,
    config: LoadTestConfig,
    plot: bool,
    confirmation: dict[str, Any] | None,
) -> str:
    """``sweep.md``: the load, the limits, the table and the verdict."""
    plan = LocustPlan(host="", config=config)
    limit_text = ", ".join(f"{k} {v:g}" for k, v in config.limits().items() if v is not None) or "none"
    verdict = (
        f"Recommended: **{best['point']}** (max_batch_size={best['max_batch_size']}, "
        f"max_latency_ms={best['max_latency_ms']}, workers={best['workers']}): {best['rps']:.1f} req/s "
        f"at p95 {format_value(best['p95_ms'], '.0f')} ms, the highest throughput among the points meeting the limits."
        if best
        else "No configuration met the limits."
    )
    return (
        f"# Batching sweep\n\nEach point: {load_text(config)}, scenario {plan.scenario}; "
        f"limits: {limit_text}. Load generated and served on one machine with {os.cpu_count()} CPUs "
        f"({platform.platform()}); 'load 1m' is its 1-minute load average after each point.\n\n"
        f"{sweep_table(rows, best, markdown=True)}\n\n{verdict} {_confirmation_text(confirmation)}\n"
        + ("\n![throughput against p95](sweep.png)\n" if plot else "")
    )


def run_sweep(
    points: list[ServeConfig],
    config: LoadTestConfig,
    output: Path,
    *,
    progress: Callable[[str], None] | None = None,
    confirm: bool = True,
) -> SweepOutcome:
    """Load every point the same way; write ``sweep.csv``, ``sweep.md``, ``sweep.json`` and ``sweep.png``.

    Each point's own reports go into ``output/<point>/``; ``config`` is recorded in each ``summary.json``.
    With ``confirm``, the recommended point is served and loaded once more at its saturation load
    (:func:`confirm_config`; reports in ``output/confirm/``).
    """
    say = progress or (lambda _line: None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, point in enumerate(points, 1):
        say(f"[{i}/{len(points)}] {point_name(point)}")
        rows.append(_run_point(point, config, output, say))
    best = recommend(rows)
    confirmation = _confirm(points, best, config, output, say) if best is not None and confirm else None
    _write_csv(rows, output / "sweep.csv")
    notes = []
    plot: Path | None = None
    try:
        plot = plot_sweep(rows, best, config.limits(), output / "sweep.png", confirmation)
    except ImportError:
        notes.append("matplotlib is not installed, so no sweep.png; pip install -e .[train]")
    markdown = _markdown(rows, best, config, plot is not None, confirmation)
    write_bytes_atomic(output / "sweep.md", markdown.encode("utf-8"))
    report = {
        "rows": rows,
        "recommended": best,
        "confirmation": confirmation,
        "mode": config.mode,
        "limits": config.limits(),
        "users": config.users,
        "duration_s": config.duration_s,
        "scenario": config.scenario,
        "notes": notes,
    }
    write_json_atomic(output / "sweep.json", report)
    return SweepOutcome(rows, best, output, plot, notes, confirmation)
