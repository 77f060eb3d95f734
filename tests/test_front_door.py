"""The front door: the package boundaries of DESIGN.md, a light ``import shipyard``, the Python API, and the
executed quick-start notebook."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest
from _support import ROOT

from edge.config import ConfigError

HEAVY = ("tensorflow", "tf_keras", "keras", "bentoml", "onnxruntime", "locust", "matplotlib", "tf2onnx")
#: package -> top-level packages its sources may never import (DESIGN.md's table)
FORBIDDEN = {
    "edge": ("tensorflow", "tf_keras", "keras", "training", "serving", "shipyard", "bentoml"),
    "training": ("serving", "shipyard"),
    "serving": ("tensorflow", "tf_keras", "keras", "training", "shipyard"),
    "shipyard": (),
}


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node))
    return found


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Imports that run when the module is imported (not inside a function or ``if TYPE_CHECKING``)."""
    names: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(tree.body)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_boundaries(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    for path in files:
        for name, _node in _imports(ast.parse(path.read_text(), filename=str(path))):
            top = name.split(".")[0]
            assert top not in FORBIDDEN[package], f"{path.relative_to(ROOT)} imports {name} (DESIGN.md forbids it)"


def test_the_front_door_imports_stages_lazily():
    """At import time ``shipyard`` may load only the stages' pydantic config modules; everything else is
    imported inside the function that needs it."""
    for path in sorted((ROOT / "shipyard").rglob("*.py")):
        for name in _module_level_imports(ast.parse(path.read_text(), filename=str(path))):
            if name.split(".")[0] in ("training", "serving"):
                assert name.endswith(".config"), f"{path.relative_to(ROOT)} imports {name} at module level"


def _loaded_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_shipyard_and_help_load_no_heavy_library():
    loaded = _loaded_after(
        "import shipyard, contextlib, io\n"
        "from shipyard.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert 'pipeline' in out.getvalue() and 'loadtest' in out.getvalue()"
    )
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"import shipyard / shipyard --help loaded {heavy[:8]}"


def test_public_api_is_named_in_all():
    import shipyard

    expected = {"train", "evaluate", "optimize", "register", "serve", "loadtest", "tune", "report", "pipeline"}
    assert expected <= set(shipyard.__all__)
    assert all(callable(getattr(shipyard, name)) for name in expected)
    for name in expected:  # every function documents what it returns
        assert "Returns" in (getattr(shipyard, name).__doc__ or ""), name


def test_load_config_sections_dotted_keys_and_data_compose(tmp_path):
    import shipyard

    cfg = shipyard.load_config(
        ROOT / "configs" / "demo.yaml",
        data=tmp_path,
        overrides={"train.epochs": 2, "serve.port": 3100},
        train={"learning_rate": 0.01},
        loadtest={"users": 3},
    )
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.serve.port, cfg.loadtest.users) == (2, 0.01, 3100, 3)
    assert cfg.data.path == tmp_path and cfg.model.name == "digits"  # the file's value kept
    assert set(cfg.training_dump()) == {"data", "model", "train", "optimize", "tune", "report"}
    again = shipyard.load_config(cfg, overrides=["train.epochs=5"])  # a config object as the base
    assert again.train.epochs == 5 and cfg.train.epochs == 2  # the input is never modified


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"trian": {"epochs": 1}}, r"unknown key 'trian'.*valid keys here: data, loadtest, model"),
        ({"train": 3}, r"pass a section as a mapping, e.g. train=\{...\}"),
        ({"overrides": {"epochs": 3}}, r"must be section.key"),
        ({"config": 42}, r"pass a YAML path, a PipelineConfig, a mapping or None"),
        ({"overrides": {"serve.port": 0}}, r"'serve.port' = 0 is invalid"),
    ],
)
def test_load_config_errors_name_the_problem(kwargs, expected):
    import shipyard

    with pytest.raises(ConfigError, match=expected):
        shipyard.load_config(**kwargs)


def test_evaluate_and_models_return_typed_results(package_copy):
    import shipyard
    from training.pipeline import EvaluateOutcome

    outcome = shipyard.evaluate(package_copy)
    assert isinstance(outcome, EvaluateOutcome)
    assert 0.5 < outcome.evaluation.metrics["accuracy"] <= 1.0 and "accuracy" in outcome.table
    tag = shipyard.register(package_copy, require_runnable=False)  # keras only: nothing to serve yet
    listed = {m.tag: m for m in shipyard.models()}
    assert tag in listed and listed[tag].classes == 3 and listed[tag].accuracy == pytest.approx(
        json.loads((package_copy / "manifest.json").read_text())["metrics"]["accuracy"]
    )


@pytest.mark.network
def test_quickstart_notebook_executes(tmp_path):
    """examples/quickstart.ipynb runs top to bottom on this machine: train, evaluate, optimize, the edge
    runner, register, serve and classify. Any cell error fails the test with the cell's traceback."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
    )
    client.execute()
    text = "\n".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "TensorFlow loaded yet? False" in text
    assert re.search(r"int8\.tflite +passed", text)
    assert "answered" in text
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the confusion matrix was not shown"
