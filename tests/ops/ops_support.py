"""Fixtures and helpers of the operations tests (re-exported by conftest.py): a tiny model registered for
serving, real digit images, and the checks that the Debian tools the tests drive (podman, Prometheus) are there."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS_NAME = "ops-tiny"
#: The variants the server needs: ONNX fp32 and the one that also outputs the embedding (drift).
OPS_VARIANTS = ["model.onnx", "model_embedding.onnx"]


@dataclass(frozen=True)
class OpsModel:
    """A registered package: its tag, its folder, its labels and the model store that holds it."""

    tag: str
    package: Path
    labels: list[str]
    store: Path


@pytest.fixture(scope="session")
def ops_model(tiny_package, tmp_path_factory) -> OpsModel:
    """The shared tiny package with the ONNX variants, registered as ``ops-tiny:v1`` in the session's store."""
    from edge.manifest import read_manifest, write_manifest
    from training.optimize import optimize_config_for, run_optimize
    from training.registry import register

    pkg = tmp_path_factory.mktemp("ops") / "pkg"
    shutil.copytree(tiny_package, pkg)
    config = optimize_config_for(
        read_manifest(pkg), None, ["optimize.latency=false", "optimize.representative_samples=50"]
    )
    outcome = run_optimize(pkg, config, variants=OPS_VARIANTS)
    failed = [(r.key, r.status, r.reason) for r in outcome.results if r.status != "passed"]
    assert not failed, failed
    manifest = read_manifest(pkg)
    manifest.name = OPS_NAME
    write_manifest(pkg, manifest)
    store = Path(os.environ["BENTOML_HOME"]) / "models"
    return OpsModel(tag=register(pkg), package=pkg, labels=list(manifest.labels), store=store)


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
