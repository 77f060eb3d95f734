"""Grad-CAM looks where the evidence is: on noise images whose class is a bright square at a class-specific
place, the heat map's mass lies on that square."""

from __future__ import annotations

import numpy as np
import pytest

SIZE, PATCH = 32, 10
#: Top-left corner of each class's square.
CORNERS = [(2, 2), (2, 20), (20, 11)]
#: Grad-CAM reads relu3 of the small CNN, an 8x8 map of the 32 px input: one cell is 4 px.
CELL = 4


def _patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CORNERS), n)
    images = rng.integers(0, 140, (n, SIZE, SIZE, 3)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        r, c = CORNERS[label]
        image[r : r + PATCH, c : c + PATCH] = 235
    return images, labels


def _region(label: int, margin: int) -> np.ndarray:
    r, c = CORNERS[label]
    mask = np.zeros((SIZE, SIZE), bool)
    mask[max(0, r - margin) : r + PATCH + margin, max(0, c - margin) : c + PATCH + margin] = True
    return mask


@pytest.fixture(scope="module")
def patch_model():
    from training._tf import keras
    from training.config import ModelConfig, TrainConfig
    from training.models import build_model, compile_model

    x, y = _patch_images(600, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(base="small_cnn", weights="none", freeze="none"), len(CORNERS), (SIZE, SIZE))
    compile_model(model, TrainConfig(learning_rate=0.003), len(CORNERS))
    model.fit(x.astype(np.float32), y, epochs=3, batch_size=32, verbose=0)
    return model


def test_gradcam_mass_falls_on_the_discriminative_patch(patch_model):
    from training.visualize import explanation_layers, grad_cam

    images, labels = _patch_images(60, seed=1)
    probs = patch_model.predict(images.astype(np.float32), verbose=0)
    assert np.mean(probs.argmax(axis=1) == labels) > 0.95  # the model found the squares
    assert explanation_layers(patch_model) == ["relu3"]
    cams = grad_cam(patch_model, images, probs.argmax(axis=1))
    assert cams.shape == (60, SIZE, SIZE)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    inside, near, centred = [], [], []
    for cam, label in zip(cams, labels, strict=True):
        total = cam.sum()
        inside.append(cam[_region(label, 0)].sum() / total)
        near.append(cam[_region(label, CELL)].sum() / total)
        r, c = (cam * rows).sum() / total, (cam * cols).sum() / total
        centred.append(bool(_region(label, 0)[int(r), int(c)]))
    share = PATCH * PATCH / SIZE**2  # the patch's share of the image: about 10%
    near_share = max(_region(label, CELL).mean() for label in range(len(CORNERS)))  # at most 28%
    # Grad-CAM cannot be sharper than one cell of the layer it reads: a clear majority of the mass lies
    # within one cell of the patch, far above that region's share; the patch itself holds about three
    # times its share, and the map's centre of mass lies on the patch.
    assert np.mean(near) > 0.6 and min(near) > 2 * near_share, (np.mean(near), min(near), near_share)
    assert np.mean(inside) > 2.5 * share, (np.mean(inside), share)
    assert np.mean(centred) >= 0.95, np.mean(centred)


def test_choose_explained_takes_the_confident_mistakes_then_a_seeded_sample():
    from training.visualize.explain import choose_explained

    labels = np.array([0, 1, 1, 0, 1, 0])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9], [0.6, 0.4]])
    chosen = choose_explained(labels, probs, wrong=5, right=2, seed=0)
    assert chosen[:2] == [1, 3]  # the wrong ones, most confident first
    assert len(chosen) == 4 and set(chosen[2:]) <= {0, 2, 4, 5}
    assert chosen == choose_explained(labels, probs, wrong=5, right=2, seed=0)
