"""Fixtures of the edge tests: a real, tiny model package built the way training builds one.

The model is a 32 px classifier of an image's dominant colour (red, green, blue) with hand-set weights,
so it is accurate without training and deterministic: float32 input of 0..255 pixels, ``Rescaling`` in
the graph, a 3x3 convolution, global pooling and a softmax. It is converted to fp32 and full-integer
int8 (``uint8`` in and out) TFLite and, with tf2onnx, to ONNX. TensorFlow is only used here, to build.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.manifest import InputContract, Manifest, VariantInfo, record_file, write_manifest
from edge.preprocess import decode_file

SIZE = 32
LABELS = ["red", "green", "blue"]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class EdgeAssets:
    """Everything the edge tests read; treat as read-only (copy before changing)."""

    package: Path
    data_dir: Path
    fp32: Path
    int8: Path
    onnx: Path
    labels: list[str]
    test_paths: list[str]
    test_labels: np.ndarray
    keras_test_probs: np.ndarray


def _color_image(rng: np.random.Generator, cls: int, size: tuple[int, int]) -> Image.Image:
    w, h = size
    pixels = rng.integers(0, 90, size=(h, w, 3))
    pixels[..., cls] = rng.integers(150, 256, size=(h, w))
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def make_dataset(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """Write ``root/<split>/<label>/img_NNNN.(png|jpg)`` images of assorted sizes; return ``root``."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (40, 36), (64, 48), (24, 30)]
    n = 0
    for split, count in per_split.items():
        for cls, label in enumerate(LABELS):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = _color_image(rng, cls, sizes[n % len(sizes)])
                suffix = ".jpg" if i % 3 == 2 else ".png"
                img.save(folder / f"img_{i:04d}{suffix}", quality=95)
                n += 1
    return root


def build_keras_model(num_classes: int = 3, size: int = SIZE, channels: int = 3):
    """The hand-weighted dominant-colour classifier (tf_keras)."""
    from training._tf import keras

    inp = keras.Input((size, size, channels), dtype="float32", name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inp, out, name="colors")
    kernel = np.zeros((3, 3, channels, 4), np.float32)
    for c in range(min(channels, 3)):
        kernel[1, 1, c, c] = 1.0
    kernel[1, 1, :, 3] = 1.0 / channels
    model.get_layer("conv").set_weights([kernel, np.zeros(4, np.float32)])
    dense = np.full((4, num_classes), -6.0, np.float32)
    for c in range(min(3, num_classes)):
        dense[c, c] = 12.0
    dense[3, :] = 0.0
    model.get_layer("probabilities").set_weights([dense, np.zeros(num_classes, np.float32)])
    return model


def to_tflite(model, representative: np.ndarray | None = None, io_type: str = "uint8") -> bytes:
    """fp32 TFLite, or full-integer int8 when ``representative`` is given, with ``io_type`` input and output."""
    from training._tf import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:

        def gen():
            for x in representative:
                yield [x[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, io_type)
        converter.inference_output_type = getattr(tf, io_type)
    return converter.convert()


def to_onnx(model, labels: list[str] | None = None) -> bytes:
    """ONNX (opset 17) of a tf_keras model with tf2onnx, with ``labels`` in metadata_props when given."""
    import tf2onnx

    from training._tf import tf

    spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    if labels is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "labels", json.dumps(labels)
    return proto.SerializeToString()


@pytest.fixture(scope="session")
def edge_assets(tmp_path_factory: pytest.TempPathFactory) -> EdgeAssets:
    """A dataset (train/val/test of red/green/blue) and a full model package built from it."""
    base = tmp_path_factory.mktemp("edge_assets")
    data_dir = make_dataset(base / "data", {"train": 4, "val": 2, "test": 4})
    contract = InputContract(height=SIZE, width=SIZE)
    model = build_keras_model()

    test_files = sorted(p for p in (data_dir / "test").rglob("*") if p.is_file())
    test_paths = [p.relative_to(data_dir).as_posix() for p in test_files]
    test_labels = np.array([LABELS.index(p.parent.name) for p in test_files], dtype=np.int64)
    test_x = np.stack([decode_file(p, contract) for p in test_files])
    keras_probs = model.predict(test_x.astype(np.float32), verbose=0).astype(np.float32)
    train_x = np.stack([decode_file(p, contract) for p in sorted((data_dir / "train").rglob("*.*"))])

    pkg = base / "package"
    (pkg / "keras").mkdir(parents=True)
    (pkg / "variants").mkdir()
    (pkg / "reference").mkdir()
    model.save(pkg / "keras" / "model.keras")
    (pkg / "variants" / "fp32.tflite").write_bytes(to_tflite(model))
    (pkg / "variants" / "int8.tflite").write_bytes(to_tflite(model, train_x))
    (pkg / "variants" / "model.onnx").write_bytes(to_onnx(model, LABELS))
    np.savez_compressed(
        pkg / "reference" / "predictions.npz",
        paths=np.array(test_paths, dtype=str),
        labels=test_labels,
        probabilities=keras_probs,
    )
    manifest = Manifest(name="colors", version="v1", labels=LABELS, input=contract)
    for rel in ("keras/model.keras", "reference/predictions.npz"):
        record_file(pkg, manifest, rel)
    manifest.variants["keras"] = VariantInfo(file="keras/model.keras", format="keras", status="passed")
    for key, rel, fmt, dtype, quant in (
        ("fp32", "variants/fp32.tflite", "tflite", "float32", "none"),
        ("int8", "variants/int8.tflite", "tflite", "uint8", "int8"),
        ("onnx", "variants/model.onnx", "onnx", "float32", "none"),
    ):
        entry = record_file(pkg, manifest, rel)
        manifest.variants[key] = VariantInfo(
            file=rel,
            format=fmt,
            status="passed",
            sha256=entry.sha256,
            bytes=entry.bytes,
            quantization=quant,
            input_dtype=dtype,
            output_dtype=dtype,
        )
    write_manifest(pkg, manifest)
    return EdgeAssets(
        package=pkg,
        data_dir=data_dir,
        fp32=pkg / "variants" / "fp32.tflite",
        int8=pkg / "variants" / "int8.tflite",
        onnx=pkg / "variants" / "model.onnx",
        labels=LABELS,
        test_paths=test_paths,
        test_labels=test_labels,
        keras_test_probs=keras_probs,
    )


@pytest.fixture
def dataset_factory():
    """:func:`make_dataset`, for tests that need a data folder of their own."""
    return make_dataset


@pytest.fixture
def edge_package_copy(edge_assets: EdgeAssets, tmp_path: Path) -> Path:
    """A private copy of the package, free to change."""
    return Path(shutil.copytree(edge_assets.package, tmp_path / "package"))


@pytest.fixture(scope="session")
def special_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """TFLite files the package does not have: a custom operator, several inputs/outputs, a 1-channel input."""
    from training._tf import tf

    base = tmp_path_factory.mktemp("special_models")
    out: dict[str, Path] = {}

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def erfinv(x):
        return {"y": tf.math.erfinv(x) + 1.0}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([erfinv.get_concrete_function()], erfinv)
    converter.allow_custom_ops = True  # Erfinv is no TFLite builtin: it is kept as a custom op
    out["custom_op"] = base / "erfinv.tflite"
    out["custom_op"].write_bytes(converter.convert())

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 8, 8, 3], tf.float32, name="pixels"),
            tf.TensorSpec([None, 4], tf.int32, name="ids"),
        ]
    )
    def two_in_two_out(pixels, ids):
        pooled = tf.reduce_mean(pixels, axis=[1, 2])
        return {
            "pooled": pooled * 2.0,
            "counts": tf.cast(ids, tf.float32) + tf.reduce_sum(pooled, axis=1, keepdims=True),
        }

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [two_in_two_out.get_concrete_function()], two_in_two_out
    )
    out["multi_io"] = base / "multi_io.tflite"
    out["multi_io"].write_bytes(converter.convert())

    rng = np.random.default_rng(1)
    representative = np.stack([np.asarray(_color_image(rng, i % 3, (SIZE, SIZE))) for i in range(12)])
    out["int8_io"] = base / "int8_io.tflite"
    out["int8_io"].write_bytes(to_tflite(build_keras_model(), representative, io_type="int8"))

    gray = build_keras_model(channels=1)
    out["gray"] = base / "gray.tflite"
    out["gray"].write_bytes(to_tflite(gray))
    return out
