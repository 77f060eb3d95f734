"""``bentoml build`` packs the service from bentofile.yaml offline, into an isolated BentoML home: the
serving code, the serve extra's pinned packages, no TensorFlow, and the model when one is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bentoml_build_packs_the_service_without_tensorflow(served, tmp_path):
    home = tmp_path / "bentoml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True", SHIPYARD_MODEL=served.tag)
    # the isolated home needs the model in its own store
    _run(
        [
            sys.executable,
            "-c",
            "import sys; from training.registry import register; print(register(sys.argv[1]))",
            str(served.package),
        ],
        env,
    )
    out = _run([sys.executable, "-m", "bentoml", "build", "-o", "tag"], env)
    tag = out.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert name == "shipyard" and bento.is_dir(), list((home / "bentos").rglob("*"))[:20]

    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "serving.service:Shipyard"
    packed = {m["tag"] for m in info["models"]} | {
        m["tag"] for svc in info["services"] for m in svc["models"]
    }
    assert packed == {served.tag}
    routes = {r["route"] for r in info["schema"]["routes"]}
    assert {"/classify", "/classify_batch", "/feedback", "/metadata", "/drift"} <= routes

    src = bento / "src"
    for rel in (
        "serving/service.py",
        "serving/schemas.py",
        "serving/batching.py",
        "edge/preprocess.py",
        "edge/runners.py",
        "serving/monitoring/__init__.py",
    ):
        assert (src / rel).is_file(), rel
    assert not (src / "training").exists() and not (src / "serving" / "loadtest").exists()
    assert not list(src.rglob("*.keras")) and not (src / "tests").exists()

    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    for package in (
        "bentoml==1.4.39",
        "onnxruntime==",
        "ai-edge-litert==",
        "pillow==",
        "prometheus_client==",
    ):
        assert package in requirements, package
    for banned in ("tensorflow", "keras", "tf2onnx", "torch"):
        assert banned not in requirements, banned
    # the model came along, with its manifest, so the Bento serves without a mounted store
    models = list((home / "models" / served.tag.split(":")[0]).iterdir())
    assert any((m / "manifest.json").is_file() for m in models if m.is_dir())


def _name(requirement: str) -> str:
    """The normalized project name of a requirement string (``Pillow>=12`` -> ``pillow``)."""
    import re

    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_bentofile_pins_every_serve_package_as_constraints_txt_does():
    """bentofile.yaml repeats the serve extra's pins by hand (a Bento builds offline, without a resolver):
    every package of the extra is there, at the version constraints.txt pins."""
    import tomllib

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {_name(r) for r in extras["serve"] + extras["edge"] if not r.startswith("shipyard")}
    packed = {}
    for requirement in yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]:
        name, _, version = requirement.partition("==")
        packed[_name(name)] = version
    assert wanted - set(packed) == set(), f"add to bentofile.yaml: {sorted(wanted - set(packed))}"
    wrong = {name: (version, pins.get(name)) for name, version in packed.items() if pins.get(name) != version}
    assert wrong == {}, f"bentofile.yaml pins differ from constraints.txt (bentofile, constraints): {wrong}"
