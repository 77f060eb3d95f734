"""What the service reports about itself during a load test: its ``shipyard_*`` Prometheus samples from
``/metrics`` (before and after a run, and their difference) and its ``/metadata``. The standard library only."""

from __future__ import annotations

import json
import re
from typing import Any

from serving.process import http_get

METRIC_PREFIX = "shipyard_"
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*(?:\{.*\})?)\s+(\S+)(?:\s+\d+)?$")


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


def metrics_report(before: dict[str, float], after: dict[str, float], note: str | None) -> dict[str, Any]:
    """The ``server_metrics`` block of ``summary.json``: both scrapes, their difference per sample and per
    series, and why the metrics are missing (or ``None``)."""
    return {
        "before": before,
        "after": after,
        "delta": metric_delta(before, after),
        "totals_delta": metric_delta(metric_totals(before), metric_totals(after)),
        "note": note,
    }


def service_metadata(host: str) -> dict[str, Any] | None:
    """``GET host/metadata`` as a dict (what model and variant answered), or ``None``."""
    try:
        status, body = http_get(f"{host}/metadata", timeout_s=10.0)
        data = json.loads(body) if status == 200 else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
