"""``shipyard loadtest``: Locust scenarios, pass/fail limits, reports, distributed mode and the batching sweep.

Two kinds of target, both on 127.0.0.1:

- a stand-in HTTP server in a thread of this process, with the service's HTTP surface and a behaviour the
  test chooses (healthy, slow, failing with 500, or answering 200 with malformed bodies). It is a legitimate
  "failing service" that makes the limits and the response checks fail on purpose;
- the real service: the tiny trained package, optimized to ``fp32.tflite``, registered, and started by
  ``shipyard loadtest --serve TAG`` itself.

Every run is bounded (a few users, a few seconds) and every process and thread started here is stopped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _support import run_cli

LABELS = ["0", "1", "2"]
SHORT = ["--duration", "4", "--users", "4", "--spawn-rate", "4", "--think", "0.05,0.1", "--quiet"]


# --- a stand-in service ------------------------------------------------------------------------------------


class StandIn:
    """The service's HTTP surface with a chosen behaviour: ok, slow, error (500), malformed (bad 200s) or
    serial (one request at a time, ``delay_s`` each: a capacity of ``1 / delay_s`` requests/s, so that latency
    grows with the load past it, as a saturated service's does)."""

    def __init__(self, behaviour: str = "ok", delay_s: float = 0.0) -> None:
        self.behaviour = behaviour
        self.delay_s = delay_s
        self.predictions = 0
        self.lock = threading.Lock()
        self.serial = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path in ("/readyz", "/livez"):
                    self._send(200, b"ok", "text/plain")
                elif self.path == "/metadata":
                    self._send(200, json.dumps({"labels": LABELS, "model": "standin:v1"}).encode())
                elif self.path == "/metrics":
                    text = (
                        "# TYPE shipyard_predictions_total counter\n"
                        f'shipyard_predictions_total{{model="standin"}} {stand_in.predictions}.0\n'
                        "bentoml_other_metric 3.0\n"
                    )
                    self._send(200, text.encode(), "text/plain; version=0.0.4")
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ctype = self.headers.get("Content-Type", "")
                match = re.search(r"boundary=(\S+)", ctype)
                if not ctype.startswith("multipart/form-data") or not match:
                    self._send(400, b'{"error": "send the image as multipart/form-data"}')
                    return
                parts = body.count(b'; filename="')  # file parts; top_k is a plain form value
                if stand_in.behaviour == "serial":
                    with stand_in.serial:
                        time.sleep(stand_in.delay_s)
                elif stand_in.delay_s:
                    time.sleep(stand_in.delay_s)
                if stand_in.behaviour == "error":
                    self._send(500, b'{"error": "internal error"}')
                    return
                with stand_in.lock:
                    stand_in.predictions += parts
                if self.path == "/classify":
                    self._send(200, json.dumps(stand_in.result()).encode())
                elif self.path == "/classify_batch":
                    self._send(
                        200, json.dumps({"results": [stand_in.result() for _ in range(parts)]}).encode()
                    )
                else:
                    self._send(404, b'{"error": "not found"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def result(self) -> dict:
        """One classification; ``malformed`` gives probabilities that sum to 1.5."""
        probs = [0.7, 0.2, 0.1] if self.behaviour != "malformed" else [0.9, 0.4, 0.2]
        return {
            "predictions": [{"label": lab, "probability": p} for lab, p in zip(LABELS, probs, strict=True)],
            "model": "standin:v1",
            "variant": "model.onnx",
            "request_id": "r",
            "latency_ms": 1.0,
        }


@pytest.fixture
def stand_in(request) -> Iterator[StandIn]:
    """A stand-in service in a thread; ``@pytest.mark.parametrize('stand_in', [...], indirect=True)``."""
    behaviour, delay = getattr(request, "param", ("ok", 0.0))
    server = StandIn(behaviour, delay)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(10)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# --- pure pieces ------------------------------------------------------------------------------------------------


def test_limits_pass_fail_and_empty_runs():
    from serving.loadtest import check_limits

    totals = {"requests": 100, "p95_ms": 80.0, "fail_ratio": 0.02, "rps": 12.0}
    checks = {c.name: c for c in check_limits(totals, max_p95_ms=100, max_fail_ratio=0.01, min_rps=10)}
    assert checks["p95 latency (ms)"].passed and checks["throughput (req/s)"].passed
    assert not checks["failure ratio"].passed and checks["failure ratio"].measured == 0.02
    assert check_limits(totals) == []  # nothing set, nothing checked
    empty = check_limits({"requests": 0, "p95_ms": None, "fail_ratio": 0.0, "rps": 0.0}, max_fail_ratio=0.5)
    assert [c.passed for c in empty] == [False]


def test_scenarios_and_user_classes_agree_with_the_config():
    import typing

    from serving.loadtest import LOCUSTFILE, SCENARIOS
    from serving.loadtest.config import LoadTestConfig

    assert list(SCENARIOS) == list(typing.get_args(LoadTestConfig.model_fields["scenario"].annotation))
    source = LOCUSTFILE.read_text()
    for classes in SCENARIOS.values():
        for name in classes:
            assert f"class {name}(" in source


def test_sweep_grid_recommendation_and_settings_check():
    from serving.config import ServeConfig
    from serving.loadtest import recommend, sweep_grid
    from serving.loadtest.sweep import applied_settings, point_name

    base = ServeConfig(model="m:v", variant="int8.tflite")
    grid = sweep_grid(base, [1, 8], [50, 1000], [1, 2])
    assert [point_name(p) for p in grid][:3] == ["b1-l50-w1", "b1-l1000-w1", "b8-l50-w1"] and len(grid) == 8
    assert (grid[2].max_batch_size, grid[2].max_latency_ms, grid[2].batching) == (8, 50, True)
    assert {(p.model, p.variant) for p in grid} == {("m:v", "int8.tflite")}  # the rest of the base config stays
    with pytest.raises(ValueError, match="batch sizes"):
        sweep_grid(base, [0], [50], [1])
    rows = [
        {"point": "a", "rps": 90.0, "p95_ms": 40, "meets_limits": True},
        {"point": "b", "rps": 150.0, "p95_ms": 300, "meets_limits": False},  # fastest, but misses
        {"point": "c", "rps": 120.0, "p95_ms": 90, "meets_limits": True},
        {"point": "d", "rps": 120.0, "p95_ms": 60, "meets_limits": True},  # tie on rps: lower p95 wins
    ]
    assert recommend(rows)["point"] == "d"
    assert recommend([rows[1]]) is None
    served = {"serving": {"max_batch_size": 16, "max_latency_ms": 50, "workers": 1}}
    assert "max_batch_size=16 (asked 8)" in applied_settings(grid[2], served)
    assert applied_settings(grid[0], {"serving": {"max_batch_size": 1, "max_latency_ms": 50}}) is None


def test_stepped_schedule_stop_rules_and_saturation():
    from serving.loadtest.config import LoadTestConfig
    from serving.loadtest.steps import saturation, snapshot, step_count, step_load, step_row, stop_reason

    ramp = LoadTestConfig(mode="ramp", users=7, step_users=3, max_p95_ms=100)
    assert step_count(ramp) == 3 and [step_load(ramp, k) for k in range(3)] == [(3, None), (6, None), (7, None)]
    rate = LoadTestConfig(mode="rate", step_rps=5, max_rps=12, user_rps=2)
    assert step_count(rate) == 3 and [step_load(rate, k) for k in range(3)] == [(3, 5), (5, 10), (6, 12)]
    assert not LoadTestConfig().stepped and ramp.stepped

    def row(config, k, requests, seconds, times, failures=0):
        return step_row(config, k, snapshot(0, 0, 0, {}), snapshot(seconds, requests, failures, times))

    first = row(ramp, 0, 100, 10, {40: 90, 90: 10})
    assert (first["rps"], first["p50_ms"], first["p95_ms"], first["broke"]) == (10.0, 40.0, 90.0, None)
    assert stop_reason(ramp, [first]) is None
    slow = row(ramp, 1, 150, 10, {40: 50, 300: 100})
    assert slow["broke"] == "p95 300 ms > 100 ms" and "broke the limit" in stop_reason(ramp, [first, slow])
    sat = saturation(ramp, [first, slow], stop_reason(ramp, [first, slow]))
    assert sat["found"] and (sat["rps"], sat["users"], sat["step"], sat["peak_rps"]) == (10.0, 3, 1, 15.0)
    failing = row(ramp, 0, 100, 10, {40: 100}, failures=5)
    assert "failure ratio" in failing["broke"] and saturation(ramp, [failing], "x")["rps"] is None
    flat = [row(ramp, k, 100 + k, 10, {40: 10}) for k in range(3)]  # no growth: stops after PATIENCE steps
    assert "stopped growing" in stop_reason(ramp.model_copy(update={"users": 100}), flat)
    short = [row(rate, 0, 20, 10, {40: 20})]  # 2 req/s delivered of 5 asked
    assert "delivered 2.0 of 5 req/s" in stop_reason(rate, short)
    capped = [row(ramp, k, 100 * (k + 1), 10, {40: 10}) for k in range(3)]
    assert "reached the cap" in stop_reason(ramp, capped)
    assert not saturation(ramp, capped, stop_reason(ramp, capped))["found"]


def test_pareto_front_keeps_the_undominated_points():
    from serving.loadtest.sweep import pareto_front

    rows = [
        {"point": "a", "rps": 50.0, "p95_ms": 20.0},
        {"point": "b", "rps": 80.0, "p95_ms": 40.0},
        {"point": "c", "rps": 70.0, "p95_ms": 60.0},  # b has more throughput at a lower p95
        {"point": "d", "rps": 90.0, "p95_ms": 200.0},
        {"point": "e", "rps": 0.0, "p95_ms": None},  # did not run
    ]
    assert [r["point"] for r in pareto_front(rows)] == ["a", "b", "d"]


def test_prometheus_text_is_parsed_for_shipyard_samples_only():
    from serving.loadtest import parse_metrics
    from serving.loadtest.metrics import metric_delta

    text = (
        "# HELP shipyard_latency_seconds Latency.\n# TYPE shipyard_latency_seconds histogram\n"
        'shipyard_latency_seconds_bucket{le="0.01",stage="total"} 4.0\n'
        'shipyard_latency_seconds_count{stage="total"} 5.0\n'
        "shipyard_drift_score 1.5e-01\nbentoml_requests_total 9.0\n"
        'shipyard_errors_total{kind="decode"} 2.0 1700000000000\n'
    )
    got = parse_metrics(text)
    assert got == {
        'shipyard_latency_seconds_bucket{le="0.01",stage="total"}': 4.0,
        'shipyard_latency_seconds_count{stage="total"}': 5.0,
        "shipyard_drift_score": 0.15,
        'shipyard_errors_total{kind="decode"}': 2.0,
    }
    delta = metric_delta({"shipyard_drift_score": 0.1}, got)
    assert (
        delta["shipyard_drift_score"] == pytest.approx(0.05)
        and delta['shipyard_errors_total{kind="decode"}'] == 2
    )


def test_the_locust_processes_read_the_one_config():
    from edge.config import ConfigError
    from serving.loadtest import checks
    from serving.loadtest.config import LoadTestConfig

    config = LoadTestConfig(images="/data", think_min_s=0, think_max_s=0, request_timeout_s=600, bad_share=0.9)
    assert LoadTestConfig.from_env(config.to_env()) == config and list(config.to_env()) == [LoadTestConfig.ENV]
    assert LoadTestConfig.from_env({}) == LoadTestConfig()
    with pytest.raises(ConfigError, match=r"SHIPYARD_LOADTEST_CONFIG.*batch_images"):
        LoadTestConfig.from_env({LoadTestConfig.ENV: '{"batch_images": 65}'})
    assert not hasattr(checks, "Settings")  # no second codec with bounds of its own


def test_response_checks_catch_malformed_bodies():
    from serving.loadtest import checks as check

    good = {
        "predictions": [{"label": "0", "probability": 0.6}, {"label": "1", "probability": 0.4}],
        "model": "m:v",
        "variant": "model.onnx",
        "request_id": "x",
        "latency_ms": 1.0,
    }
    assert check.check_result(good, ["0", "1"]) is None
    assert "sum to" in check.check_result(
        {**good, "predictions": [{"label": "0", "probability": 0.6}, {"label": "1", "probability": 0.6}]},
        None,
    )
    assert "not 1" in check.check_result(
        {**good, "predictions": [{"label": "0", "probability": 0.5}, {"label": "1", "probability": 0.3}]},
        ["0", "1"],
    )
    assert "lacks request_id" in check.check_result(
        {k: v for k, v in good.items() if k != "request_id"}, None
    )
    assert "not one of" in check.check_result(good, ["cat", "dog"])
    assert "not sorted" in check.check_result({**good, "predictions": good["predictions"][::-1]}, None)
    assert check.check_batch({"results": [good, good]}, 2, None) is None
    assert "1 results for 2 images" in check.check_batch({"results": [good]}, 2, None)
    assert check.check_batch([good, good, good], 3, None) is None
    png = check.huge_png_header()
    from PIL import Image

    with pytest.raises(Image.DecompressionBombError):  # the header claims 10 gigapixels
        Image.open(__import__("io").BytesIO(png))


def _loaded(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code + "; import sys; print(sorted(sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])


def test_the_verb_imports_neither_tensorflow_nor_the_service():
    heavy = ("tensorflow", "bentoml", "locust", "gevent")
    verb = _loaded("import shipyard.cli as c; c.build_parser().parse_known_args(['loadtest', '--host', 'x'])")
    assert not [m for m in verb if m.split(".")[0] in heavy or m == "serving.service"]
    tester = _loaded("import serving.loadtest.cli as c")
    assert not [m for m in tester if m.split(".")[0] in (*heavy, "training") or m == "serving.service"]


def test_loadtest_help_is_forwarded():
    done = run_cli("loadtest", "--help", timeout=60)
    assert done.returncode == 0 and "--max-p95-ms" in done.stdout and "sweep" in done.stdout
    done = run_cli("loadtest", "--host", "http://127.0.0.1:9", "--set", "train.epochs=1", timeout=60)
    assert done.returncode == 2 and "loadtest.KEY=VALUE only" in done.stderr


def test_bad_flags_and_missing_images_are_clear_errors(tmp_path):
    done = run_cli("loadtest", "--host", "http://127.0.0.1:9", "--images", str(tmp_path / "nope"), timeout=60)
    assert done.returncode == 2 and "nope" in done.stderr and "does not exist" in done.stderr
    done = run_cli("loadtest", "--think", "1,0.5", "--images", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "swap" in done.stderr
    done = run_cli("loadtest", "--set", "loadtest.userz=3", timeout=60)
    assert done.returncode == 2 and "userz" in done.stderr and "users" in done.stderr


def _parsed_config(*argv: str):
    import argparse

    from serving.loadtest.cli import _config, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return _config(parser.parse_args(list(argv)))


def test_stepped_and_distributed_flags_set_their_config_keys():
    config = _parsed_config("--mode", "rate", "--step-rps", "4", "--max-rps", "40", "--user-rps", "2",
                            "--step-duration", "3", "--remote-workers", "2", "--master-bind", "0.0.0.0",
                            "--master-port", "6000")
    assert (config.mode, config.step_rps, config.max_rps, config.user_rps, config.step_s) == ("rate", 4, 40, 2, 3)
    assert (config.remote_workers, config.master_bind_host, config.master_port) == (2, "0.0.0.0", 6000)
    assert _parsed_config("--mode", "ramp", "--step-users", "5").step_users == 5


def test_options_before_and_after_sweep_both_count():
    config = _parsed_config("--users", "3", "--max-p95-ms", "200", "--set", "loadtest.batch_share=0.5",
                            "sweep", "x:1", "--duration", "7", "--latencies-ms", "20", "--serve-workers", "1", "2")
    assert (config.users, config.max_p95_ms, config.batch_share, config.duration_s) == (3, 200, 0.5, 7)
    assert (config.sweep_latencies_ms, config.sweep_workers, config.serve_workers) == ([20], [1, 2], None)
    assert _parsed_config("--serve-workers", "2", "--host", "http://h").serve_workers == 2


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sweep", "x:1", "--latencies-ms", "5"], ("sweep_latencies_ms", "10")),
        (["sweep", "x:1", "--batch-sizes", "0"], ("sweep_batch_sizes", "1")),
        (["--think", "1,0.5"], ("swap",)),
        (["--mode", "rate", "--step-rps", "50", "--max-rps", "10"], ("step_rps", "max_rps")),
        (["--master-port", "0"], ("master_port",)),
    ],
)
def test_sweep_and_think_values_are_checked_by_the_config(argv, words):
    from edge.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _parsed_config(*argv)
    assert all(w in str(err.value) for w in words), str(err.value)


# --- against the stand-in ---------------------------------------------------------------------------------------


def test_clean_run_passes_and_writes_every_report(stand_in, small_demo_dir, tmp_path):
    out = tmp_path / "lt"
    done = run_cli(
        "loadtest",
        "--host",
        stand_in.url,
        "--images",
        str(small_demo_dir),
        *SHORT,
        "--batch-share",
        "0.3",
        "--max-p95-ms",
        "2000",
        "--max-fail-ratio",
        "0",
        "--min-rps",
        "1",
        "--output",
        str(out),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    s = _summary(out)
    names = {e["name"]: e for e in s["endpoints"]}
    assert names["/classify"]["requests"] > 5 and names["/classify_batch"]["requests"] > 0
    assert s["failures"] == 0 and s["passed"] and all(c["passed"] for c in s["limits"])
    assert s["requests"] == sum(e["requests"] for e in s["endpoints"]) and s["throughput_rps"] > 1
    for key in ("p50", "p95", "p99"):
        assert s["latency_ms"][key] is not None and names["/classify"][f"{key}_ms"] is not None
    # the server's shipyard_ metrics, before and after: 4 images per batch call, 1 per single call
    images = names["/classify"]["requests"] + 4 * names["/classify_batch"]["requests"]
    assert s["server_metrics"]["delta"]['shipyard_predictions_total{model="standin"}'] == images
    assert "bentoml_other_metric" not in s["server_metrics"]["after"]
    for name in ("locust_stats.csv", "locust_failures.csv", "report.html", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    assert "/classify_batch" in (out / "locust_stats.csv").read_text()
    assert re.search(r"p95 latency \(ms\)\s+<= 2000\s+\S+\s+pass", done.stdout), done.stdout


@pytest.mark.parametrize("stand_in", [("ok", 0.25)], indirect=True)
def test_a_slow_service_misses_the_latency_and_throughput_limits(stand_in, small_demo_dir, tmp_path):
    out = tmp_path / "lt"
    done = run_cli(
        "loadtest",
        "--host",
        stand_in.url,
        "--images",
        str(small_demo_dir),
        *SHORT,
        "--max-p95-ms",
        "100",
        "--min-rps",
        "1000",
        "--output",
        str(out),
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    s = _summary(out)
    checks = {c["name"]: c for c in s["limits"]}
    assert not checks["p95 latency (ms)"]["passed"] and checks["p95 latency (ms)"]["measured"] >= 250
    assert not checks["throughput (req/s)"]["passed"] and checks["failure ratio"]["passed"]
    assert re.search(r"p95 latency \(ms\)\s+<= 100\s+\S+\s+FAIL", done.stdout), done.stdout
    assert "limits missed: p95 latency" in done.stderr and "throughput" in done.stderr


@pytest.mark.parametrize("stand_in", [("error", 0.0), ("malformed", 0.0)], indirect=True)
def test_errors_and_malformed_200s_count_as_failures(stand_in, small_demo_dir, tmp_path):
    out = tmp_path / "lt"
    done = run_cli(
        "loadtest",
        "--host",
        stand_in.url,
        "--images",
        str(small_demo_dir),
        *SHORT,
        "--output",
        str(out),
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    s = _summary(out)
    assert s["requests"] > 0 and s["failures"] == s["requests"] - 1  # all but the /metadata request
    messages = " ".join(e["error"] for e in s["errors"])
    expected = "HTTP 500" if stand_in.behaviour == "error" else "malformed 200: probabilities sum to"
    assert expected in messages, messages
    assert "failure ratio" in done.stderr


def test_distributed_mode_takes_a_local_and_a_remote_worker(stand_in, small_demo_dir, tmp_path):
    """A master bound to an address with a fixed port, one worker it starts and one started apart (as on
    another host, here on loopback) with the command and config it prints: both send load."""
    import os

    from serving.loadtest.config import LoadTestConfig
    from serving.loadtest.locustrun import worker_command
    from serving.process import free_port, stop_process_group

    out, port = tmp_path / "lt", free_port()
    argv = [sys.executable, "-m", "serving.loadtest", "--host", stand_in.url, "--images", str(small_demo_dir),
            *(a for a in SHORT if a != "--quiet"), "--workers", "1", "--remote-workers", "1", "--master-bind", "127.0.0.1",
            "--master-port", str(port), "--output", str(out)]
    master = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = LoadTestConfig(images=str(small_demo_dir))
    remote = subprocess.Popen(worker_command(config, "127.0.0.1", port), env={**os.environ, **config.to_env()},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = master.communicate(timeout=180)
        remote.wait(30)
    finally:
        for proc in (master, remote):
            if proc.poll() is None:
                stop_process_group(proc, grace_s=5.0)
    assert master.returncode == 0, stdout + stderr
    s = _summary(out)
    assert s["locust_workers"] == 2 and s["workers_reporting"] == 2, s["worker_requests"]
    per_worker = list(s["worker_requests"].values())
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker)
    assert sum(per_worker) == s["requests"]
    assert "2 of 2 sent requests" in stdout
    assert f"--master-port {port}" in stderr and "--worker" in stderr  # what to run on the other hosts


@pytest.mark.parametrize("stand_in", [("serial", 0.05)], indirect=True)
@pytest.mark.parametrize(
    ("mode", "flags"),
    [
        ("ramp", ["--step-users", "2", "--users", "12"]),
        ("rate", ["--step-rps", "8", "--user-rps", "4", "--max-rps", "64"]),
    ],
)
def test_stepped_load_finds_the_saturation_of_a_serial_service(stand_in, small_demo_dir, tmp_path, mode, flags):
    """A service that answers one request at a time (about 20 req/s): the load grows step by step until p95
    breaks the limit, throughput stops growing or the asked rate is not delivered; the saturation step and
    the steps are reported."""
    out = tmp_path / "lt"
    done = run_cli(
        "loadtest", "--host", stand_in.url, "--images", str(small_demo_dir), "--mode", mode, *flags,
        "--step-duration", "2", "--duration", "30", "--batch-share", "0", "--max-p95-ms", "250", "--quiet",
        "--output", str(out), timeout=180,
    )
    s = _summary(out)
    sat, steps = s["saturation"], s["steps"]
    assert sat["found"] and sat["stop_reason"], sat
    assert len(steps) >= 2 and steps[-1]["step"] == len(steps) and steps[0]["step"] == 1
    if sat["rps"] is not None:  # a step within the limits: that is what the limits judged
        assert done.returncode == 0, done.stdout + done.stderr
        assert sat["rps"] == max(r["rps"] for r in steps if not r["broke"])
        assert "Saturation: " in done.stdout and "Saturation: " in (out / "summary.md").read_text()
    if mode == "rate":
        assert [r["target_rps"] for r in steps] == [8.0 * (k + 1) for k in range(len(steps))]
        assert [r["users"] for r in steps] == [2 * (k + 1) for k in range(len(steps))]
    else:
        assert [r["users"] for r in steps] == [2 * (k + 1) for k in range(len(steps))]


# --- against the real service -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_tag(tiny_package, tmp_path_factory) -> str:
    """The tiny package with its ``fp32.tflite`` variant (the one served by default) built, registered in the
    test's model store."""
    import shutil

    from edge.manifest import read_manifest
    from training.optimize import optimize_config_for, run_optimize
    from training.registry import update_registered

    pkg = tmp_path_factory.mktemp("served") / "pkg"
    shutil.copytree(tiny_package, pkg)
    config = optimize_config_for(read_manifest(pkg), None, ["optimize.latency=false"])
    outcome = run_optimize(pkg, config, variants=["fp32.tflite"])
    assert outcome.exit_code == 0, [(r.key, r.status, r.reason) for r in outcome.results]
    return update_registered(pkg)


def _port_closed(url: str) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parsed.hostname, parsed.port)) != 0


def test_real_service_answers_bad_inputs_with_4xx_while_good_traffic_succeeds(
    served_tag, small_demo_dir, tmp_path
):
    out = tmp_path / "lt"
    done = run_cli(
        "loadtest",
        "--serve",
        served_tag,
        "--scenario",
        "bad-inputs",
        "--images",
        str(small_demo_dir),
        *SHORT,
        "--duration",
        "6",
        "--max-fail-ratio",
        "0",
        "--max-p95-ms",
        "5000",
        "--output",
        str(out),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr + (out / "server.log").read_text()[-3000:]
    s = _summary(out)
    rows = {e["name"]: e for e in s["endpoints"]}
    kinds = {"corrupt", "empty", "text", "huge_pixels", "not_multipart"}
    bad = {name for name in rows if "[bad: " in name}
    assert {n.split("[bad: ")[1].rstrip("]") for n in bad} == kinds, sorted(rows)
    assert all(rows[n]["failures"] == 0 for n in rows) and s["failures"] == 0
    good = rows["/classify"]["requests"]
    batch = rows.get("/classify_batch", {"requests": 0})["requests"]
    assert good > 10
    # the server counted exactly the good images as predictions, and the bad ones as errors
    totals = s["server_metrics"]["totals_delta"]
    assert totals["shipyard_predictions_total"] == good + 4 * batch
    assert totals.get("shipyard_errors_total", 0) >= sum(
        rows[n]["requests"] for n in bad if "not_multipart" not in n
    )
    assert s["metadata"]["model"] == served_tag and s["server"]["tag"] == served_tag
    assert _port_closed(s["host"]), "the service started for the test is still listening"


def test_a_service_that_cannot_start_is_a_clear_error(small_demo_dir, tmp_path):
    done = run_cli(
        "loadtest",
        "--serve",
        "nosuchmodel:v9",
        "--images",
        str(small_demo_dir),
        *SHORT,
        "--output",
        str(tmp_path / "lt"),
        timeout=180,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "exited with status" in done.stderr and "nosuchmodel" in done.stderr


def test_sweep_over_two_batch_sizes_recommends_the_fastest_point_meeting_the_limits(
    served_tag, small_demo_dir, tmp_path
):
    out = tmp_path / "sweep"
    done = run_cli(
        "loadtest",
        "sweep",
        served_tag,
        "--batch-sizes",
        "1",
        "8",
        "--latencies-ms",
        "1000",
        "--images",
        str(small_demo_dir),
        *SHORT,
        "--step-duration",
        "2",
        "--max-fail-ratio",
        "0",
        "--output",
        str(out),
        timeout=500,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "sweep.json").read_text())
    rows = report["rows"]
    assert [r["point"] for r in rows] == ["b1-l1000-w1", "b8-l1000-w1"]
    assert all(r["error"] is None and r["requests"] > 0 for r in rows), rows
    meeting = [r for r in rows if r["meets_limits"]]
    assert report["recommended"]["point"] == max(meeting, key=lambda r: r["rps"])["point"]
    for r in rows:  # each point really ran with its settings (the server reports them in /metadata)
        point = json.loads((out / r["point"] / "summary.json").read_text())
        assert point["metadata"]["serving"]["max_batch_size"] == r["max_batch_size"]
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("point,max_batch_size,max_latency_ms")
    assert "Recommended: **" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"recommended: max_batch_size={report['recommended']['max_batch_size']}" in done.stdout
    # the sweep ramps users (its default mode) and re-measures the recommended point at its saturation load
    assert report["mode"] == "ramp" and all(r["mode"] == "ramp" and r["users"] for r in rows)
    confirmation = report["confirmation"]
    assert confirmation["point"] == report["recommended"]["point"] and confirmation["requests"] > 0
    assert confirmation["users"] == report["recommended"]["users"] and confirmation["ratio_to_sweep"] > 0
    assert "re-measured: " in done.stdout and "Re-measured at its saturation load" in (out / "sweep.md").read_text()
