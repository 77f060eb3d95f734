"""The runners on real models: parity with Keras, quantized inputs and outputs, the low-level API."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import ModelFileError
from edge.manifest import InputContract
from edge.preprocess import decode_file
from edge.runners import TFLiteRunner, open_runner, tflite_custom_ops


@pytest.fixture(scope="module")
def test_pixels(edge_assets) -> np.ndarray:
    contract = InputContract(height=32, width=32)
    return np.stack([decode_file(edge_assets.data_dir / p, contract) for p in edge_assets.test_paths])


@pytest.mark.parametrize("variant", ["fp32", "onnx"])
def test_float_variants_match_keras(edge_assets, test_pixels, variant):
    runner = open_runner(getattr(edge_assets, variant), num_threads=1)
    probs = runner.predict(test_pixels)
    np.testing.assert_allclose(probs, edge_assets.keras_test_probs, atol=1e-5)


def test_onnx_threads_can_be_told_not_to_spin(edge_assets, test_pixels):
    """What the server asks for: ONNX Runtime's threads sleep between runs instead of busy-waiting."""
    key = "session.intra_op.allow_spinning"
    spinning, quiet = open_runner(edge_assets.onnx), open_runner(edge_assets.onnx, spin=False)
    assert quiet._sess.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have"):  # unset: ONNX Runtime's default, spinning
        spinning._sess.get_session_options().get_session_config_entry(key)
    np.testing.assert_array_equal(quiet.predict(test_pixels), spinning.predict(test_pixels))


@pytest.mark.parametrize("asset", ["int8", "int8_io"])
def test_int8_variants_agree_on_top1(edge_assets, special_models, test_pixels, asset):
    path = edge_assets.int8 if asset == "int8" else special_models["int8_io"]
    runner = open_runner(path, num_threads=1)
    assert runner.input_quant is not None
    assert runner.input_dtype == (np.uint8 if asset == "int8" else np.int8)
    probs = runner.predict(test_pixels)
    assert probs.dtype == np.float32
    assert (probs.argmax(1) == edge_assets.keras_test_probs.argmax(1)).all()
    assert np.abs(probs - edge_assets.keras_test_probs).max() < 0.05  # dequantized outputs


def test_int8_input_is_quantized_with_scale_and_zero_point(special_models, test_pixels):
    runner = open_runner(special_models["int8_io"], num_threads=1)
    scale, zero = runner.input_quant
    assert zero != 0  # an int8 input of 0..255 pixels is offset
    prepared = runner.prepare(test_pixels)
    expected = np.clip(np.round(test_pixels.astype(np.float64) / scale + zero), -128, 127).astype(np.int8)
    assert prepared.dtype == np.int8
    np.testing.assert_array_equal(prepared, expected)


def test_uint8_input_with_unit_scale_is_passed_through(edge_assets, test_pixels):
    runner = open_runner(edge_assets.int8, num_threads=1)
    np.testing.assert_array_equal(runner.prepare(test_pixels), test_pixels)


@pytest.mark.parametrize("asset", ["fp32", "int8", "onnx"])
def test_batch_sizes_give_the_same_probabilities(edge_assets, test_pixels, asset):
    runner = open_runner(getattr(edge_assets, asset), num_threads=1)
    whole = runner.predict(test_pixels)
    one_by_one = np.concatenate([runner.predict(test_pixels[i : i + 1]) for i in range(len(test_pixels))])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-6)


def test_low_level_api_runs_several_inputs_and_outputs(special_models):
    runner = open_runner(special_models["multi_io"], num_threads=1)
    assert [s.dtype for s in runner.input_specs] == [np.dtype(np.float32), np.dtype(np.int32)]
    assert len(runner.output_specs) == 2
    pixels = np.full((2, 8, 8, 3), 0.5, np.float32)
    ids = np.arange(8, dtype=np.int32).reshape(2, 4)
    runner.set_inputs([pixels, ids])
    runner.invoke()
    outputs = list(runner.get_outputs().values())
    by_shape = {o.shape: o for o in outputs}
    np.testing.assert_allclose(by_shape[(2, 3)], np.full((2, 3), 1.0))  # mean 0.5 * 2
    np.testing.assert_allclose(by_shape[(2, 4)], ids + 1.5)  # ids + sum of the pooled means


def test_low_level_api_wants_one_array_per_input(special_models):
    runner = open_runner(special_models["multi_io"], num_threads=1)
    with pytest.raises(ModelFileError, match="has 2 input"):
        runner.set_inputs([np.zeros((1, 8, 8, 3), np.float32)])


def test_custom_ops_are_listed_from_the_flatbuffer(special_models, edge_assets):
    assert tflite_custom_ops(special_models["custom_op"].read_bytes()) == ["Erfinv"]
    assert tflite_custom_ops(edge_assets.fp32.read_bytes()) == []


def test_custom_op_error_names_the_operator(special_models):
    with pytest.raises(ModelFileError, match=r"needs the custom operator 'Erfinv'"):
        TFLiteRunner(special_models["custom_op"])


def test_check_image_input_refuses_one_channel(special_models):
    runner = open_runner(special_models["gray"], num_threads=1)
    with pytest.raises(ModelFileError, match=r"takes 1 channel\(s\) per pixel"):
        runner.check_image_input()


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2: a container's --cpus=2 / a Kubernetes limit of 2
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # no quota
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),  # neither file: a host, or not Linux
    ],
)
def test_the_cgroup_cpu_quota_caps_the_default_threads(tmp_path, monkeypatch, files, quota):
    import edge.runners as runners

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runners.cgroup_cpu_quota(tmp_path) == quota
    monkeypatch.setattr(runners, "cgroup_cpu_quota", lambda: quota)
    monkeypatch.setattr(runners.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert runners.default_threads() == (quota or 64)
