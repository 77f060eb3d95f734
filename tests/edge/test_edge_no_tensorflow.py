"""The device side never imports TensorFlow (nor training or serving).

Two levels: in this environment (where TensorFlow *is* installed) a subprocess runs ``edge`` end to end
and checks ``sys.modules``; and a fresh virtual environment with only ``pip install .[edge]`` runs the
installed ``shipyard-edge`` command, where TensorFlow cannot even be imported.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _support import copy_project, env_outside_checkout, fresh_venv

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("tensorflow", "tf_keras", "keras", "training", "serving", "tf2onnx")

CHECK_MODULES = """
import json, sys
from edge.cli import main
codes = [main(["predict", sys.argv[1], sys.argv[2], "--json"]),
         main(["bench", sys.argv[1], "--runs", "3", "--min-time", "0", "--json"])]
loaded = sorted({m.split(".")[0] for m in sys.modules})
print("MODULES=" + json.dumps({"codes": codes, "loaded": loaded}))
"""


def test_edge_sources_import_no_forbidden_package():
    for path in sorted((ROOT / "edge").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_predict_and_bench_leave_tensorflow_unloaded(edge_assets):
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_MODULES, str(edge_assets.int8), str(image)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_outside_checkout(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES="))
    report = json.loads(line.removeprefix("MODULES="))
    assert report["codes"] == [0, 0]
    loaded = set(report["loaded"])
    assert "ai_edge_litert" in loaded  # it did run the model
    assert not loaded & {*FORBIDDEN, "onnxruntime"}, sorted(loaded & {*FORBIDDEN, "onnxruntime"})


@pytest.mark.timeout(900)
def test_fresh_venv_with_the_edge_extra_runs_predict_and_bench(edge_assets, tmp_path):
    project = copy_project(tmp_path / "project", ("edge", "training", "serving"))
    venv = tmp_path / "venv"
    python = fresh_venv(venv, project, "edge", timeout=900)

    env = env_outside_checkout()
    no_tf = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print([m for m in ('tensorflow', 'tf_keras', 'onnxruntime') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert no_tf.stdout.strip() == "[]", no_tf.stdout + no_tf.stderr

    where = subprocess.run(
        [str(python), "-c", "import edge; print(edge.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert str(venv) in where.stdout, "edge must come from the venv's copy, not the checkout"

    model = tmp_path / "model.tflite"
    shutil.copy(edge_assets.int8, model)
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    cli = venv / "bin" / "shipyard-edge"
    predict = subprocess.run(
        [str(cli), "predict", str(model), str(image), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert predict.returncode == 0, predict.stderr
    top = json.loads(predict.stdout)["predictions"][0]["top_k"][0]
    assert top["index"] == int(edge_assets.test_labels[0])

    bench = subprocess.run(
        [str(cli), "bench", str(model), "--runs", "5", "--min-time", "0", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["runs"] >= 5

    package = subprocess.run(
        [str(cli), "predict", str(edge_assets.package), str(image), "--variant", "fp32", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert package.returncode == 0, package.stderr

    onnx = subprocess.run(
        [str(cli), "predict", str(edge_assets.onnx), str(image)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert onnx.returncode == 2
    assert "pip install 'shipyard[onnx]'" in onnx.stderr
