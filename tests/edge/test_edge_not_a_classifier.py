"""``predict`` refuses models whose output is not ``[N, classes]`` scores (detectors, segmenters, several
outputs) with one line that names the outputs and says ``bench`` still works; ``bench`` then runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main

SIZE = 16


def _convert(fn, path: Path) -> Path:
    from training._tf import tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def non_classifiers(tmp_path_factory) -> dict[str, Path]:
    """Tiny image models with a box tensor, a mask, and boxes plus scores."""
    from training._tf import tf

    base = tmp_path_factory.mktemp("non_classifiers")
    spec = [tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")]

    @tf.function(input_signature=spec)
    def boxes(image):  # a face-detector-like output: 12 anchors x 4 box coordinates
        pooled = tf.reduce_mean(image, axis=[1, 2])
        return tf.tile(pooled[:, None, :1], [1, 12, 4])

    @tf.function(input_signature=spec)
    def mask(image):  # a segmenter: one score per pixel and class
        return tf.nn.softmax(tf.concat([image[..., :1], image[..., 1:2]], axis=-1))

    @tf.function(input_signature=spec)
    def detector(image):
        pooled = tf.reduce_mean(image, axis=[1, 2])
        return {
            "boxes": tf.tile(pooled[:, None, :1], [1, 6, 4]),
            "scores": tf.tile(pooled[:, None, :1], [1, 6, 1]),
        }

    return {
        "boxes": _convert(boxes, base / "boxes.tflite"),
        "mask": _convert(mask, base / "mask.tflite"),
        "detector": _convert(detector, base / "detector.tflite"),
    }


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("RGB", (SIZE, SIZE), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("boxes", ["1 output(s): probabilities float32 (1, 12, 4)"]),
        ("mask", [f"(1, {SIZE}, {SIZE}, 2)"]),
        ("detector", ["2 output(s)", "float32 (1, 6, 4)", "float32 (1, 6, 1)"]),
    ],
)
def test_predict_refuses_a_model_that_is_not_a_classifier(non_classifiers, image, capsys, case, fragments):
    assert main(["predict", str(non_classifiers[case]), str(image)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and not captured.out, captured
    assert "is not an image classifier" in lines[0] and "`shipyard-edge bench` still works on it" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert main(["bench", str(non_classifiers[case]), "--runs", "2", "--min-time", "0", "--json"]) == 0
