"""Fixtures of the service tests: a served package in the model store, test images, the service in
process (Starlette's TestClient) and as a real ``bentoml serve`` on 127.0.0.1.

The package is the shared tiny trained model (3 digit classes, 32 px), optimized to the variants the
service runs (``fp32.tflite`` and ``fp32_embedding.tflite``, served by default, ``model.onnx``,
``model_embedding.onnx`` and ``int8.tflite``) and registered
under its own name so that other tests' registrations of the tiny package cannot collide with it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from serving.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVED_NAME = "serving-tiny"
VARIANTS = ["fp32.tflite", "fp32_embedding.tflite", "model.onnx", "model_embedding.onnx", "int8.tflite"]
#: The file the service serves when its config names no variant: fp32.tflite with the embedding output.
SERVED_FILE = "fp32_embedding.tflite"


@dataclass(frozen=True)
class Served:
    """The registered package the service tests serve."""

    tag: str
    package: Path
    labels: list[str]


@pytest.fixture(scope="session")
def served(tiny_package, tmp_path_factory) -> Served:
    """The tiny package with the runnable variants, registered as ``serving-tiny:v1``."""
    from _support import optimized_copy

    pkg, tag, labels = optimized_copy(tiny_package, tmp_path_factory.mktemp("served"), VARIANTS, SERVED_NAME)
    return Served(tag=tag, package=pkg, labels=labels)


# ------------------------------------------------------------------------------------------ images


@dataclass(frozen=True)
class Images:
    """Real digit images of the package's classes, in several formats, plus hostile inputs."""

    png: list[bytes]
    labels: list[int]
    jpeg: bytes
    webp: bytes
    bmp: bytes
    gif: bytes
    rgba_png: bytes
    large_png: bytes  # big enough that decoding takes a noticeable time (timeouts, concurrency limits)
    bomb_png: bytes  # a header that claims 100 000 x 100 000 pixels


def _encode(arr: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a token amount of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def images(small_demo_dir) -> Images:
    """Six digits per class from the demo data, and the same pixels in other formats."""
    from PIL import Image

    files = []
    for label in ("0", "1", "2"):
        files += [(p, int(label)) for p in sorted((small_demo_dir / label).glob("*.png"))[:6]]
    png = [p.read_bytes() for p, _ in files]
    rgb = np.asarray(Image.open(io.BytesIO(png[0])).convert("RGB"))
    rng = np.random.default_rng(0)
    large = rng.integers(0, 256, size=(2000, 2000, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    return Images(
        png=png,
        labels=[label for _, label in files],
        jpeg=_encode(rgb, "JPEG", quality=95),
        webp=_encode(rgb, "WEBP"),
        bmp=_encode(rgb, "BMP"),
        gif=_encode(rgb, "GIF"),
        rgba_png=_encode(rgba, "PNG"),
        large_png=_encode(large, "PNG", compress_level=1),
        bomb_png=png_bomb(),
    )


# ------------------------------------------------------------------------------------------ in process


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set environment variables for the block (``None``: unset it), restoring the previous values after it."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def service_env(tag: str | None, **settings) -> dict[str, str | None]:
    """The environment of a service for a :class:`ServeConfig` with ``model=tag`` and ``settings``: the config
    as one ``SHIPYARD_SERVE_CONFIG`` JSON, every ``SHIPYARD_<FIELD>`` variable unset (``None``) so that none
    left by an earlier service in this process (the service pins ``SHIPYARD_MODEL``) can win."""
    from serving.config import ServeConfig

    config = ServeConfig(model=tag, **settings)
    return {**dict.fromkeys(config.env_names().values()), **config.to_env()}


def load_service(env: dict[str, str | None]):
    """(Re)import ``serving.service`` under ``env``; return the module."""
    with environment(env):
        if "serving.service" in sys.modules:
            return importlib.reload(sys.modules["serving.service"])
        return importlib.import_module("serving.service")


def forget_bentoml_metrics() -> None:
    """Unregister BentoML's request metrics from prometheus' default registry.

    BentoML registers them each time it builds an app; a second app in one process (another config
    here) would otherwise fail with "Duplicated timeseries".
    """
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            REGISTRY.unregister(collector)


@contextlib.contextmanager
def asgi_client(tag: str | None, **settings) -> Iterator:
    """The service in this process, behind Starlette's TestClient (lifespan run: model loaded, warmed up)."""
    from starlette.testclient import TestClient

    env = service_env(tag, **settings)
    forget_bentoml_metrics()
    with environment(env):
        module = load_service(env)
        app = module.Shipyard.to_asgi()
        with TestClient(app, raise_server_exceptions=False) as client:
            client.module = module
            yield client


@pytest.fixture(scope="module")
def client(served) -> Iterator:
    """The service with default settings, in process."""
    with asgi_client(served.tag) as c:
        yield c


# ------------------------------------------------------------------------------------------ real server


@contextlib.contextmanager
def running_server(tag: str, log: Path, **settings) -> Iterator[ServerProcess]:
    """A real ``bentoml serve`` for ``ServeConfig(model=tag, **settings)`` on a free port of 127.0.0.1,
    ready, for the block; stopped (with every child) however the block ends."""
    from serving.config import ServeConfig

    config = ServeConfig(model=tag, host="127.0.0.1", port=free_port(), **settings)
    with ServerProcess(config, log, cwd=ROOT) as server:
        server.wait_ready(180.0)
        yield server


@pytest.fixture(scope="module")
def server(served, tmp_path_factory) -> Iterator[ServerProcess]:
    """A real server with default settings except a 1 MB body cap (to test it with a small upload)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(served.tag, log, max_request_bytes=1024 * 1024) as s:
        yield s


def reference_probabilities(package: Path, variant: str, pixels: np.ndarray) -> np.ndarray:
    """Probabilities of ``variant`` on each image alone (batch of one), with the service's own runner setup."""
    from serving.inference import Predictor, unpack

    predictor = Predictor(package, variant, embeddings=False)
    try:
        n = predictor.num_classes
        return np.stack([unpack(predictor.predict(p[None]), n)[0].probabilities for p in pixels])
    finally:
        predictor.close()


def decode_all(package: Path, blobs: list[bytes]) -> np.ndarray:
    """The model inputs of ``blobs`` (edge's preprocessing, as the service does)."""
    from edge.manifest import read_manifest
    from edge.preprocess import decode

    contract = read_manifest(package).input
    return np.stack([decode(b, contract) for b in blobs])


def assert_error(resp, status: int | tuple[int, ...], *words: str) -> str:
    """``resp`` has ``status`` and a JSON body ``{"error": "..."}`` mentioning every word; return the message."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and len(message) > 10, body
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return message


# ------------------------------------------------------------------------------------------ client venvs

CLIENTS = Path(__file__).resolve().parent / "clients"


def client_venv(requirements: str, *, timeout: float = 900) -> Path:
    """The python of a venv with exactly ``clients/<requirements>`` installed, for a tool whose pins conflict
    with ours. Built once per content of that file and kept in ``$SHIPYARD_TEST_VENVS`` (default
    ``~/.cache/shipyard-test-venvs``), so later runs start at once; a half-built venv is rebuilt."""
    import hashlib
    import subprocess

    from _support import env_outside_checkout

    spec = CLIENTS / requirements
    digest = hashlib.sha256(spec.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("SHIPYARD_TEST_VENVS") or Path.home() / ".cache" / "shipyard-test-venvs")
    folder = cache / f"{spec.stem}-{digest}"
    python, done = folder / "bin" / "python", folder / ".complete"
    if done.is_file():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(spec)],
        capture_output=True,
        text=True,
        env=env_outside_checkout(),
        timeout=timeout,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    done.write_text(spec.read_text())
    return python


def run_in(python: Path, script: str, *args: str, timeout: float = 600) -> dict:
    """Run ``clients/<script>`` with ``python`` outside the checkout; return the JSON of its ``RESULT=`` line."""
    import json
    import subprocess

    from _support import env_outside_checkout

    done = subprocess.run(
        [str(python), str(CLIENTS / script), *args],
        capture_output=True,
        text=True,
        env=env_outside_checkout(),
        cwd=CLIENTS,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line.removeprefix("RESULT="))
