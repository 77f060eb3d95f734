"""The real client: MediaPipe Tasks' ImageClassifier loads the package's TFLite variants through their metadata.

MediaPipe runs in its own cached environment (``training.optimize.isolated.MEDIAPIPE``: its pins conflict
with ours, and none of our heavy dependencies are in it). On the demo package's held-out test split, its
top-1 must equal ``shipyard-edge predict``'s on every image, and its category names the manifest's labels.
A wrong normalization in the metadata (e.g. mean 127.5, std 127.5) makes MediaPipe feed other values to a
float model, and this test fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.cli import main
from edge.manifest import read_manifest
from edge.metadata import read_tflite_metadata

CLIENT = Path(__file__).with_name("mediapipe_classify.py")
VARIANTS = ("fp32.tflite", "int8.tflite")


@pytest.fixture(scope="module")
def optimized_demo(tiny_package, tmp_path_factory) -> Path:
    """The demo package with fp32.tflite and int8.tflite built by ``optimize`` (with metadata)."""
    from training.optimize import run_optimize
    from training.optimize.data import optimize_config_for
    from training.optimize.isolated import MEDIAPIPE, IsolatedEnvError

    try:
        MEDIAPIPE.ensure()
    except IsolatedEnvError as exc:
        pytest.skip(f"the MediaPipe environment cannot be created here: {exc}")
    package = Path(shutil.copytree(tiny_package, tmp_path_factory.mktemp("mediapipe") / "pkg"))
    config = optimize_config_for(read_manifest(package))
    config = config.model_copy(update={"optimize": config.optimize.model_copy(update={"latency": False})})
    outcome = run_optimize(package, config, variants=list(VARIANTS))
    assert not outcome.failed, [(r.key, r.reason) for r in outcome.failed]
    return package


def _mediapipe(model: Path, images: list[str]) -> list[dict]:
    from training.optimize.isolated import MEDIAPIPE

    done = MEDIAPIPE.run_script(CLIENT, str(model), *images)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_mediapipe_image_classifier_agrees_with_shipyard_edge(
    optimized_demo, small_demo_dir, capsys, variant
):
    manifest = read_manifest(optimized_demo)
    assert manifest.held_out is not None and manifest.held_out.files
    images = [str(small_demo_dir / rel) for rel in manifest.held_out.files]
    model = optimized_demo / "variants" / variant

    meta = read_tflite_metadata(model.read_bytes())
    assert meta is not None and meta.labels == manifest.labels
    assert (meta.name, meta.version) == (manifest.name, manifest.version)
    assert (
        manifest.variants[variant].metrics["metadata"]["written"] is True
    )  # the sha256 is of this final file

    theirs = _mediapipe(model, images)
    assert (
        main(["predict", str(optimized_demo), *images, "--variant", variant, "--top-k", "1", "--json"]) == 0
    )
    ours = [p["top_k"][0]["label"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    assert [t["name"] for t in theirs] == ours  # 100% top-1 agreement, by name
    assert all(t["names"] == [[i, label] for i, label in enumerate(manifest.labels)] for t in theirs)


def test_bare_tflite_with_metadata_prints_its_labels(optimized_demo, small_demo_dir, capsys):
    manifest = read_manifest(optimized_demo)
    image = str(small_demo_dir / manifest.held_out.files[0])
    assert main(["predict", str(optimized_demo / "variants" / "int8.tflite"), image, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels_source"] == "tflite metadata"
    assert {item["label"] for item in result["predictions"][0]["top_k"]} <= set(manifest.labels)
