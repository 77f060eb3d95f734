"""The model builder: every base builds as one flat graph, freezing, heads, losses, weights errors."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import ConfigError
from training._tf import keras
from training.config import ModelConfig, TrainConfig
from training.models import (
    BACKBONES,
    OUTPUT_NAME,
    base_layer_names,
    build_model,
    compile_model,
    embedding_model,
    load_keras_model,
)


@pytest.mark.parametrize("base", sorted(BACKBONES))
def test_every_base_builds_flat_and_frozen(base):
    size = 32 if base == "small_cnn" else 64
    model = build_model(ModelConfig(base=base, weights="none", head={"dense": [8]}), 3, (size, size))
    assert not [layer for layer in model.layers if isinstance(layer, keras.Model)], "nested Model found"
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 3)
    base_names = set(base_layer_names(model))
    assert base_names, "no base layers found"
    trainable_base = [layer for layer in model.layers if layer.name in base_names and layer.trainable and layer.weights]
    assert trainable_base == []
    probs = model(np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype("float32")).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_freeze_last_n_keeps_batchnorm_frozen(tmp_path):
    donor = build_model(ModelConfig(base="small_cnn", weights="none"), 3, (32, 32))
    donor.save(tmp_path / "w.keras")
    model = build_model(ModelConfig(base="small_cnn", weights=str(tmp_path / "w.keras"), freeze=4), 3, (32, 32))
    trainable = [layer.name for layer in model.layers if layer.trainable and layer.weights and layer.name in base_layer_names(model)]
    # the last 4 base layers are relu3, bn3, conv3, pool2: conv3 trains, bn3 stays frozen (inference mode)
    assert trainable == ["conv3"]
    # from scratch (no pretrained weights) BatchNorm must train
    scratch = build_model(ModelConfig(base="small_cnn", weights="none", freeze="none"), 3, (32, 32))
    assert scratch.get_layer("bn1").trainable


def test_cut_at_named_layer_and_unknown_layer():
    model = build_model(ModelConfig(base="small_cnn", weights="none", cut_at="relu2"), 3, (32, 32))
    assert "conv3" not in [layer.name for layer in model.layers]
    with pytest.raises(ConfigError, match="cut_at = 'nope' is not a layer"):
        build_model(ModelConfig(base="small_cnn", weights="none", cut_at="nope"), 3, (32, 32))


def test_unknown_base_and_bad_weights(tmp_path):
    with pytest.raises(ConfigError, match="not a known base; choose one of: mobilenet_v2"):
        build_model(ModelConfig(base="vgg99", weights="none"), 3, (32, 32))
    with pytest.raises(ConfigError, match="neither 'imagenet', 'none' nor an existing"):
        build_model(ModelConfig(base="small_cnn", weights=str(tmp_path / "w.h5")), 3, (32, 32))
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_model(ModelConfig(base="small_cnn", weights="imagenet"), 3, (32, 32))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_model(ModelConfig(base="small_cnn", weights="none"), 1, (32, 32))


def test_imagenet_offline_fails_fast_with_a_fix(monkeypatch, tmp_path):
    # Keras caches downloads in ~/.keras; point it at an empty folder so the download is really attempted.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("tf_keras.src.utils.data_utils.urlretrieve", _refuse, raising=False)
    with pytest.raises(ConfigError, match=r"could not download ImageNet weights.*model.weights: /path/to/file.h5"):
        build_model(ModelConfig(base="mobilenet_v2", weights="imagenet", alpha=0.35), 3, (96, 96))


def _refuse(*args, **kwargs):
    raise OSError("network is unreachable")


def test_local_weights_file_is_loaded(tmp_path):
    cfg = ModelConfig(base="small_cnn", weights="none")
    donor = build_model(cfg, 3, (32, 32))
    donor.get_layer("conv1").set_weights([np.full_like(w, 0.5) for w in donor.get_layer("conv1").get_weights()])
    path = tmp_path / "donor.keras"
    keras.Model(donor.inputs, donor.outputs).save(path)
    model = build_model(ModelConfig(base="small_cnn", weights=str(path)), 5, (32, 32))
    np.testing.assert_array_equal(model.get_layer("conv1").get_weights()[0], 0.5)


def test_saved_model_as_base_is_flattened_and_transfers_weights(tmp_path):
    donor = build_model(ModelConfig(base="small_cnn", weights="none", head={"dense": [8]}), 5, (32, 32))
    path = tmp_path / "base.keras"
    keras.Model(donor.inputs, donor.outputs).save(path)
    model = build_model(ModelConfig(base="small_cnn", base_model=path, weights="none"), 3, (32, 32))
    assert not [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert model.output_shape == (None, 3)
    np.testing.assert_array_equal(model.get_layer("conv2").get_weights()[0], donor.get_layer("conv2").get_weights()[0])
    names = [layer.name for layer in model.layers]
    assert "head_dense1" not in names, "the donor's head should be cut off"
    assert len(names) == len(set(names))
    with pytest.raises(ConfigError, match="takes \\(32, 32\\) images"):
        build_model(ModelConfig(base_model=path, weights="none"), 3, (64, 64))


@pytest.mark.parametrize("loss", ["crossentropy", "focal"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_losses_and_optimizers_train_and_round_trip(tmp_path, loss, optimizer):
    model = build_model(ModelConfig(base="small_cnn", weights="none", freeze="none"), 4, (32, 32))
    compile_model(model, TrainConfig(loss=loss, optimizer=optimizer, label_smoothing=0.1, top_k=2), 4)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 4, 16)
    hist = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert "top2_accuracy" in hist.history
    path = tmp_path / "m.keras"
    model.save(path)
    again = load_keras_model(path, compile=True)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_embedding_model_outputs_penultimate_features():
    model = build_model(ModelConfig(base="small_cnn", weights="none", head={"dense": [12], "dropout": 0.0}), 3, (32, 32))
    two = embedding_model(model)
    x = np.zeros((2, 32, 32, 3), "float32")
    probs, emb = two.predict(x, verbose=0)
    assert emb.shape == (2, 12)
    w, b = model.get_layer(OUTPUT_NAME).get_weights()
    logits = emb @ w + b
    expect = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expect, atol=1e-5)


def test_load_refuses_a_truncated_model(tmp_path):
    model = build_model(ModelConfig(base="small_cnn", weights="none"), 3, (32, 32))
    path = tmp_path / "m.keras"
    model.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="could not be loaded as a Keras model"):
        load_keras_model(path)


# ----------------------------------------------------------------------------- freezing by name (issue 18)


def _trainable_base(model) -> list[str]:
    return [layer.name for layer in model.layers if layer.name in base_layer_names(model) and layer.trainable and layer.weights]


@pytest.mark.parametrize(
    ("freeze", "trainable"),
    [
        (["conv1", "conv2"], ["bn1", "bn2", "conv3", "bn3"]),  # names
        (["bn*"], ["conv1", "conv2", "conv3"]),  # a glob
        (["re:(conv|bn)[12]"], ["conv3", "bn3"]),  # a regex
        (["BatchNormalization"], ["conv1", "conv2", "conv3"]),  # a layer type
        ({"until": "conv3"}, ["conv3", "bn3"]),  # everything before conv3
        (2, ["bn3"]),  # the last 2 layers train (relu3 has no weights), as before
        ("none", ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]),
        ("all", []),
    ],
)
def test_freeze_by_name_pattern_type_and_range(freeze, trainable):
    model = build_model(ModelConfig(base="small_cnn", weights="none", freeze=freeze), 3, (32, 32))
    assert _trainable_base(model) == trainable


@pytest.mark.parametrize(
    ("freeze", "message"),
    [
        (["conv4"], r"'conv4' matches no base layer.*closest: conv3, conv2, conv1"),
        (["bachnorm*"], r"'bachnorm\*' matches no base layer"),
        (["BatchNormalisation"], r"closest: BatchNormalization"),
        ({"until": "cnv3"}, r"'cnv3' is not a base layer; closest: conv3"),
    ],
)
def test_unknown_freeze_name_names_the_closest_layers(freeze, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(base="small_cnn", weights="none", freeze=freeze), 3, (32, 32))


def test_fine_tune_unfreeze_selection_and_l2():
    from training.config import FineTuneConfig
    from training.models import add_kernel_l2, set_fine_tune_trainable

    model = build_model(ModelConfig(base="small_cnn", weights="none"), 3, (32, 32))
    names = base_layer_names(model)
    chosen = set_fine_tune_trainable(model, names, FineTuneConfig(unfreeze={"from": "conv2"}), freeze_batchnorm=True)
    assert [layer.name for layer in chosen] == ["conv2", "conv3"]  # pretrained-style: BatchNorm stays frozen
    chosen = set_fine_tune_trainable(model, names, FineTuneConfig(unfreeze_layers=3), freeze_batchnorm=False)
    assert [layer.name for layer in chosen] == ["conv3", "bn3"]  # the last 3 layers: conv3, bn3, relu3
    before = len(model.losses)
    assert add_kernel_l2(model, chosen, 0.5) == 1  # conv3's kernel (bn3 has none)
    kernel = model.get_layer("conv3").kernel.numpy()
    assert len(model.losses) == before + 1
    np.testing.assert_allclose(float(model.losses[-1]), 0.5 * np.sum(kernel**2), rtol=1e-5)
    with pytest.raises(ConfigError, match=r"train\.fine_tune\.unfreeze: 'conv9' matches no base layer"):
        set_fine_tune_trainable(model, names, FineTuneConfig(unfreeze=["conv9"]), freeze_batchnorm=True)


def test_head_batch_norm():
    model = build_model(ModelConfig(base="small_cnn", weights="none", head={"dense": [8], "batch_norm": True}), 3, (32, 32))
    names = [layer.name for layer in model.layers]
    assert names.index("head_pool") < names.index("head_bn0") < names.index("head_dense1") < names.index("head_bn1")
    assert "head_bn0" not in base_layer_names(model)
    plain = build_model(ModelConfig(base="small_cnn", weights="none"), 3, (32, 32))
    assert not [n for n in (layer.name for layer in plain.layers) if n.startswith("head_bn")]


# ------------------------------------------------------------------------- batch size from memory (issue 18)


def test_larger_model_gets_a_smaller_batch_under_the_same_budget():
    from types import SimpleNamespace

    from training.config import DataConfig, TrainingConfig
    from training.data.plan import choose_batch
    from training.step_memory import measure_step_memory

    scan = SimpleNamespace(splits={"train": [None] * 1000}, root="data")
    data = DataConfig(step_memory_mb=24)
    small = TrainingConfig(model={"base": "small_cnn", "weights": "none", "freeze": "none"})
    large = TrainingConfig(model={"base": "small_cnn", "weights": "none", "freeze": "none", "alpha": 4.0})
    m_small, m_large = (measure_step_memory(c, 10, (64, 64)) for c in (small, large))
    assert m_large.activations_per_image > 3 * m_small.activations_per_image and m_large.weights > 10 * m_small.weights
    b_small, _ = choose_batch(scan, data, (64, 64), m_small)
    b_large, why_large = choose_batch(scan, data, (64, 64), m_large)
    assert b_large < b_small <= 32
    assert m_large.total(b_large) <= 24 * 2**20 < m_large.total(2 * b_large)  # the largest power of two that fits
    for text in ("input", "activations", "weights", "gradients", "optimizer slots"):
        assert text in why_large
    # a frozen base keeps no activations for backpropagation: the same network, frozen, costs less per image
    frozen = measure_step_memory(large.model_copy(update={"model": large.model.model_copy(update={"freeze": "all"})}), 10, (64, 64))
    assert frozen.activations_per_image < m_large.activations_per_image and frozen.gradients < m_large.gradients
    # sgd keeps one slot per trainable weight, adam two
    sgd = measure_step_memory(small.model_copy(update={"train": small.train.model_copy(update={"optimizer": "sgd"})}), 10, (64, 64))
    assert 2 * sgd.optimizer_slots == m_small.optimizer_slots
    # the global batch scales with the replicas
    assert choose_batch(scan, data, (64, 64), m_small, replicas=2)[0] == 2 * b_small


# ------------------------------------------------------------------------------- spatial transformer (issue 18)


def test_affine_sampler_identity_and_shift():
    from training.layers import AffineSampler

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 8, 10, 3)).astype("float32")
    identity = np.tile([[1, 0, 0, 0, 1, 0]], (2, 1)).astype("float32")
    sampler = AffineSampler()
    np.testing.assert_allclose(sampler([images, identity]).numpy(), images, atol=1e-3)
    # x_in = x + 2/(W-1): every output pixel reads the input pixel one column to the right; the last column reads zeros
    shift = identity.copy()
    shift[:, 2] = 2.0 / 9
    out = sampler([images, shift]).numpy()
    np.testing.assert_allclose(out[:, :, :-1], images[:, :, 1:], atol=1e-3)
    np.testing.assert_allclose(out[:, :, -1], 0.0, atol=1e-3)


def _stn_model():
    model = build_model(
        ModelConfig(base="small_cnn", weights="none", spatial_transformer={"enabled": True}), 3, (32, 32)
    )
    theta = model.get_layer("stn_theta")
    kernel, _ = theta.get_weights()
    # a rotation by ~10 degrees, a zoom and a shift, so that the sampler really interpolates
    theta.set_weights([kernel, np.array([0.95, -0.17, 0.05, 0.17, 0.95, -0.08], dtype="float32")])
    return model


def test_stn_is_identity_at_start_and_not_part_of_the_base():
    model = build_model(
        ModelConfig(base="small_cnn", weights="none", spatial_transformer={"enabled": True}, freeze="all"), 3, (32, 32)
    )
    stn = [layer for layer in model.layers if layer.name.startswith("stn_")]
    assert stn and not set(base_layer_names(model)) & {layer.name for layer in stn}
    assert all(layer.trainable for layer in stn)
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    warped = keras.Model(model.inputs, model.get_layer("stn_sampler").output)(images).numpy()
    np.testing.assert_allclose(warped, images, atol=1e-2)


def test_stn_model_converts_to_builtin_tflite_and_onnx_ops_that_match_keras():
    import onnx

    from edge.runners import OnnxRunner, TFLiteRunner, tflite_custom_ops
    from training.optimize import QuantizationConfig, convert_to_onnx, convert_to_tflite

    model = _stn_model()
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    expected = model.predict(images.astype("float32"), verbose=0)
    tflite = convert_to_tflite(model, QuantizationConfig.for_float32())
    assert tflite_custom_ops(tflite) == []
    np.testing.assert_allclose(TFLiteRunner(tflite).predict(images), expected, atol=1e-4)
    onnx_bytes = convert_to_onnx(model)
    assert {node.domain for node in onnx.load_from_string(onnx_bytes).graph.node} <= {"", "ai.onnx"}
    np.testing.assert_allclose(OnnxRunner(onnx_bytes).predict(images), expected, atol=1e-4)


def test_stn_model_saves_and_loads_safely(tmp_path):
    model = _stn_model()
    model.save(tmp_path / "stn.keras")
    again = load_keras_model(tmp_path / "stn.keras")
    images = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(again(images).numpy(), model(images).numpy(), atol=1e-5)
