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
