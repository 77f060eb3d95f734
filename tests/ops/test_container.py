"""The serving image, built from the Dockerfile with podman and run: ready, classifying, non-root, without
TensorFlow, healthy (``scripts/container-check.sh``). Skips, saying why, where podman cannot run here."""

from __future__ import annotations

import subprocess
import time

import pytest
from ops_support import ROOT

pytestmark = pytest.mark.network

SKIPPED = 77  # the script's "this machine cannot run containers" status


def run_check(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a ``scripts/`` check; skip the test with the script's own reason when it exits 77."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode == SKIPPED:
        lines = proc.stdout.strip().splitlines() or ["(no reason given)"]
        pytest.skip(lines[-1].removeprefix("SKIP: "))
    return proc


def test_image_builds_serves_and_is_healthy(ops_model, digit_pngs, tmp_path):
    image = tmp_path / "digit.png"
    image.write_bytes(digit_pngs[0])
    started = time.monotonic()
    proc = run_check(
        "container-check.sh", "--store", str(ops_model.store), "--model", ops_model.tag, "--image", str(image)
    )
    print(proc.stdout, f"({time.monotonic() - started:.0f} s)")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for line in ("--- classified:", "--- runs as: shipyard", "--- no TensorFlow", "--- HEALTHCHECK: healthy"):
        assert line in proc.stdout, (line, proc.stdout)


def test_bento_containerized_with_podman_serves(ops_model, digit_pngs, tmp_path):
    """The other route to an image: ``bentoml build`` then ``bentoml containerize --backend podman``."""
    import os
    import sys

    image = tmp_path / "digit.png"
    image.write_bytes(digit_pngs[0])
    os.environ.setdefault("PYTHON", sys.executable)
    proc = run_check(
        "container-check.sh",
        "--bento",
        "--store",
        str(ops_model.store),
        "--model",
        ops_model.tag,
        "--image",
        str(image),
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for line in ("--- classified:", "--- runs as: bentoml", "--- no TensorFlow"):
        assert line in proc.stdout, (line, proc.stdout)
