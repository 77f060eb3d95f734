"""Zero dropped requests, proven on a real ``bentoml serve`` (two API workers) under real Locust load: the alias
is promoted to a second version and rolled back mid-run; no request fails, responses name the new version within
seconds of each move, and the server's memory returns near its one-model level once the old model is released.
Then the same moves through a separate model service (``serve.model_service``)."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from serving_support import running_server

from edge.errors import PackageError

NAME = "serving-tiny"
#: How long responses may keep naming the old version after the alias moved (poll + load + warm-up + drain).
SWITCH_S = 10.0


def _register(served, folder: Path, version: str) -> str:
    from edge.manifest import read_manifest, write_manifest
    from training.registry import register

    pkg = folder / version
    shutil.copytree(served.package, pkg)
    manifest = read_manifest(pkg)
    manifest.version = version
    write_manifest(pkg, manifest)
    return register(pkg)


def _classify(url: str, png: bytes) -> str:
    boundary = "shipyardlifecycle"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/classify", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["model"]


class Probe(threading.Thread):
    """Asks the server which version answers, every 100 ms, beside the load."""

    def __init__(self, url: str, png: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.png = url, png
        self.seen: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                self.seen.append((time.monotonic(), _classify(self.url, self.png)))
            except Exception as exc:
                self.errors.append(repr(exc))

    def switched(self, tag: str, since: float) -> float:
        """Seconds from ``since`` until every later answer named ``tag``."""
        after = [(t, m) for t, m in self.seen if t >= since]
        last_other = max((t for t, m in after if m != tag), default=since)
        assert any(m == tag and t > last_other for t, m in after), (tag, after[-5:])
        return last_other - since


def _rss_mb(server) -> float:
    total = 0
    for pid in server.pids():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 1e6


def test_no_request_is_dropped_across_a_promote_and_a_rollback(served, images, small_demo_dir, tmp_path):
    import shipyard
    from serving.loadtest.config import LoadTestConfig
    from serving.loadtest.runner import run_loadtest
    from serving.threads import MONITOR, thread_cpu

    v2 = _register(served, tmp_path, "load-v2")
    shipyard.promote(served.tag, "live")
    with running_server(NAME, tmp_path / "server.log", alias="live", alias_poll_s=0.5, workers=2) as server:
        for _ in range(20):
            assert _classify(server.url, images.png[0]) == served.tag
        one_model = _rss_mb(server)
        probe = Probe(server.url, images.png[0])
        probe.start()
        load = LoadTestConfig(host=server.url, users=8, spawn_rate=8, duration_s=26, think_min_s=0, think_max_s=0,
                              batch_share=0.2, images=str(small_demo_dir), max_images=60)
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(run=run_loadtest(load, tmp_path / "locust")))
        runner.start()
        time.sleep(8)
        promoted = time.monotonic()
        shipyard.promote(v2, "live")
        time.sleep(9)
        rolled_back = time.monotonic()
        shipyard.rollback(NAME, "live")
        runner.join(120)
        time.sleep(1.0)
        probe.stop.set()
        probe.join(10)
        after = _rss_mb(server)
        monitors = [pid for (pid, _), (name, _) in thread_cpu(server.pids()).items() if name == MONITOR]
        meta = json.loads(urllib.request.urlopen(server.url + "/metadata", timeout=10).read())

    summary = outcome["run"].summary
    assert summary["requests"] > 200 and summary["failures"] == 0, (summary["failures"], summary["errors"])
    assert not probe.errors, probe.errors[:3]
    seen_v2 = [t for t, m in probe.seen if m == v2]
    assert seen_v2 and seen_v2[0] - promoted < SWITCH_S, "v2 never answered within the bound"
    assert max(seen_v2) < rolled_back + SWITCH_S
    assert probe.switched(served.tag, rolled_back) < SWITCH_S
    assert meta["model"] == served.tag and meta["serving"]["lifecycle"]["swaps"] == 2
    # the old versions are released: one running monitor thread per API worker (a released version's stops)
    assert len(monitors) == 2 and len(set(monitors)) == 2, monitors
    # and memory stays near one model's level. Allowed: allocator growth under load and per-request bookkeeping
    # that grows until it reaches its caps (the feedback store keeps up to feedback_capacity predictions in
    # memory; measured on the MobileNetV2 service under steady load: about 1 KB per request, before and after
    # this check was written)
    assert after < one_model * 1.25 + 80, (one_model, after)
    print(f"one model {one_model:.0f} MB, after promote+rollback {after:.0f} MB; locust {summary['requests']} "
          f"requests, {summary['throughput_rps']:.0f} req/s, p99 {summary['latency_ms']['p99']:.0f} ms")


def test_a_model_service_follows_the_alias_too(served, images, tmp_path):
    import shipyard

    v3 = _register(served, tmp_path, "load-v3")
    shipyard.promote(served.tag, "svc")
    with running_server(NAME, tmp_path / "svc.log", alias="svc", alias_poll_s=0.3, model_service=True) as server:
        assert _classify(server.url, images.png[0]) == served.tag
        with pytest.raises(PackageError, match="runs no shadow"):
            shipyard.promote(v3, "svc", require_shadow_agreement=0.98, server=server.url)
        shipyard.promote(v3, "svc")
        deadline = time.monotonic() + SWITCH_S
        while _classify(server.url, images.png[0]) != v3:
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.1)
        shipyard.rollback(NAME, "svc")
        deadline = time.monotonic() + SWITCH_S
        while _classify(server.url, images.png[0]) != served.tag:
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.1)
