"""Gates block deployment: the server refuses a variant that failed its gate unless told to, a server that cannot
load its model exits at once with one line (no worker restarting forever), the banner names the variant really
served, ``shipyard register`` refuses a package with nothing runnable, and the pipeline's registration rule."""

from __future__ import annotations

import shutil
import time

import pytest
from serving_support import ROOT

from serving.config import ServeConfig
from serving.process import ServerProcess, free_port


def _variant_copy(served, tmp_path, version: str, statuses: dict[str, str]) -> str:
    """A copy of the served package under ``version`` with some variants' status changed; its tag."""
    from edge.manifest import read_manifest, write_manifest
    from training.registry import register

    pkg = tmp_path / version
    shutil.copytree(served.package, pkg)
    manifest = read_manifest(pkg)
    manifest.version = version
    for key, status in statuses.items():
        manifest.variants[key].status = status
        manifest.variants[key].reason = "agreement 0.41 < 0.98 (test)"
    write_manifest(pkg, manifest)
    return register(pkg)


def _exits(tag: str, log, **settings) -> tuple[int, str]:
    """Start ``bentoml serve`` for ``tag``; it must exit by itself within a minute. Its status and output."""
    config = ServeConfig(model=tag, port=free_port(), **settings)
    with ServerProcess(config, log, cwd=ROOT) as server:
        deadline = time.monotonic() + 90
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        assert server.proc.poll() is not None, "the server kept running:\n" + server.output()[-3000:]
        return server.proc.returncode, server.output()


def test_a_failed_gate_variant_is_refused_in_one_line_unless_allowed(served, tmp_path):
    tag = _variant_copy(served, tmp_path, "gatefail", {"fp32.tflite": "failed_gate", "fp32_embedding.tflite": "failed_gate"})
    code, output = _exits(tag, tmp_path / "refused.log")
    assert code != 0
    lines = [x for x in output.splitlines() if "cannot serve" in x]
    assert len(lines) == 1 and "failed its gate" in lines[0] and "serve.allow_failed_gate" in lines[0], output[-3000:]
    assert "Traceback" not in output and "Application startup failed" not in output, output[-3000:]

    config = ServeConfig(model=tag, port=free_port(), allow_failed_gate=True)
    with ServerProcess(config, tmp_path / "allowed.log", cwd=ROOT) as server:
        server.wait_ready(180)
        assert f"shipyard: serving {tag}, variant fp32.tflite" in server.output()


def test_a_package_with_nothing_to_run_stops_the_server_at_once(served, tiny_package, tmp_path):
    from edge.manifest import read_manifest, write_manifest
    from training.registry import register

    pkg = tmp_path / "kerasonly"
    shutil.copytree(tiny_package, pkg)
    manifest = read_manifest(pkg)
    manifest.version = "kerasonly"
    write_manifest(pkg, manifest)
    tag = register(pkg)  # the low-level registry takes it; 'shipyard register' would not
    code, output = _exits(tag, tmp_path / "nothing.log")
    assert code != 0
    lines = [x for x in output.splitlines() if "cannot serve" in x]
    assert len(lines) == 1 and "runnable variants are: none" in lines[0], output[-3000:]

    import shipyard
    from edge.errors import PackageError

    with pytest.raises(PackageError, match="shipyard optimize"):
        shipyard.register(pkg)


def test_the_banner_names_the_variant_really_served(served):
    from serving.settings import served_variant_file

    assert served_variant_file(ServeConfig(model=served.tag)) == "fp32_embedding.tflite"
    assert served_variant_file(ServeConfig(model=served.tag, embeddings=False)) == "fp32.tflite"
    assert served_variant_file(ServeConfig(model=served.tag, variant="int8.tflite")) == "int8.tflite"


def test_the_pipeline_registers_only_a_passing_default_variant(served):
    from edge.manifest import read_manifest
    from training.registry import gate_problem

    manifest = read_manifest(served.package)
    assert gate_problem(manifest) is None
    manifest.variants["fp32.tflite"].status = "failed_gate"
    assert "fp32.tflite" in gate_problem(manifest) and "failed_gate" in gate_problem(manifest)
    del manifest.variants["fp32.tflite"]
    assert "has no fp32.tflite" in gate_problem(manifest)
