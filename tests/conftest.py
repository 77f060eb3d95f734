"""Shared fixtures: an isolated BentoML model store, the demo digits, and one tiny trained package."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from _support import BIN, ROOT, TINY_TRAIN, run_cli  # noqa: F401 - re-exported for fixtures


def pytest_configure(config):
    """Point BentoML at a throw-away store before anything imports it."""
    if "SHIPYARD_TEST_BENTOML_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="shipyard-bentoml-")
        os.environ["SHIPYARD_TEST_BENTOML_HOME"] = home
        os.environ["BENTOML_HOME"] = home
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_unconfigure(config):
    home = os.environ.get("SHIPYARD_TEST_BENTOML_HOME")
    if home and Path(home).name.startswith("shipyard-bentoml-"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The full demo dataset (1797 digits, 32 px PNG, one folder per class)."""
    from training.demo import write_demo_data

    out = tmp_path_factory.mktemp("demo") / "digits"
    write_demo_data(out, size=32)
    return out


@pytest.fixture(scope="session")
def small_demo_dir(tmp_path_factory) -> Path:
    """A 3-class subset (digits 0-2, ~540 images): quick to train on."""
    from training.demo import write_demo_data

    out = tmp_path_factory.mktemp("demo3") / "digits"
    write_demo_data(out, size=32, classes=[0, 1, 2])
    return out


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory, small_demo_dir) -> Path:
    """A real trained package (small CNN, 3 classes, 3 epochs): reuse it, never modify it in place."""
    from training.config import load_training_config
    from training.pipeline import run_train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_training_config(
        None,
        [*TINY_TRAIN, "model.name=tiny", "train.epochs=3", "train.version=v1"],
        data=small_demo_dir,
    )
    return run_train(cfg, out, verbose=0).package


@pytest.fixture
def package_copy(tiny_package, tmp_path) -> Path:
    """A private copy of the tiny package that a test may modify, with a version of its own so that copies
    registered by different tests never collide in the session's model store."""
    import re

    from edge.manifest import read_manifest, write_manifest

    dst = tmp_path / "pkg"
    shutil.copytree(tiny_package, dst)
    manifest = read_manifest(dst)
    manifest.version = re.sub(r"[^a-z0-9]+", "-", tmp_path.name.lower()).strip("-")[:40] or "copy"
    write_manifest(dst, manifest)
    return dst
