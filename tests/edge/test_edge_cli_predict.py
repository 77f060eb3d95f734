"""``shipyard-edge predict`` and the errors every verb reports as one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.cli import main


def run_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def predict_json(capsys, *args: str | Path) -> dict:
    code, out, err = run_cli(capsys, "predict", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_predict_package_json_gives_top_k_with_labels(edge_assets, capsys):
    images = [edge_assets.data_dir / p for p in edge_assets.test_paths]
    result = predict_json(capsys, edge_assets.package, *images, "--top-k", "2")
    assert result["variant"] == "int8"
    assert result["labels_source"] == "manifest"
    assert [p["image"] for p in result["predictions"]] == [str(p) for p in images]
    for pred, label in zip(result["predictions"], edge_assets.test_labels, strict=True):
        assert [item["rank"] for item in pred["top_k"]] == [1, 2]
        assert pred["top_k"][0]["label"] == edge_assets.labels[label]
        assert pred["top_k"][0]["probability"] >= pred["top_k"][1]["probability"]


@pytest.mark.parametrize("variant", ["fp32.tflite", "model.onnx"])
def test_predict_package_float_variant_matches_keras(edge_assets, capsys, variant):
    images = [edge_assets.data_dir / p for p in edge_assets.test_paths]
    result = predict_json(capsys, edge_assets.package, *images, "--variant", variant, "--top-k", "3")
    for pred, ref in zip(result["predictions"], edge_assets.keras_test_probs, strict=True):
        probs = np.zeros(3, np.float32)
        for item in pred["top_k"]:
            probs[item["index"]] = item["probability"]
        np.testing.assert_allclose(probs, ref, atol=1e-5)


def test_predict_table_lists_image_rank_label(edge_assets, capsys):
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    code, out, _ = run_cli(capsys, "predict", edge_assets.package, image, "--top-k", "1")
    assert code == 0
    lines = out.splitlines()
    assert "variant int8" in lines[0]
    assert lines[1].split() == ["image", "rank", "label", "probability"]
    assert lines[3].split()[:3] == [str(image), "1", edge_assets.labels[edge_assets.test_labels[0]]]


def test_batch_size_does_not_change_results(edge_assets, capsys):
    images = [edge_assets.data_dir / p for p in edge_assets.test_paths]
    whole = predict_json(capsys, edge_assets.fp32, *images)
    batched = predict_json(capsys, edge_assets.fp32, *images, "--batch-size", "5")
    assert len(batched["predictions"]) == len(images)
    for a, b in zip(whole["predictions"], batched["predictions"], strict=True):
        assert a["top_k"][0]["index"] == b["top_k"][0]["index"]
        prob_a = {i["index"]: i["probability"] for i in a["top_k"]}
        prob_b = {i["index"]: i["probability"] for i in b["top_k"]}
        assert prob_a.keys() == prob_b.keys() == {0, 1, 2}
        np.testing.assert_allclose([prob_a[k] for k in range(3)], [prob_b[k] for k in range(3)], atol=1e-6)


def test_bare_tflite_uses_class_indices_without_labels(edge_assets, capsys):
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    result = predict_json(capsys, edge_assets.fp32, image)
    assert result["labels_source"] == "indices"
    assert result["input"]["dtype"] == "float32"
    assert result["predictions"][0]["top_k"][0]["label"] == str(edge_assets.test_labels[0])
    assert len(result["predictions"][0]["top_k"]) == 3  # top-k 5 is clamped to the 3 classes


def test_bare_tflite_with_label_file(edge_assets, capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("rouge\nvert\nbleu\n\n")
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    result = predict_json(capsys, edge_assets.int8, image, "--labels", labels)
    assert result["labels_source"] == "file"
    assert result["input"]["quantization"] is not None
    assert (
        result["predictions"][0]["top_k"][0]["label"] == ["rouge", "vert", "bleu"][edge_assets.test_labels[0]]
    )


def test_bare_onnx_reads_labels_from_metadata(edge_assets, capsys):
    image = edge_assets.data_dir / edge_assets.test_paths[-1]
    result = predict_json(capsys, edge_assets.onnx, image)
    assert result["labels_source"] == "onnx metadata"
    assert result["predictions"][0]["top_k"][0]["label"] == edge_assets.labels[edge_assets.test_labels[-1]]


def test_bare_model_resizes_images_of_any_size(edge_assets, capsys, tmp_path):
    big = tmp_path / "big_green.png"
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[..., 1] = 220
    Image.fromarray(pixels).save(big)
    result = predict_json(capsys, edge_assets.fp32, big)
    assert result["predictions"][0]["top_k"][0]["index"] == 1


# ----------------------------------------------------------------------------------------- errors
def assert_one_line_error(capsys, args: list, *fragments: str) -> str:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_error_not_a_model_file(edge_assets, capsys, tmp_path):
    fake = tmp_path / "model.tflite"
    fake.write_text("this is a text file, not a model at all\n")
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    assert_one_line_error(capsys, ["predict", fake, image], "neither a TFLite model", "nor an ONNX model")


@pytest.mark.parametrize("asset", ["fp32", "onnx"])
def test_error_truncated_model(edge_assets, capsys, tmp_path, asset):
    source = getattr(edge_assets, asset)
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    assert_one_line_error(capsys, ["predict", cut, image], str(cut), "truncated or corrupt")


def test_error_corrupt_image(edge_assets, capsys, tmp_path):
    good = (edge_assets.data_dir / edge_assets.test_paths[0]).read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[: len(good) // 2])
    assert_one_line_error(
        capsys, ["predict", edge_assets.package, broken], str(broken), "corrupt or truncated"
    )


def test_error_not_an_image(edge_assets, capsys, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    assert_one_line_error(capsys, ["predict", edge_assets.package, text], "not a readable image")


def test_error_unsupported_image_format(edge_assets, capsys, tmp_path):
    gif = tmp_path / "red.gif"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(gif)
    assert_one_line_error(capsys, ["predict", edge_assets.fp32, gif], "is GIF", "allowed formats")


def test_error_missing_image(edge_assets, capsys, tmp_path):
    assert_one_line_error(capsys, ["predict", edge_assets.fp32, tmp_path / "nope.png"], "cannot read")


def test_error_one_channel_model(special_models, edge_assets, capsys):
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    assert_one_line_error(capsys, ["predict", special_models["gray"], image], "1 channel(s)", "3-channel")


def test_error_missing_label_file(edge_assets, capsys, tmp_path):
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    missing = tmp_path / "labels.txt"
    assert_one_line_error(
        capsys,
        ["predict", edge_assets.fp32, image, "--labels", missing],
        f"label file {missing} does not exist",
    )


def test_error_label_file_of_the_wrong_length(edge_assets, capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    assert_one_line_error(
        capsys, ["predict", edge_assets.fp32, image, "--labels", labels], "name 2 classes", "outputs 3"
    )


def test_error_labels_with_a_package(edge_assets, capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    assert_one_line_error(
        capsys, ["predict", edge_assets.package, image, "--labels", labels], "carries its own labels"
    )


def test_error_variant_with_a_bare_file(edge_assets, capsys):
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    assert_one_line_error(
        capsys, ["predict", edge_assets.fp32, image, "--variant", "int8"], "needs a model package"
    )


@pytest.mark.parametrize("verb", ["predict", "bench", "eval"])
def test_error_hash_mismatch(edge_assets, edge_package_copy, capsys, verb):
    path = edge_package_copy / "variants" / "int8.tflite"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    extra = {
        "predict": [edge_assets.data_dir / edge_assets.test_paths[0]],
        "bench": ["--runs", "1", "--min-time", "0"],
        "eval": [edge_assets.data_dir],
    }[verb]
    assert_one_line_error(capsys, [verb, edge_package_copy, *extra], "int8.tflite has sha256", "Re-create")


def test_error_unknown_variant(edge_assets, capsys):
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    assert_one_line_error(
        capsys,
        ["predict", edge_assets.package, image, "--variant", "fp16.tflite"],
        "'fp16.tflite' is not in package",
    )


@pytest.mark.parametrize("case", ["gray", "custom_op"])
def test_installed_command_prints_exactly_one_line_on_error(special_models, edge_assets, case):
    """In a real process the runtime's own log lines (LiteRT prints INFO to fd 2) must not add to the error."""
    image = edge_assets.data_dir / edge_assets.test_paths[0]
    args = {
        "gray": ["predict", special_models["gray"], image],
        "custom_op": ["bench", special_models["custom_op"]],
    }[case]
    exe = Path(sys.executable).parent / "shipyard-edge"
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"shipyard-edge {args[0]}: error: ")
