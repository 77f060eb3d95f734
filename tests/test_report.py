"""Pictures of the data, the network and the training, the recording callbacks, and the report page.

Every picture is made from the tiny trained package and checked for what it shows (the data each
function returns, and pixels that are not blank), not only for existence.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _support import ROOT, TINY_TRAIN, run_cli

from edge.manifest import read_manifest, verify_file, verify_package
from training.config import load_training_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _kinds() -> list[str]:
    from training.visualize import PLOTS

    return list(PLOTS)


def _file(kind: str) -> str:
    """The picture's path in a package (``plots/<kind>.png``, ``.gif`` for an animation)."""
    from training.visualize import PLOTS

    return PLOTS[kind].file_name(kind)


def _pixels(source: Path | bytes) -> np.ndarray:
    from PIL import Image

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def assert_not_blank(source: Path | bytes, *, min_std: float = 8.0, min_colors: int = 40) -> np.ndarray:
    """A real picture: pixel values vary and there are many distinct colours (anti-aliased lines, images)."""
    px = _pixels(source)
    assert px.shape[0] >= 50 and px.shape[1] >= 50, px.shape
    colors = len(np.unique(px.reshape(-1, 3), axis=0))
    assert px.std() > min_std, f"pixel std {px.std():.1f} <= {min_std}: blank?"
    assert colors > min_colors, f"only {colors} distinct colours: blank?"
    return px


@pytest.fixture(scope="module")
def remade(tiny_package, tmp_path_factory):
    """Every picture made again from the package on disk (model loaded and data re-scanned), into a tmp folder."""
    from training.visualize import PlotContext, make_plot

    out = tmp_path_factory.mktemp("plots")
    ctx = PlotContext(tiny_package)
    return {kind: make_plot(ctx, kind, out / Path(_file(kind)).name) for kind in _kinds()}


@pytest.fixture(scope="module")
def report_package(tiny_package, tmp_path_factory):
    """A copy of the tiny package with its report page written by the CLI."""
    pkg = tmp_path_factory.mktemp("report") / "pkg"
    shutil.copytree(tiny_package, pkg)
    res = run_cli("report", str(pkg))
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.strip().splitlines()[-1]) == pkg / "index.html"
    return pkg


# ------------------------------------------------------------------------------------------- recording


def test_training_records_histograms_and_validation_predictions(tiny_package):
    manifest = verify_package(tiny_package)
    rec = json.loads((tiny_package / "logs" / "histograms.json").read_text())
    assert rec["layers"] == ["conv1", "conv3", "probabilities"]  # first and last base kernel, and the output
    assert [r["epoch"] for r in rec["records"]] == [0, 2, 3]  # before training, every 2nd, the last
    first, last = rec["records"][0], rec["records"][-1]
    sizes = {"conv1": {"kernel": 3 * 3 * 3 * 16}, "probabilities": {"kernel": 64 * 3, "bias": 3}}
    for layer, names in sizes.items():
        for name, size in names.items():
            assert sum(last["weights"][layer][name]["counts"]) == size
            assert sum(last["gradients"][layer][name]["counts"]) == size
    assert sum(last["activations"]["conv1"]["counts"]) == rec["batch"] * 32 * 32 * 16
    assert first["weights"]["probabilities"]["bias"]["max"] == 0.0  # zeros before training...
    assert last["weights"]["probabilities"]["bias"]["std"] > 0  # ...learnt after
    assert last["loss"] < first["loss"]
    assert any(
        abs(v) > 0
        for v in (last["gradients"]["conv1"]["kernel"]["min"], last["gradients"]["conv1"]["kernel"]["max"])
    )

    preds = json.loads((tiny_package / "logs" / "val_predictions.json").read_text())
    n_val = manifest.dataset.split_counts["val"]
    assert [r["epoch"] for r in preds["epochs"]] == [1, 2, 3]
    assert preds["images"] == n_val and all(sum(r["counts"]) == n_val for r in preds["epochs"])
    assert preds["true_counts"] == [manifest.dataset.class_counts["val"][c] for c in manifest.labels]
    for rel in ("logs/histograms.json", "logs/val_predictions.json"):
        assert rel in manifest.files


def test_histograms_are_written_to_tensorboard(tiny_package):
    from training._tf import tf

    manifest = read_manifest(tiny_package)
    events = [p for p in manifest.files if p.startswith("logs/tensorboard/histograms/") and "tfevents" in p]
    assert events, "no TensorBoard event file for the histograms"
    steps: dict[str, set[int]] = {}
    for rel in events:
        for event in tf.compat.v1.train.summary_iterator(str(tiny_package / rel)):
            for value in event.summary.value:
                steps.setdefault(value.tag, set()).add(event.step)
    for tag in ("weights/conv1/kernel", "activations/conv3", "gradients/probabilities/bias"):
        assert steps.get(tag) == {0, 2, 3}, (tag, steps.get(tag))


def test_recorder_resumes_and_a_failing_recorder_does_not_stop_training(small_demo_dir, tmp_path, caplog):
    from training._tf import keras
    from training.config import ModelConfig
    from training.models import build_model, compile_model
    from training.visualize import HistogramRecorder, ValidationSample
    from training.visualize.recording import _callback_class

    config = load_training_config(None, [*TINY_TRAIN, "report.record_batch=4"], data=small_demo_dir)
    model = build_model(ModelConfig(base="small_cnn", weights="none", freeze="none"), 3, (32, 32))
    compile_model(model, config.train, 3)
    sample = ValidationSample(config, 8)
    rec = HistogramRecorder(tmp_path, sample, every=1, batch=4, tensorboard=False)
    rec.begin(model)
    for epoch in range(3):
        rec.epoch_end(model, epoch, {"phase": 1})
    rec.end(model)
    saved = json.loads((tmp_path / "logs" / "histograms.json").read_text())
    assert [r["epoch"] for r in saved["records"]] == [0, 1, 2, 3]
    assert sum(saved["records"][0]["activations"]["probabilities"]["counts"]) == 4 * 3

    again = HistogramRecorder(tmp_path, sample, every=1, batch=4, tensorboard=False)  # a resumed run
    again.begin(model)
    again.epoch_end(model, 1, {"phase": 1})  # epoch 2 runs again: its record and later ones are replaced
    saved = json.loads((tmp_path / "logs" / "histograms.json").read_text())
    assert [r["epoch"] for r in saved["records"]] == [0, 1, 2]

    broken = HistogramRecorder(tmp_path / "b", sample, layers=["no_such_layer"], tensorboard=False)
    callback = _callback_class()([broken])
    callback.set_model(model)
    with caplog.at_level("WARNING", logger="shipyard.visualize"):
        callback.on_train_begin()
        callback.on_epoch_end(0, {})
    assert callback.failed == {0}
    assert "no_such_layer" in caplog.text and "conv1" in caplog.text  # names the layers it could record
    assert isinstance(callback, keras.callbacks.Callback)


# -------------------------------------------------------------------------------------------- pictures


@pytest.mark.parametrize("kind", _kinds())
def test_every_picture_is_made_at_the_end_of_training(tiny_package, kind):
    from training.visualize import read_index

    manifest = read_manifest(tiny_package)
    row = read_index(tiny_package)[kind]
    assert row["status"] == "ok", row
    assert row["file"] == _file(kind)
    path = verify_file(tiny_package, manifest, row["file"])  # recorded with its sha256
    if kind == "misclassified" and row["summary"]["total_wrong"] == 0:  # a line of text: no mistakes
        assert_not_blank(path, min_std=2, min_colors=5)
    else:
        assert_not_blank(path)


def test_class_histogram_and_samples(remade, tiny_package):
    from edge.preprocess import decode_file

    manifest = read_manifest(tiny_package)
    hist = remade["class_histogram"].data
    assert hist["splits"] == ["train", "val", "test"]
    for split in hist["splits"]:
        assert hist["counts"][split] == [manifest.dataset.class_counts[split][c] for c in manifest.labels]

    samples = remade["samples"].data
    assert samples["images"].shape == (3, 6, 32, 32, 3) and samples["shown"] == 18
    root = Path(manifest.dataset.path)
    for c, row in enumerate(samples["paths"]):
        assert all(Path(p).parts[0] == manifest.labels[c] for p in row)  # each row is one class
    first = decode_file(root / samples["paths"][1][2], manifest.input)
    np.testing.assert_array_equal(samples["images"][1, 2], first)


def test_augmented_grid_says_when_it_shows_a_default(remade, tiny_package, tmp_path):
    from training.visualize import PlotContext, make_plot

    aug = remade["augmented"]
    assert aug.data["configured"] is False and "demonstrative default" in aug.data["title"]
    assert aug.note and "no augmentation is configured" in aug.note
    assert aug.data["changed_fraction"] > 0.5
    assert aug.data["images"].shape == remade["samples"].data["images"].shape

    config = load_training_config(
        None, [*TINY_TRAIN, "data.augment.rotation=0.1"], data=read_manifest(tiny_package).dataset.path
    )
    configured = make_plot(PlotContext(tiny_package, config=config), "augmented", tmp_path / "a.png")
    assert configured.ok and configured.data["configured"] is True
    assert configured.data["title"].endswith("(rotation 0.1)") and configured.note is None
    assert_not_blank(tmp_path / "a.png")


def test_embedding_maps_have_one_point_per_test_image(remade, tiny_package):
    manifest = read_manifest(tiny_package)
    ref = np.load(tiny_package / "reference" / "predictions.npz")
    by_class, by_right = remade["embedding_class"].data, remade["embedding_correct"].data
    n_test = manifest.metrics["test_count"]
    assert by_class["points"] == by_right["points"] == n_test == len(by_class["coords"])
    assert by_class["coords"].shape == (n_test, 2) and np.isfinite(by_class["coords"]).all()
    np.testing.assert_array_equal(by_class["labels"], ref["labels"])
    np.testing.assert_array_equal(by_right["correct"], ref["probabilities"].argmax(axis=1) == ref["labels"])
    assert by_right["correct"].mean() == pytest.approx(manifest.metrics["accuracy"])
    assert by_class["method"] == "umap"  # the default map (report.embedding_method=auto)
    # a trained model separates the classes: each point's nearest neighbour is mostly of its class
    c = by_class["coords"]
    d = np.linalg.norm(c[:, None] - c[None], axis=-1) + np.eye(len(c)) * 1e9
    assert np.mean(by_class["labels"][d.argmin(axis=1)] == by_class["labels"]) > 0.8


def test_embedding_map_is_capped_at_embedding_points(tiny_package, tmp_path):
    from training.visualize import PlotContext, make_plot

    config = load_training_config(
        None,
        [*TINY_TRAIN, "report.embedding_points=20", "report.embedding_method=pca"],
        data=read_manifest(tiny_package).dataset.path,
    )
    result = make_plot(PlotContext(tiny_package, config=config), "embedding_class", tmp_path / "e.png")
    assert result.ok and result.data["points"] == 20 and result.data["method"] == "pca"
    assert "20 of 81" in result.note


def test_structure_graph_and_its_fallback_table(remade, tiny_package, tmp_path, monkeypatch):
    import training.visualize.network as network
    from training.package import load_package_model

    model, manifest = load_package_model(tiny_package)
    names = [layer.name for layer in model.layers]
    graph = remade["structure"].data
    have_graphviz, why = network.graphviz_available()
    assert graph["method"] == ("graphviz" if have_graphviz else "table"), why
    assert [r["name"] for r in graph["layers"]] == names
    assert sum(r["params"] for r in graph["layers"]) == manifest.base_model["parameters"]["total"]
    assert graph["layers"][names.index("conv2")]["inbound"] == ["pool1"]

    monkeypatch.setattr(network, "graphviz_available", lambda: (False, "pydot is not installed (test)"))
    table = network.plot_structure(model, tmp_path / "t.png")
    assert table["method"] == "table" and "pydot" in table["reason"]
    assert_not_blank(tmp_path / "t.png", min_colors=10)


def test_first_layer_filters(remade, tiny_package):
    from training.package import load_package_model

    model, _ = load_package_model(tiny_package)
    data = remade["filters"].data
    assert data["layer"] == "conv1" and data["mode"] == "rgb" and data["shown"] == 16
    np.testing.assert_array_equal(data["kernel"], model.get_layer("conv1").get_weights()[0])


def test_activation_maximization_raises_each_class_score_with_a_fixed_seed(remade, tiny_package):
    from training.package import load_package_model
    from training.visualize import maximize_activation

    data = remade["maximize"].data
    assert data["units"] == [0, 1, 2] and data["images"].shape == (3, 32, 32, 3)
    assert np.all(data["after"] > data["before"] + 1.0), (data["before"], data["after"])
    model, _ = load_package_model(tiny_package)
    a = maximize_activation(model, units=[1], steps=6, seed=3)
    b = maximize_activation(model, units=[1], steps=6, seed=3)
    np.testing.assert_array_equal(a["images"], b["images"])
    channel = maximize_activation(model, layer="conv3", units=[5], steps=6)
    assert channel["after"][0] > channel["before"][0]


def test_grand_tour_is_a_smooth_looping_animation_of_the_embeddings(remade, tiny_package):
    from PIL import Image

    tour = remade["grand_tour"]
    data, n_test = tour.data, read_manifest(tiny_package).metrics["test_count"]
    assert data["points"] == n_test and data["coords"].shape == (data["frames"], n_test, 2)
    bases = data["bases"]
    for b in bases:  # every frame is an orthonormal 2-D projection
        np.testing.assert_allclose(b.T @ b, np.eye(2), atol=1e-9)
    steps = np.linalg.norm(np.diff(bases, axis=0, append=bases[:1]), axis=(1, 2))
    assert steps.max() < 0.35, "a jump between consecutive frames (the last wraps to the first)"
    spread = max(np.linalg.norm(b - bases[0]) for b in bases)
    assert spread > 1.0, "the tour hardly moves"
    assert "principal components" in tour.note
    path = Path(tour.file)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == data["frames"] and gif.info.get("loop") == 0
        first = np.asarray(gif.convert("RGB"))
        gif.seek(data["frames"] // 2)
        middle = np.asarray(gif.convert("RGB"))
    assert first.shape == middle.shape and np.mean(np.any(first != middle, axis=-1)) > 0.002  # it moves
    assert_not_blank(path, min_std=5, min_colors=5)


def test_tour_bases_are_deterministic_and_visit_random_planes():
    from training.visualize import tour_bases

    a, b = tour_bases(6, stops=4, steps=5, seed=1), tour_bases(6, stops=4, steps=5, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20, 6, 2)
    assert not np.allclose(tour_bases(6, stops=4, steps=5, seed=2), a)


def test_gradcam_explains_the_mistakes_and_a_sample_of_right_answers(remade, tiny_package):
    ref = np.load(tiny_package / "reference" / "predictions.npz")
    preds = ref["probabilities"].argmax(axis=1)
    wrong = int(np.sum(preds != ref["labels"]))
    data = remade["gradcam"].data
    assert data["layers"] == ["relu3"]  # the last convolution before global pooling
    assert data["total_wrong"] == wrong and data["wrong_shown"] == min(wrong, 12)
    correct = [e["correct"] for e in data["entries"]]
    assert correct == sorted(correct)  # the mistakes first
    assert sum(correct) == min(6, len(preds) - wrong)
    for entry, index in zip(data["entries"], data["indices"], strict=True):
        assert entry["correct"] == bool(preds[index] == ref["labels"][index])
    cams = data["cams"]
    assert cams.shape == (len(data["indices"]), 32, 32) and cams.min() >= 0 and np.allclose(cams.max(axis=(1, 2)), 1)
    assert_not_blank(Path(remade["gradcam"].file))


@pytest.mark.parametrize("kind", ["weights", "activations", "gradients"])
def test_recorded_histogram_pictures(remade, kind):
    data = remade[kind].data
    assert data["epochs"] == [0, 2, 3] and data["layers"] == ["conv1", "conv3", "probabilities"]
    key = "conv1" if kind == "activations" else "conv1/kernel"
    assert len(data["panels"][key]) == 3
    expected = 16 * 32 * 32 * 16 if kind == "activations" else 3 * 3 * 3 * 16
    assert all(sum(h["counts"]) == expected for h in data["panels"][key])


def test_learning_curves_and_predictions_per_epoch(remade, tiny_package):
    manifest = read_manifest(tiny_package)
    curves = remade["learning_curves"].data
    assert curves["epochs"] == 3 and curves["boundary"] is None
    assert curves["panels"] == ["accuracy", "loss", "learning rate"]
    assert curves["best_epoch"] in (1, 2, 3) and len(curves["learning_rate"]) == 3
    per_epoch = remade["val_predictions"].data
    n_val = manifest.dataset.split_counts["val"]
    assert per_epoch["epochs"] == [1, 2, 3] and per_epoch["counts"].shape == (3, 3)
    assert (per_epoch["counts"].sum(axis=1) == n_val).all() and per_epoch["true_counts"].sum() == n_val


def test_learning_curves_mark_the_fine_tuning_phase(tmp_path):
    from training.visualize import plot_learning_curves

    history = {
        "loss": [1.0, 0.6, 0.5, 0.4, 0.35],
        "val_loss": [1.1, 0.7, 0.6, 0.62, 0.5],
        "accuracy": [0.5, 0.7, 0.8, 0.85, 0.9],
        "val_accuracy": [0.45, 0.65, 0.75, 0.8, 0.86],
        "learning_rate": [1e-3, 1e-3, 1e-3, 1e-5, 1e-5],
        "phase": [1, 1, 1, 2, 2],
    }
    data = plot_learning_curves(history, tmp_path / "lc.png")
    assert data["boundary"] == 3.5 and data["best_epoch"] == 5
    assert data["panels"] == ["loss", "accuracy", "learning rate"]
    assert_not_blank(tmp_path / "lc.png")


def test_confusion_per_class_and_misclassified_match_the_evaluation(remade, tiny_package):
    manifest = read_manifest(tiny_package)
    cm = remade["confusion"].data["matrix"]
    assert int(cm.sum()) == manifest.metrics["test_count"]
    saved = json.loads((tiny_package / "eval" / "confusion_matrix.json").read_text())["matrix"]
    np.testing.assert_array_equal(cm, saved)
    np.testing.assert_allclose(remade["confusion"].data["normalized"].sum(axis=1), 1.0)

    metrics = json.loads((tiny_package / "eval" / "metrics.json").read_text())["metrics"]["per_class"]
    for label, row in remade["per_class"].data["per_class"].items():
        assert (
            row["f1"] == pytest.approx(metrics[label]["f1"]) and row["support"] == metrics[label]["support"]
        )

    wrong = json.loads((tiny_package / "eval" / "misclassified.json").read_text())
    data = remade["misclassified"].data
    assert data["total_wrong"] == len(wrong) == int(cm.sum() - np.trace(cm))
    confident = sorted(wrong, key=lambda w: -w["confidence"])[:24]
    assert [e["path"] for e in data["entries"]] == [w["path"] for w in confident]
    assert [e["confidence"] for e in data["entries"]] == sorted(
        (e["confidence"] for e in data["entries"]), reverse=True
    )


def test_misclassified_grid_with_no_mistakes_says_so(tmp_path):
    from training.visualize import plot_misclassified

    probs = np.eye(3)[[0, 1, 2, 1]] * 0.9 + 0.03
    data = plot_misclassified(
        np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 2, 1]), probs, ["a", "b", "c"], tmp_path / "m.png"
    )
    assert data == {"total_wrong": 0, "entries": []}
    assert_not_blank(tmp_path / "m.png", min_std=2, min_colors=5)


def test_pictures_that_need_missing_data_are_rows_not_crashes(package_copy):
    from training.visualize import read_index, write_plots

    results = {r.kind: r for r in write_plots(package_copy, data="/nonexistent/data")}
    needs_data = {
        "samples", "augmented", "embedding_class", "embedding_correct", "grand_tour", "misclassified", "gradcam"
    }
    for kind, r in results.items():
        if kind in needs_data and not (kind == "misclassified" and r.data.get("total_wrong") == 0):
            assert r.status == "skipped" and "/nonexistent/data" in r.reason and "--data" in r.reason, (
                kind,
                r,
            )
            assert not (package_copy / _file(kind)).exists()
        else:
            assert r.ok, (kind, r.reason)
    assert read_index(package_copy)["samples"]["status"] == "skipped"
    verify_package(package_copy)  # the manifest follows the removed and rewritten pictures


# ------------------------------------------------------------------------------------------- the page


def _page_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/(?:png|gif);base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_page_is_self_contained_and_complete(report_package):
    page = (report_package / "index.html").read_text()
    manifest = verify_package(report_package)  # index.html is recorded with its sha256
    assert "index.html" in manifest.files
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page), "the page must not load anything"
    images = _page_images(page)
    assert len(images) == len(_kinds())
    files = {hashlib.sha256((report_package / _file(k)).read_bytes()).hexdigest() for k in _kinds()}
    assert {hashlib.sha256(i).hexdigest() for i in images} == files
    # the model card and the metrics
    for text in (
        manifest.tag,
        manifest.dataset.fingerprint,
        "small_cnn",
        "32x32x3 uint8 RGB",
        "3: 0, 1, 2",
        f"{manifest.metrics['accuracy']:.4f}",
        "majority baseline",
        ", ".join(f"{k} {v:,}" for k, v in manifest.dataset.split_counts.items()),
    ):
        assert text in page, text
    for kind in _kinds():
        assert f"id='plot-{kind}'" in page
    assert "id='optimization'" not in page  # no optimization report yet
    assert "id='explanations'" in page and "src='data:image/gif;base64," in page  # Grad-CAM, the tour


def test_report_page_includes_the_optimization_report(package_copy):
    from training.optimize import optimize_config_for, run_optimize
    from training.report import write_report

    config = optimize_config_for(read_manifest(package_copy), None, ["optimize.latency=false"])
    run_optimize(package_copy, config, variants=["fp32.tflite", "fp16.tflite"])
    theirs = {n: (package_copy / n).read_bytes() for n in ("report.md", "report.html", "report.json")}
    variants = json.loads(theirs["report.json"])["variants"]
    outcome = write_report(package_copy)
    assert outcome.path == package_copy / "index.html" and outcome.optimization and outcome.made == []
    page = outcome.path.read_text()
    section = page.split("id='optimization'")[1]
    rows = re.findall(r"<tr><td class='l'>([^<]+)</td><td class='l'><span class='s-(\w+)'>", section)
    assert rows == [(v["variant"], v["status"]) for v in variants]
    assert [r[0] for r in rows] == ["fp32.tflite", "fp16.tflite"] and rows[0][1] == "passed"
    passed = sum(v["status"] == "passed" for v in variants)
    assert f"{passed} of 2 variants passed" in section
    assert {n: (package_copy / n).read_bytes() for n in theirs} == theirs  # their files are left alone
    verify_package(package_copy)


def _chromium(*args: str, user_data: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _body_state(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/system-deps.sh installs it)")
def test_report_page_renders_in_headless_chromium(report_package, tmp_path):
    import html

    page = report_package / "index.html"
    res = _chromium("--dump-dom", page.as_uri(), user_data=tmp_path / "profile1")
    assert res.returncode == 0, res.stderr[-2000:]
    state = _body_state(res.stdout)
    assert state.get("data-check") == "done", state
    assert int(state["data-images"]) == len(_kinds()) == int(state["data-images-loaded"]), state
    assert json.loads(html.unescape(state["data-errors"])) == []

    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    res = _chromium(
        "--hide-scrollbars",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        page.as_uri(),
        user_data=tmp_path / "profile2",
    )
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert_not_blank(shot)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/system-deps.sh installs it)")
def test_the_in_page_checker_catches_broken_images_and_errors(report_package, tmp_path):
    """A control: the same page with a broken image, a blocked request and a script error reports all three."""
    import html

    page = (report_package / "index.html").read_text()
    broken = (
        "<img alt='broken' src='data:image/png;base64,iVBORw0KGgoAAAA='>"
        "<img alt='remote' src='http://127.0.0.1:9/x.png'><script>undefinedFunction()</script></main>"
    )
    bad = tmp_path / "bad.html"
    bad.write_text(page.replace("</main>", broken))
    res = _chromium("--dump-dom", bad.as_uri(), user_data=tempfile.mkdtemp(dir=tmp_path))
    state = _body_state(res.stdout)
    assert int(state["data-images"]) == len(_kinds()) + 2
    assert int(state["data-images-loaded"]) == len(_kinds())
    assert set(state["data-broken-images"].split(",")) == {"broken", "remote"}
    errors = " | ".join(json.loads(html.unescape(state["data-errors"])))
    assert "undefinedFunction" in errors and "blocked" in errors, errors


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_plot_and_report_verbs(package_copy, tmp_path):
    res = run_cli("plot", str(package_copy), "confusion", "--out", str(tmp_path / "cm.png"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert str(tmp_path / "cm.png") in res.stdout
    assert_not_blank(tmp_path / "cm.png")

    res = run_cli("plot", str(package_copy), "samples", "--data", "/nonexistent/data")
    assert res.returncode == 1 and "skipped" in res.stderr and "--data" in res.stderr

    res = run_cli("plot", str(package_copy), "confusion", "filters", "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and res.stderr.startswith("error: --out takes one picture")

    res = run_cli("plot", str(package_copy), "nope")
    assert res.returncode == 2 and "invalid choice: 'nope'" in res.stderr and "confusion" in res.stderr

    out = tmp_path / "page.html"
    res = run_cli("report", str(package_copy), "--only", "confusion", "per_class", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == str(out)
    assert len(_page_images(out.read_text())) == 2
    assert not (package_copy / "index.html").exists()  # --out leaves the package alone

    res = run_cli("report", str(package_copy), "--set", "report.nope=1")
    assert res.returncode == 2 and "report.nope" in res.stderr


def test_train_without_recording_and_with_fine_tuning(small_demo_dir, tmp_path):
    """Fine-tuning marks the phase boundary (under MirroredStrategy); report.record=false records nothing, says so."""
    common = [
        str(ROOT / "configs" / "demo.yaml"),
        "--data",
        str(small_demo_dir),
        "--output",
        str(tmp_path),
        "--quiet",
    ]
    sets = [
        "train.epochs=2",
        "train.early_stopping_patience=0",
        "train.fine_tune.enabled=true",
        "train.fine_tune.epochs=1",
        "train.fine_tune.unfreeze_layers=3",
        "report.record_every=1",
        "report.record_layers=[conv2,probabilities]",
        "report.kinds=[learning_curves,weights,val_predictions]",
        "train.distribution=mirrored",  # recording watches distributed variables in a replica context
        "train.label_smoothing=0.1",
    ]
    res = run_cli("train", *common, *[a for s in sets for a in ("--set", s)])
    assert res.returncode == 0, res.stderr[-2000:]
    pkg = Path(res.stdout.strip().splitlines()[-1])
    from training.visualize import read_index

    rows = read_index(pkg)
    assert set(rows) == {"learning_curves", "weights", "val_predictions"}
    assert rows["learning_curves"]["summary"]["boundary"] == 2.5
    rec = json.loads((pkg / "logs" / "histograms.json").read_text())
    assert rec["layers"] == ["conv2", "probabilities"]
    assert [(r["epoch"], r["phase"]) for r in rec["records"]] == [(0, 1), (1, 1), (2, 1), (3, 2)]
    assert rec["records"][-1]["loss"] < rec["records"][0]["loss"]
    assert rec["records"][-1]["gradients"]["conv2"]["kernel"]["std"] > 0
    preds = json.loads((pkg / "logs" / "val_predictions.json").read_text())
    assert [(r["epoch"], r["phase"]) for r in preds["epochs"]] == [(1, 1), (2, 1), (3, 2)]

    res = run_cli(
        "train",
        *common,
        "--set",
        "train.epochs=1",
        "--set",
        "model.name=quiet",
        "--set",
        "report.record=false",
        "--set",
        "report.kinds=[confusion,gradients]",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    pkg = Path(res.stdout.strip().splitlines()[-1])
    assert (
        not (pkg / "logs" / "histograms.json").exists()
        and not (pkg / "logs" / "val_predictions.json").exists()
    )
    rows = read_index(pkg)
    assert rows["confusion"]["status"] == "ok"
    assert rows["gradients"]["status"] == "skipped" and "report.record=true" in rows["gradients"]["reason"]
    verify_package(pkg)


def test_pipeline_writes_the_report_page_before_registering(small_demo_dir, tmp_path):
    from shipyard import api

    overrides = {k: v for k, _, v in (kv.partition("=") for kv in TINY_TRAIN)}
    overrides.update({"model.name": "tiny-page", "train.epochs": 1, "report.kinds": ["class_histogram", "confusion"]})
    result = api.pipeline(None, data=small_demo_dir, output=tmp_path, optimize=False, overrides=overrides)
    assert result.report_page == result.package / "index.html" and result.report_page.is_file()
    assert "index.html" in verify_package(result.package).files  # recorded before the package was registered
    page = result.report_page.read_text()
    assert "id='plot-confusion'" in page and "id='plot-class_histogram'" in page
    assert "id='plot-gradcam'" not in page  # only the pictures training made (report.kinds)
    assert result.tag == read_manifest(result.package).tag
