"""training.data and training.demo: scanning, splitting, both loading schemes, augmentation, reports.

Images are generated here (a few dozen, 16-40 px) or come from scikit-learn's bundled digits.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _support import png_with_corrupt_idat
from PIL import Image

from edge.config import ConfigError
from edge.errors import ShipyardError
from edge.manifest import DatasetInfo, InputContract
from edge.preprocess import decode_file
from training.config import AugmentConfig, DataConfig
from training.data import (
    DataError,
    Datasets,
    Sample,
    balanced_class_weights,
    build_datasets,
    inspect_dataset,
    load_split_arrays,
    make_augmenter,
    plan_loading,
    scan_dataset,
    stratified_split,
)
from training.demo import DEMO_MARKER, write_demo_data

CONTRACT = InputContract(height=16, width=16)
COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def _image(
    rng: np.random.Generator, color: tuple[int, int, int], size: tuple[int, int] = (24, 20)
) -> Image.Image:
    """A noisy image around ``color`` (``size`` is width, height)."""
    base = np.array(color, dtype=np.int16)
    noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _make_folder(root: Path, counts: dict[str, int], seed: int = 0, fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(seed)
    suffix = ".png" if fmt == "PNG" else ".jpg"
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = (24, 20) if i % 2 else (18, 30)
            _image(rng, COLORS.get(name, (128, 128, 128)), size).save(
                root / name / f"{name}_{i:03d}{suffix}", fmt
            )
    return root


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _all_batches(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _expected(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.stack([decode_file(s.path, CONTRACT) for s in samples]),
        np.array([s.label for s in samples], dtype=np.int32),
    )


def _as_multiset(images: np.ndarray, labels: np.ndarray) -> Counter:
    return Counter((int(y), x.tobytes()) for x, y in zip(images, labels, strict=True))


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> Path:
    """3 classes of PNG and JPEG images in several sizes and modes (L, P, RGBA, CMYK, LA)."""
    root = _make_folder(tmp_path_factory.mktemp("mixed"), {"cat": 8, "dog": 7, "owl": 6})
    rng = np.random.default_rng(5)
    _image(rng, (90, 90, 90)).convert("L").save(root / "cat" / "gray.png")
    _image(rng, (200, 40, 40)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "cat" / "palette.png")
    rgba = _image(rng, (40, 200, 40)).convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, np.uint8)
    alpha[:, :6] = 0  # transparent left edge: composited onto white
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "dog" / "rgba.png")
    _image(rng, (40, 40, 200)).convert("CMYK").save(root / "owl" / "cmyk.jpg", "JPEG")
    _image(rng, (40, 40, 200)).convert("LA").save(root / "owl" / "la.png")
    _image(rng, (40, 200, 40)).save(root / "dog" / "photo.jpg", "JPEG")
    return root


# ------------------------------------------------------------------------------------------ scan


def test_scan_class_folders_counts_modes_sizes(mixed_dir: Path) -> None:
    scan = scan_dataset(mixed_dir, DataConfig(seed=1))
    assert scan.layout == "class_folders"
    assert scan.labels == ["cat", "dog", "owl"]
    assert scan.root == mixed_dir.resolve()
    assert scan.skipped == []
    totals = {
        label: sum(scan.class_counts()[s][label] for s in ("train", "val", "test")) for label in scan.labels
    }
    assert totals == {"cat": 10, "dog": 9, "owl": 8}
    assert scan.image_modes == Counter({"RGB": 22, "L": 1, "P": 1, "RGBA": 1, "CMYK": 1, "LA": 1})
    assert scan.formats == Counter({"PNG": 25, "JPEG": 2})
    assert (
        sum(scan.image_sizes.values()) == 27 and (24, 20) in scan.image_sizes and (18, 30) in scan.image_sizes
    )
    assert scan.total_bytes == sum(p.stat().st_size for p in mixed_dir.rglob("*") if p.is_file())
    assert all(s.path.is_absolute() and s.path.is_file() for split in scan.splits.values() for s in split)


def test_stratified_split_reproducible_disjoint_and_covers_every_class(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"cat": 10, "dog": 3, "owl": 2})
    config = DataConfig(val_fraction=0.2, test_fraction=0.2, seed=7)
    a, b = scan_dataset(root, config), scan_dataset(root, config)
    assert a.splits == b.splits and a.fingerprint() == b.fingerprint()
    paths = {split: {s.path for s in a.splits[split]} for split in a.splits}
    assert (
        not paths["train"] & paths["val"]
        and not paths["train"] & paths["test"]
        and not paths["val"] & paths["test"]
    )
    assert len(paths["train"] | paths["val"] | paths["test"]) == 15
    counts = a.class_counts()
    assert counts["val"] == {"cat": 2, "dog": 1, "owl": 0} and counts["test"] == {
        "cat": 2,
        "dog": 1,
        "owl": 0,
    }
    assert counts["train"] == {"cat": 6, "dog": 1, "owl": 2}  # owl has < 3 images: train only
    other = scan_dataset(root, config.model_copy(update={"seed": 8}))
    assert other.splits["val"] != a.splits["val"]
    assert other.fingerprint() == a.fingerprint()  # the files, not the split


def test_stratified_split_of_one_class_does_not_depend_on_the_others() -> None:
    cats = [Sample(Path(f"/d/cat/{i}.png"), 0) for i in range(20)]
    dogs = [Sample(Path(f"/d/dog/{i}.png"), 1) for i in range(20)]
    alone = stratified_split(cats + dogs, ["cat", "dog"], 0.25, 0.0, seed=3)
    shuffled = stratified_split(list(reversed(dogs + cats)), ["cat", "dog"], 0.25, 0.0, seed=3)
    assert alone == shuffled
    assert [s for s in alone["val"] if s.label == 0] == [
        s for s in stratified_split(cats, ["cat", "dog"], 0.25, 0.0, seed=3)["val"]
    ]
    assert len(alone["val"]) == 10 and alone["test"] == []


def test_split_folder_layout(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _make_folder(root / "train", {"cat": 6, "dog": 5})
    _make_folder(root / "val", {"cat": 2, "dog": 2}, seed=1)
    _make_folder(root / "test", {"cat": 3, "dog": 1}, seed=2)
    scan = scan_dataset(root, DataConfig())
    assert scan.layout == "split_folders"
    assert scan.labels == ["cat", "dog"]
    assert scan.split_counts() == {"train": 11, "val": 4, "test": 4}
    assert all(s.path.parent.parent.name == split for split in scan.splits for s in scan.splits[split])
    assert scan.class_counts()["test"] == {"cat": 3, "dog": 1}


def test_split_folder_layout_without_val_splits_it_off_train(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _make_folder(root / "train", {"cat": 10, "dog": 10})
    _make_folder(root / "test", {"cat": 2, "dog": 2}, seed=2)
    scan = scan_dataset(root, DataConfig(val_fraction=0.2, test_fraction=0.3, seed=0))
    assert scan.split_counts() == {"train": 16, "val": 4, "test": 4}
    assert {s.path.parent.parent.name for s in scan.splits["val"]} == {"train"}
    assert {s.path.parent.parent.name for s in scan.splits["test"]} == {"test"}


def test_split_folder_class_missing_from_train_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _make_folder(root / "train", {"cat": 3, "dog": 3})
    _make_folder(root / "val", {"cat": 1, "owl": 1})
    with pytest.raises(DataError, match=r"owl appear in val/ or test/ .* but not in train/"):
        scan_dataset(root, DataConfig())


def test_bad_files_are_skipped_and_reported_by_path(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"cat": 4, "dog": 4})
    rng = np.random.default_rng(1)
    img = _image(rng, (200, 40, 40), (40, 40))
    bad = {
        root / "cat" / "empty.png": b"",
        root / "cat" / "truncated.png": _png_bytes(img)[:-200],
        root / "cat" / "truncated.jpg": _jpeg_bytes(img)[: len(_jpeg_bytes(img)) // 2],
        root / "dog" / "text.png": b"this is not an image at all\n" * 4,
        root / "dog" / "notes.txt": b"some notes",
        root / "dog" / ".hidden.png": _png_bytes(img),
        root / "stray.png": _png_bytes(img),
    }
    for path, data in bad.items():
        path.write_bytes(data)
    img.save(root / "dog" / "animated.png.gif", "GIF")
    img.save(root / "dog" / "gif_named.png", "GIF")
    img.save(root / "cat" / "scan.tif", "TIFF")
    (root / "cat" / ".ipynb_checkpoints").mkdir()

    scan = scan_dataset(root, DataConfig())
    reasons = {p.relative_to(root).as_posix(): r for p, r in scan.skipped}
    assert set(reasons) == {
        "cat/empty.png",
        "cat/truncated.png",
        "cat/truncated.jpg",
        "dog/text.png",
        "dog/notes.txt",
        "dog/.hidden.png",
        "stray.png",
        "dog/animated.png.gif",
        "dog/gif_named.png",
        "cat/scan.tif",
        "cat/.ipynb_checkpoints",
    }
    assert all(p.is_absolute() for p, _ in scan.skipped)
    assert "0 bytes" in reasons["cat/empty.png"]
    assert "truncated" in reasons["cat/truncated.png"] and "truncated" in reasons["cat/truncated.jpg"]
    assert "not a readable image" in reasons["dog/text.png"]
    assert "not an image file" in reasons["dog/notes.txt"]
    assert reasons["dog/.hidden.png"] == "hidden file"
    assert "not in a class folder" in reasons["stray.png"]
    assert "GIF" in reasons["dog/gif_named.png"] and "allowed formats" in reasons["dog/gif_named.png"]
    assert "unsupported image format (.gif)" in reasons["dog/animated.png.gif"]
    assert "unsupported image format (.tif)" in reasons["cat/scan.tif"]
    assert scan.split_counts()["train"] + scan.split_counts()["val"] + scan.split_counts()["test"] == 8


def test_corrupt_file_that_passes_the_scan_is_skipped_at_decode_in_both_schemes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"cat": 5, "dog": 5})
    corrupt = root / "cat" / "corrupt.png"
    corrupt.write_bytes(png_with_corrupt_idat(_png_bytes(_image(np.random.default_rng(0), (1, 2, 3)))))
    config = DataConfig(path=root, val_fraction=0.0, test_fraction=0.0, batch_size=4)
    assert corrupt in {s.path for s in scan_dataset(root, config).splits["train"]}  # CRCs are valid

    memory = build_datasets(config.model_copy(update={"loading": "memory"}), CONTRACT)
    assert (
        corrupt in dict(memory.scan.skipped) and "corrupt or truncated" in dict(memory.scan.skipped)[corrupt]
    )
    assert corrupt not in {s.path for s in memory.scan.splits["train"]}
    assert len(_all_batches(memory.train)[1]) == 10
    assert memory.dataset_info().skipped_files == 1
    assert memory.dataset_info().fingerprint == scan_dataset(root, config).fingerprint()  # a re-scan matches

    stream = build_datasets(config.model_copy(update={"loading": "stream"}), CONTRACT)
    assert len(_all_batches(stream.train)[1]) == 10
    assert list(stream.decode_failures) == [corrupt]
    with pytest.raises(DataError, match=r"1 of 11 images could not be decoded: .*corrupt\.png"):
        load_split_arrays(scan_dataset(root, config).splits["train"], CONTRACT)


def test_empty_class_folder_is_an_error_that_names_it(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "owl").mkdir()
    with pytest.raises(DataError, match=r"class folder .*owl is empty"):
        scan_dataset(root, DataConfig())


def test_class_folder_with_only_bad_files_is_an_error(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "owl").mkdir()
    (root / "owl" / "a.png").write_bytes(b"")
    with pytest.raises(
        DataError, match=r"class folder .*owl has no usable images \(1 file\(s\) skipped: a\.png"
    ):
        scan_dataset(root, DataConfig())


def test_folder_without_images_or_classes_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    _image(np.random.default_rng(0), (1, 2, 3)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match=r"flat has no class folders"):
        scan_dataset(tmp_path / "flat", DataConfig())
    with pytest.raises(DataError, match=r"does not exist"):
        scan_dataset(tmp_path / "missing", DataConfig())
    one = _make_folder(tmp_path / "one", {"cat": 3})
    with pytest.raises(DataError, match=r"found 1 class \(cat\).*at least 2"):
        scan_dataset(one, DataConfig())


# ------------------------------------------------------------------------------------------ plan


def test_plan_memory_or_stream_with_reasons(mixed_dir: Path) -> None:
    scan = scan_dataset(mixed_dir, DataConfig())
    plan = plan_loading(scan, DataConfig(), (224, 224))
    assert plan.decoded_bytes == 27 * 224 * 224 * 3
    assert (
        plan.scheme == "memory"
        and "fits the 2,048 MB memory budget" in plan.reason
        and "3.9 MB" in plan.reason
    )
    assert (
        plan.batch_size == 16 and "training split" in plan.batch_reason
    )  # largest power of two <= train size

    # 27 images at 600x600 = 27.8 MiB, over a 20 MB budget; a float32 batch of 16 images (66 MB) is shrunk.
    big = plan_loading(scan, DataConfig(memory_budget_mb=20), (600, 600))
    assert big.scheme == "stream" and "exceeds the 20 MB memory budget" in big.reason
    assert big.batch_size == 1 and "halved" in big.batch_reason
    forced = plan_loading(scan, DataConfig(loading="stream"), (16, 16))
    assert forced.scheme == "stream" and "forces 'stream'" in forced.reason
    assert plan_loading(scan, DataConfig(batch_size=5), (16, 16)).batch_size == 5


def test_batch_larger_than_training_split_is_an_error(mixed_dir: Path) -> None:
    config = DataConfig(path=mixed_dir, batch_size=64)
    n_train = len(scan_dataset(mixed_dir, config).splits["train"])
    message = rf"batch_size 64 is larger than the training split \({n_train} images\); set data.batch_size to {n_train} or less"
    with pytest.raises(DataError, match=message):
        build_datasets(config, CONTRACT)
    with pytest.raises(ConfigError, match=r"data\.path is not set"):
        build_datasets(DataConfig(), CONTRACT)


# ------------------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("loading", ["memory", "stream"])
def test_both_schemes_yield_the_pixels_of_edge_preprocess(mixed_dir: Path, loading: str) -> None:
    config = DataConfig(path=mixed_dir, loading=loading, batch_size=4, seed=3)
    ds = build_datasets(config, CONTRACT, augment=False)
    assert isinstance(ds, Datasets) and ds.plan.scheme == loading
    assert ds.train.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    for split, pipeline in (("val", ds.val), ("test", ds.test)):
        images, labels = _all_batches(pipeline)
        want_x, want_y = _expected(ds.scan.splits[split])
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(images, want_x)  # same order, same pixels
        np.testing.assert_array_equal(labels, want_y)
    first = _all_batches(ds.train)
    second = _all_batches(ds.train)
    want = _as_multiset(*_expected(ds.scan.splits["train"]))
    assert _as_multiset(*first) == want and _as_multiset(*second) == want
    assert not np.array_equal(first[1], second[1]) or not np.array_equal(first[0], second[0])  # reshuffled
    again = build_datasets(config, CONTRACT, augment=False)
    np.testing.assert_array_equal(_all_batches(again.train)[0], first[0])  # the seed fixes the order


def test_modes_are_converted_to_rgb(mixed_dir: Path) -> None:
    samples = [Sample(mixed_dir / "dog" / "rgba.png", 1), Sample(mixed_dir / "cat" / "gray.png", 0)]
    images, labels = load_split_arrays([*samples, Sample(mixed_dir / "owl" / "cmyk.jpg", 2)], CONTRACT)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8 and labels.tolist() == [1, 0, 2]
    assert (images[0][:, 0] == 255).all()  # transparent edge composited onto white
    assert (images[1][..., 0] == images[1][..., 1]).all() and (images[1][..., 1] == images[1][..., 2]).all()
    assert images[2][..., 2].mean() > images[2][..., 0].mean() + 60  # CMYK blue stays blue


def test_exif_orientation_is_applied_and_plain_images_are_not_copied() -> None:
    from edge.preprocess import decode, to_rgb

    # a 4x2 image whose left half is red; EXIF orientation 6 = "rotate 90 degrees clockwise to view"
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[:, :2] = (255, 0, 0)
    exif = Image.Image().getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", exif=exif.tobytes())
    out = decode(buf.getvalue(), InputContract(height=4, width=2))
    assert out.shape == (4, 2, 3)
    assert out[0, :, 0].min() > 200 and out[-1, :, 0].max() < 50  # red is on top after the rotation
    plain = Image.fromarray(arr)
    assert to_rgb(plain) is plain  # an RGB image without orientation comes back as is


def test_augmentation_changes_train_batches_only(mixed_dir: Path) -> None:
    augment = AugmentConfig(horizontal_flip=True, rotation=0.1, zoom=0.2, contrast=0.3, brightness=0.3)
    config = DataConfig(path=mixed_dir, batch_size=4, seed=11, augment=augment)
    plain = build_datasets(config, CONTRACT, augment=False)
    augmented = build_datasets(config, CONTRACT)
    assert plain.augmenter is None and augmented.augmenter is not None
    x_plain, y_plain = _all_batches(plain.train)
    x_aug, y_aug = _all_batches(augmented.train)
    np.testing.assert_array_equal(y_plain, y_aug)  # same seed: same order
    assert x_aug.dtype == np.uint8
    changed = [not np.array_equal(a, b) for a, b in zip(x_plain, x_aug, strict=True)]
    assert sum(changed) >= len(changed) - 1
    x_aug2, _ = _all_batches(augmented.train)
    assert not np.array_equal(np.sort(x_aug, axis=None), np.sort(x_aug2, axis=None))  # new draws each epoch
    for split in ("val", "test"):
        np.testing.assert_array_equal(
            _all_batches(getattr(augmented, split))[0], _expected(augmented.scan.splits[split])[0]
        )


def test_make_augmenter_keeps_values_in_range() -> None:
    from training._tf import tf

    assert make_augmenter(AugmentConfig()) is None
    aug = make_augmenter(AugmentConfig(contrast=0.9, brightness=0.9), seed=0)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)), tf.float32)
    out = aug(x, training=True).numpy()
    assert out.min() >= 0.0 and out.max() <= 255.0 and not np.allclose(out, x.numpy())
    np.testing.assert_array_equal(aug(x, training=False).numpy(), x.numpy())


def test_class_weights_are_balanced(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"cat": 12, "dog": 4})
    config = DataConfig(path=root, val_fraction=0.0, test_fraction=0.0, class_weights=True, batch_size=4)
    ds = build_datasets(config, CONTRACT)
    assert ds.class_weights == pytest.approx({0: 16 / (2 * 12), 1: 16 / (2 * 4)})
    assert build_datasets(config.model_copy(update={"class_weights": False}), CONTRACT).class_weights is None
    assert balanced_class_weights([0, 0, 2], 3) == {0: 0.75, 1: 1.0, 2: 1.5}


def test_dataset_info_and_fingerprint(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "a", {"cat": 4, "dog": 4})
    ds = build_datasets(DataConfig(path=root, batch_size=2), CONTRACT)
    info = ds.dataset_info()
    assert isinstance(info, DatasetInfo)
    assert info.split_counts == {"train": 4, "val": 2, "test": 2}
    assert info.class_counts["train"] == {"cat": 2, "dog": 2}
    assert (info.loading, info.batch_size, info.skipped_files) == ("memory", 2, 0)
    assert info.batch_size_reason == "set by data.batch_size" and "fits" in info.loading_reason
    assert len(info.fingerprint) == 64

    copy = shutil.copytree(root, tmp_path / "b")
    assert scan_dataset(copy, DataConfig()).fingerprint() == info.fingerprint  # location-independent
    (copy / "dog" / "dog_000.png").rename(copy / "cat" / "dog_000.png")
    assert scan_dataset(copy, DataConfig()).fingerprint() != info.fingerprint  # relabelled


# --------------------------------------------------------------------------------------- inspect


def test_inspect_report(mixed_dir: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(mixed_dir, tmp_path / "d"))
    (root / "owl" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    report = inspect_dataset(root, DataConfig(batch_size=8), (32, 32))
    assert report.labels == ["cat", "dog", "owl"] and report.total_images == 27
    assert sum(report.split_counts.values()) == 27
    assert report.total_bytes == sum(
        p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "broken.jpg"
    )
    assert report.image_modes["RGB"] == 22 and report.image_modes["CMYK"] == 1
    assert report.formats == {"PNG": 25, "JPEG": 2}
    assert sum(c for *_, c in report.image_sizes) == 27
    assert [p for p, _ in report.skipped] == [str(root.resolve() / "owl" / "broken.jpg")]
    assert report.scheme == "memory" and "0.1 MB" in report.scheme_reason
    assert report.decoded_bytes == 27 * 32 * 32 * 3 and report.batch_size == 8
    assert any("smaller than the 32x32 input" in w for w in report.warnings)

    table = report.to_table()
    for text in (
        "cat",
        "owl",
        "total",
        "27",
        "CMYK",
        "24x20",
        "broken.jpg",
        "loading: memory",
        "batch size: 8",
    ):
        assert text in table
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["loading"]["scheme"] == "memory" and as_dict["class_counts"] == report.class_counts

    tight = inspect_dataset(root, DataConfig(batch_size=500, memory_budget_mb=1), (512, 512))
    assert tight.scheme == "stream" and "exceeds the 1 MB memory budget" in tight.scheme_reason
    assert (
        tight.batch_size is None and "batch_size 500 is larger than the training split" in tight.problems[0]
    )


# ------------------------------------------------------------------------------------------ demo


@pytest.fixture(scope="module")
def demo_digits(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("demo") / "digits"
    return out, write_demo_data(out)


def test_demo_data_counts_and_images(demo_digits: tuple[Path, dict[str, int]]) -> None:
    out, counts = demo_digits
    assert sorted(counts) == [str(d) for d in range(10)] and sum(counts.values()) == 1797
    assert {d.name: len(list(d.glob("*.png"))) for d in out.iterdir() if d.is_dir()} == counts
    with Image.open(next((out / "7").glob("*.png"))) as img:
        assert (img.size, img.mode, img.format) == ((32, 32), "RGB", "PNG")
        pixels = np.asarray(img)
    assert pixels.max() - pixels.min() > 100  # a visible digit, not a flat image
    scan = scan_dataset(out, DataConfig())
    assert scan.skipped == [] and scan.num_images == 1797  # the marker is not reported


def test_demo_data_subset_is_idempotent_and_guarded(
    demo_digits: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    full, counts = demo_digits
    out = tmp_path / "low"
    first = write_demo_data(out, classes=[0, 1, 2, 3, 4], size=16)
    assert first == {k: counts[k] for k in "01234"}
    snapshot = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
    assert len(snapshot) == sum(first.values())
    assert write_demo_data(out, classes=[0, 1, 2, 3, 4], size=16) == first
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")} == snapshot
    write_demo_data(out, classes=[5, 6], size=16)  # rewriting replaces the old classes
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == ["5", "6"]
    assert json.loads((out / DEMO_MARKER).read_text())["classes"] == [5, 6]

    same = write_demo_data(tmp_path / "same", classes=[3])
    first_file = sorted((tmp_path / "same" / "3").glob("*.png"))[0]
    assert (
        same == {"3": counts["3"]} and first_file.read_bytes() == (full / "3" / first_file.name).read_bytes()
    )

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ShipyardError, match=r"not empty and was not written by write_demo_data"):
        write_demo_data(foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(ShipyardError, match=r"pick digits from 0 to 9"):
        write_demo_data(tmp_path / "x", classes=[3, 12])


def test_the_pixel_cap_is_the_callers_from_the_header() -> None:
    """max_pixels decides, not a process-wide Pillow setting; Pillow's own guard stays for absurd headers."""
    import warnings

    from edge.errors import ImageTooLargeError
    from edge.preprocess import open_image
    from serving.loadtest.checks import huge_png_header

    header = huge_png_header(12_000, 12_000)  # 144 megapixels, no pixel data to speak of
    with pytest.raises(ImageTooLargeError, match="144,000,000 pixels"):
        open_image(header)  # default cap: 50 megapixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert open_image(header, max_pixels=150_000_000).size == (12_000, 12_000)
    with pytest.raises(ImageTooLargeError, match="too large"):
        open_image(huge_png_header(), max_pixels=10**11)  # 10 gigapixels: Pillow refuses it first


def test_inspect_with_the_training_config_prints_the_step_memory_arithmetic(mixed_dir: Path) -> None:
    """With the whole config, ``data inspect`` sizes the batch from the configured model, as training does."""
    from training.config import TrainingConfig

    training = TrainingConfig(model={"base": "small_cnn", "weights": "none", "freeze": "none"}, data={"step_memory_mb": 2})
    report = inspect_dataset(mixed_dir, training.data, (32, 32), training=training)
    memory = report.to_dict()["loading"]["step_memory"]
    assert memory["batch_per_replica"] == report.batch_size
    assert memory["total_bytes"] <= 2 * 2**20 < (
        memory["total_bytes"] + report.batch_size * (memory["input_per_image"] + memory["activations_per_image"])
    )  # the largest power of two that fits
    table = report.to_table()
    for text in ("step memory", "activations", "weights", "gradients", "optimizer slots", "2 MB step budget"):
        assert text in table, text
