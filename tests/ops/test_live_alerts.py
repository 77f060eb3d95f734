"""A real ``shipyard serve`` scraped by a real Prometheus with deploy/prometheus/alerts.yml loaded as it is:
every metric the rules and the Grafana dashboard query exists on the live ``/metrics``; in-distribution
traffic raises no drift alert, darkened images make ShipyardDriftDetected fire within a bounded time.

Prometheus scrapes and evaluates every second; the server's drift window is 50 requests and a signal reports
drift after 2 flagged evaluations in a row (``alarm_after``, as the README recommends against false alarms).
Everything runs on 127.0.0.1 and is stopped when the module ends."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from ops_support import ROOT, Prometheus, prometheus_config, prometheus_server, tool_or_skip

from serving.config import MonitorConfig, ServeConfig
from serving.process import ServerProcess, free_port

pytestmark = pytest.mark.network

WINDOW = 50
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "shipyard.json"
DRIFT_ALERT = "ShipyardDriftDetected"
#: Longest wait for the drift alert to fire once shifted traffic was sent: the rule's `for: 1m`, plus
#: scrapes, evaluations and this 2-core machine's slack.
FIRE_WITHIN_S = 150.0
#: Metrics that appear on /metrics only once the event they count happened (not initialized to 0): their
#: rules and panels are right, a live server cannot show them without the event.
FIRST_EVENT_ONLY = {
    "shipyard_monitoring_errors_total": "a failure inside monitoring",
    "shipyard_drift_alarms_total": "a drift alarm (checked once the drift alert fired)",
}
#: Series Prometheus makes itself, not the server.
PROMETHEUS_OWN = {"up"}


@dataclass(frozen=True)
class Stack:
    server: str
    prometheus: Prometheus


@pytest.fixture(scope="module")
def stack(ops_model, tmp_path_factory) -> Iterator[Stack]:
    """The server (drift window of 50 requests, 2 flagged evaluations to report drift) and Prometheus scraping
    it, both ready."""
    tool_or_skip("prometheus")
    work = tmp_path_factory.mktemp("live")
    config = ServeConfig(
        model=ops_model.tag,
        host="127.0.0.1",
        port=free_port(),
        monitor=MonitorConfig(window=WINDOW, alarm_after=2),
    )
    with ServerProcess(config, work / "server.log", cwd=ROOT) as server:
        server.wait_ready(180.0)
        target = f"{config.host}:{config.port}"
        with prometheus_server(prometheus_config(target, RULES), work / "prometheus") as prom:
            yield Stack(server.url, prom)


def classify(url: str, png: bytes) -> dict:
    resp = requests.post(f"{url}/classify", files={"image": ("digit.png", png, "image/png")}, timeout=30)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json()


def darken(png: bytes, factor: float = 0.3) -> bytes:
    """The image with its brightness scaled by ``factor`` (a shift the input signal must see)."""
    from PIL import Image, ImageEnhance

    out = io.BytesIO()
    ImageEnhance.Brightness(Image.open(io.BytesIO(png)).convert("RGB")).enhance(factor).save(out, "PNG")
    return out.getvalue()


def metric_names(exposition: str) -> set[str]:
    """The sample names on a /metrics page."""
    return {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and line[0] != "#"}


def queried_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels and keywords aside)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr))
    return {n for n in names if "_" in n or n in PROMETHEUS_OWN} - {"and", "or", "unless", "bool", "offset"}


def rule_metrics() -> set[str]:
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    return set().union(*(queried_metrics(r["expr"]) for g in groups for r in g["rules"]))


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return set().union(*(re.findall(r"label_values\((\w+)", e) or queried_metrics(e) for e in exprs))


def test_queried_metrics_parser():
    assert queried_metrics(
        'histogram_quantile(0.95, sum by (job, le) (rate(shipyard_latency_seconds_bucket{stage="total"}[5m])))'
        " > 0.5 and on (job) up == 1"
    ) == {"shipyard_latency_seconds_bucket", "up"}


def test_every_metric_the_rules_and_the_dashboard_query_exists_on_a_live_server(stack, digit_pngs):
    before = metric_names(requests.get(f"{stack.server}/metrics", timeout=10).text)
    answer = classify(stack.server, digit_pngs[0])
    requests.post(f"{stack.server}/classify", files={"image": ("x.png", b"not an image")}, timeout=10)
    feedback = {"request_id": answer["request_id"], "label": answer["predictions"][0]["label"]}
    assert requests.post(f"{stack.server}/feedback", json=feedback, timeout=10).status_code == 200
    after = metric_names(requests.get(f"{stack.server}/metrics", timeout=10).text)

    wanted = rule_metrics() | dashboard_metrics()
    assert {"shipyard_drift_detected", "bentoml_service_request_total", "shipyard_live_accuracy"} <= wanted
    missing = wanted - after - PROMETHEUS_OWN - set(FIRST_EVENT_ONLY)
    assert missing == set(), f"queried but not on a live server's /metrics: {sorted(missing)}"
    print("appear only after their first event:", sorted((wanted & after) - before), sorted(FIRST_EVENT_ONLY))
    # Prometheus scrapes the server and loaded every rule
    deadline = time.monotonic() + 30
    while stack.prometheus.value('up{job="shipyard"}') != 1.0:
        assert time.monotonic() < deadline, "Prometheus never scraped the server"
        time.sleep(0.5)
    rules = [r for g in stack.prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
    import yaml

    in_file = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert all(r["health"] == "ok" for r in rules) and len(rules) == in_file, rules


def wait_for_evaluations(stack: Stack, count: int, timeout_s: float = 60.0) -> None:
    """Wait until Prometheus has scraped ``count`` drift evaluations, plus a few rule evaluations."""
    deadline = time.monotonic() + timeout_s
    while (stack.prometheus.value("shipyard_drift_evaluations_total") or 0) < count:
        assert time.monotonic() < deadline, (
            f"Prometheus did not see {count} drift evaluations in {timeout_s} s"
        )
        time.sleep(0.5)
    time.sleep(3.0)


@pytest.mark.timeout(420)
def test_drift_alert_fires_on_shifted_traffic_and_not_before(stack, digit_pngs):
    prom = stack.prometheus
    # in distribution: a few full windows of held digits, no alert of any state
    for png in digit_pngs[: 3 * WINDOW]:
        classify(stack.server, png)
    evaluated = int(prom.value("shipyard_drift_evaluations_total") or 0)
    wait_for_evaluations(stack, max(evaluated, 2))
    assert prom.alerts(DRIFT_ALERT) == [], prom.alerts(DRIFT_ALERT)
    assert prom.value("max(shipyard_drift_detected)") == 0.0

    # shifted: the same digits, darkened
    for png in digit_pngs[3 * WINDOW : 6 * WINDOW]:
        classify(stack.server, darken(png))
    sent = time.monotonic()
    states: dict[str, float] = {}
    while "firing" not in states:
        for alert in prom.alerts(DRIFT_ALERT):
            states.setdefault(alert["state"], time.monotonic() - sent)
        assert time.monotonic() - sent < FIRE_WITHIN_S, (
            f"{DRIFT_ALERT} did not fire within {FIRE_WITHIN_S:.0f} s of shifted traffic (states seen: {states}); "
            f"/drift says {requests.get(stack.server + '/drift', timeout=10).text[:1500]}"
        )
        time.sleep(1.0)
    firing = [a for a in prom.alerts(DRIFT_ALERT) if a["state"] == "firing"]
    signals = {a["labels"]["signal"] for a in firing}
    assert "input" in signals, firing
    assert all(a["labels"]["severity"] == "warning" and a["annotations"]["summary"] for a in firing), firing
    print(
        f"drift alert: pending after {states.get('pending', 0):.0f} s, firing after {states['firing']:.0f} s on {signals}"
    )
