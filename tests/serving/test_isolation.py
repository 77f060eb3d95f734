"""The serving side never imports TensorFlow or ``training`` (DESIGN.md's one rule), and the process control
that starts a server (``serving.process``) loads neither BentoML nor the service: checked in the sources, in a
process that runs the service, and in a fresh virtual environment that has only the ``serve`` extra installed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _support import copy_project, env_outside_checkout, fresh_venv

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("tensorflow", "tf_keras", "keras", "training", "tf2onnx", "tensorflow_model_optimization")

RUN_SERVICE = """
import json, sys
from starlette.testclient import TestClient
import serving.service as service
with TestClient(service.Shipyard.to_asgi()) as client:
    body = client.post("/classify", files={"image": ("d.png", open(sys.argv[1], "rb").read(), "image/png")}).json()
loaded = sorted({m.split(".")[0] for m in sys.modules})
from threadpoolctl import threadpool_info
blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print("RESULT=" + json.dumps({"top": body["predictions"][0]["label"], "variant": body["variant"], "loaded": loaded,
                              "blas_threads": blas}))
"""


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_serving_sources_import_no_training_or_tensorflow():
    files = [p for p in (ROOT / "serving").rglob("*.py") if "loadtest" not in p.parts]
    assert any(p.name == "service.py" for p in files)
    for path in files:
        for name in _imports(path):
            assert name.split(".")[0] not in FORBIDDEN, f"{path.relative_to(ROOT)} imports {name}"


def test_starting_a_server_loads_neither_bentoml_nor_the_service():
    code = "import sys, serving.process; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = {m.split(".")[0] for m in eval(done.stdout.strip().splitlines()[-1])}
    assert not loaded & {"bentoml", "locust", "gevent", *FORBIDDEN}, sorted(loaded)


def test_a_process_running_the_service_never_loads_tensorflow(served, images, tmp_path):
    from serving.config import ServeConfig

    image = tmp_path / "d.png"
    image.write_bytes(images.png[0])
    proc = subprocess.run(
        [sys.executable, "-c", RUN_SERVICE, str(image)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_outside_checkout(**ServeConfig(model=served.tag).to_env()),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(
        next(x for x in proc.stdout.splitlines() if x.startswith("RESULT=")).removeprefix("RESULT=")
    )
    assert report["variant"] == "fp32_embedding.tflite" and report["top"] in served.labels
    loaded = set(report["loaded"])
    assert {"bentoml", "ai_edge_litert", "serving", "edge"} <= loaded
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
    assert report["blas_threads"] and set(report["blas_threads"]) == {1}  # the monitor's matrix products: one core


@pytest.mark.timeout(1500)
def test_fresh_venv_with_the_serve_extra_runs_the_service(served, images, tmp_path):
    # what the Dockerfile copies: pyproject.toml, constraints.txt, README.md, edge/ and serving/
    project = copy_project(tmp_path / "project", ("edge", "serving"), skip=("loadtest",))
    venv = tmp_path / "venv"
    python = fresh_venv(venv, project, "serve", timeout=1400)
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u, json; print(json.dumps("
            "{m: u.find_spec(m) is not None for m in ('tensorflow', 'tf_keras', 'training', 'bentoml', 'onnxruntime',"
            "'threadpoolctl', 'uvloop', 'httptools')}))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_outside_checkout(),
        timeout=120,
    )
    assert json.loads(probe.stdout) == {
        "tensorflow": False,
        "tf_keras": False,
        "training": False,
        "bentoml": True,
        "onnxruntime": True,
        "threadpoolctl": True,
        "uvloop": True,
        "httptools": True,
    }, probe.stdout + probe.stderr

    from serving.config import ServeConfig

    image = tmp_path / "d.png"
    image.write_bytes(images.png[0])
    run = subprocess.run(
        [str(python), "-c", RUN_SERVICE, str(image)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: serving must come from the venv
        env=env_outside_checkout(**ServeConfig(model=served.tag).to_env()),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(
        next(x for x in run.stdout.splitlines() if x.startswith("RESULT=")).removeprefix("RESULT=")
    )
    assert report["top"] in served.labels
    assert not set(report["loaded"]) & set(FORBIDDEN)
    where = subprocess.run(
        [str(python), "-c", "import serving; print(serving.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env_outside_checkout(),
    )
    assert str(venv) in where.stdout
