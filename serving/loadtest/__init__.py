"""Load tests for the Shipyard service: Locust scenarios, pass/fail limits, reports and a batching sweep.

The public surface is importable without Locust, TensorFlow or the BentoML service (Locust runs in its own
processes on :data:`LOCUSTFILE`), so that ``shipyard loadtest`` stays light.
"""

from serving.loadtest.runner import (
    LOCUSTFILE,
    SCENARIOS,
    LimitCheck,
    LoadTestError,
    LoadTestOutcome,
    LocustPlan,
    ServeOptions,
    check_limits,
    endpoint_table,
    limits_table,
    parse_metrics,
    run_loadtest,
    run_locust,
    scrape_metrics,
    serve,
)
from serving.loadtest.sweep import SweepOutcome, recommend, run_sweep, sweep_grid, sweep_table

__all__ = [
    "LOCUSTFILE",
    "SCENARIOS",
    "LimitCheck",
    "LoadTestError",
    "LoadTestOutcome",
    "LocustPlan",
    "ServeOptions",
    "SweepOutcome",
    "check_limits",
    "endpoint_table",
    "limits_table",
    "parse_metrics",
    "recommend",
    "run_loadtest",
    "run_locust",
    "run_sweep",
    "scrape_metrics",
    "serve",
    "sweep_grid",
    "sweep_table",
]
