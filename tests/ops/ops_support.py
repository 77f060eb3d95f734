"""Fixtures and helpers of the operations tests (re-exported by conftest.py): a tiny model registered for
serving, real digit images, and the checks that the Debian tools the tests drive (podman, Prometheus) are there."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS_NAME = "ops-tiny"
#: The variants the server serves by default: fp32 TFLite and the one that also outputs the embedding (drift).
OPS_VARIANTS = ["fp32.tflite", "fp32_embedding.tflite"]


@dataclass(frozen=True)
class OpsModel:
    """A registered package: its tag, its folder, its labels and the model store that holds it."""

    tag: str
    package: Path
    labels: list[str]
    store: Path


@pytest.fixture(scope="session")
def ops_model(tiny_package, tmp_path_factory) -> OpsModel:
    """The shared tiny package with the served variants, registered as ``ops-tiny:v1`` in the session's store."""
    from _support import optimized_copy

    pkg, tag, labels = optimized_copy(tiny_package, tmp_path_factory.mktemp("ops"), OPS_VARIANTS, OPS_NAME)
    return OpsModel(tag=tag, package=pkg, labels=labels, store=Path(os.environ["BENTOML_HOME"]) / "models")


@pytest.fixture(scope="session")
def digit_pngs(small_demo_dir) -> list[bytes]:
    """Real digit images of the package's classes (PNG bytes), classes interleaved."""
    per_class = [sorted((small_demo_dir / label).glob("*.png")) for label in ("0", "1", "2")]
    return [p.read_bytes() for group in zip(*per_class, strict=False) for p in group]


def tool_or_skip(name: str, install: str = "bash scripts/system-deps.sh") -> str:
    """The path of the executable ``name``; skip the test (saying how to get it) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed; {install} installs it (as root, with apt-get)")
    return path


# ------------------------------------------------------------------------------------------ Prometheus


@dataclass(frozen=True)
class Prometheus:
    """A Prometheus server on 127.0.0.1 started by :func:`prometheus_server`."""

    url: str

    def get(self, path: str, **params: str) -> object:
        """``GET path?params`` of the HTTP API: the ``data`` of its answer.

        Raises:
            AssertionError: the API answered an error.
        """
        import json
        import urllib.parse

        from serving.process import http_get

        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}{path}{query}", timeout_s=5.0)
        answer = json.loads(body)
        assert status == 200 and answer.get("status") == "success", (status, answer)
        return answer["data"]

    def value(self, expr: str) -> float | None:
        """The value of an instant query returning one sample (None when it returns none)."""
        result = self.get("/api/v1/query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict]:
        """The active alerts (pending or firing) called ``name``."""
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"].get("alertname") == name]


def prometheus_config(target: str, rules: Path, interval_s: int = 1) -> dict:
    """deploy/prometheus/prometheus.example.yml with ``target`` scraped, ``rules`` loaded and every interval
    ``interval_s`` (so that a test sees alerts within seconds of the metrics)."""
    import yaml

    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.example.yml").read_text())
    config["global"] = {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"}
    config["rule_files"] = [str(rules)]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    return config


@contextlib.contextmanager
def prometheus_server(config: dict, workdir: Path, timeout_s: float = 60.0) -> Iterator[Prometheus]:
    """A real ``prometheus`` on a free port of 127.0.0.1 with ``config``, ready, for the block; stopped however
    the block ends (its log is ``workdir/prometheus.log``)."""
    import subprocess

    import yaml

    from serving.process import free_port, stop_process_group, wait_until_ready

    binary = tool_or_skip("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, timeout_s, proc=proc, log=log, path="/-/ready")
        yield Prometheus(url)
    finally:
        stop_process_group(proc, grace_s=10.0)
