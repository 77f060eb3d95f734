"""Load tests for the Shipyard service: Locust scenarios, pass/fail limits, reports and a batching sweep.

The public surface is importable without Locust, TensorFlow or the BentoML service (Locust runs in its own
processes on :data:`LOCUSTFILE`, a server the load test starts runs through :mod:`serving.process`), so that
``shipyard loadtest`` stays light. ``runner`` runs one test, ``locustrun`` drives Locust, ``metrics`` reads
the service's Prometheus samples, ``limits`` and ``report`` judge and summarise a run, ``sweep`` compares
batching settings, ``checks`` and ``locustfile`` are what the simulated users send and expect.
"""

from serving.loadtest.config import LoadTestConfig
from serving.loadtest.errors import LoadTestError
from serving.loadtest.limits import LimitCheck, check_limits
from serving.loadtest.locustrun import LOCUSTFILE, SCENARIOS, LocustPlan, run_locust
from serving.loadtest.metrics import parse_metrics, scrape_metrics
from serving.loadtest.report import endpoint_table, limits_table
from serving.loadtest.runner import LoadTestOutcome, run_loadtest, serve_config_for, started_server
from serving.loadtest.sweep import SweepOutcome, recommend, run_sweep, sweep_grid, sweep_table

__all__ = [
    "LOCUSTFILE",
    "SCENARIOS",
    "LimitCheck",
    "LoadTestConfig",
    "LoadTestError",
    "LoadTestOutcome",
    "LocustPlan",
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
    "serve_config_for",
    "started_server",
    "sweep_grid",
    "sweep_table",
]
