"""edge.package: reading a package, choosing a variant, verifying it before loading."""

from __future__ import annotations

import pytest

from edge.errors import IntegrityError, PackageError
from edge.manifest import read_manifest, write_manifest
from edge.package import choose_variant, open_package, open_variant_runner


def test_open_package_reads_the_manifest(edge_assets):
    manifest = open_package(edge_assets.package)
    assert manifest.tag == "colors:v1"
    assert manifest.labels == edge_assets.labels


def test_open_package_refuses_a_folder_without_manifest(tmp_path):
    with pytest.raises(PackageError, match=r"no manifest\.json"):
        open_package(tmp_path)


def test_default_variant_is_int8_when_it_passed(edge_assets):
    assert choose_variant(read_manifest(edge_assets.package)) == "int8"


@pytest.mark.parametrize(
    ("status_changes", "removed", "expected"),
    [
        ({"int8": "failed_gate"}, [], "fp32"),
        ({"int8": "not_checked"}, [], "fp32"),
        ({}, ["int8", "fp32"], "onnx"),
        ({"int8": "failed_gate"}, ["fp32", "onnx"], "int8"),  # nothing better: the only runnable one
    ],
)
def test_default_variant_falls_back(edge_assets, status_changes, removed, expected):
    manifest = read_manifest(edge_assets.package)
    for key, status in status_changes.items():
        manifest.variants[key].status = status
    for key in removed:
        del manifest.variants[key]
    assert choose_variant(manifest) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("int8", "int8"), ("fp32.tflite", "fp32"), ("model.onnx", "onnx"), ("variants/fp32.tflite", "fp32")],
)
def test_variant_by_key_or_file_name(edge_assets, name, expected):
    assert choose_variant(read_manifest(edge_assets.package), name) == expected


def test_unknown_variant_lists_the_runnable_ones(edge_assets):
    with pytest.raises(PackageError, match=r"'fp16.tflite' is not in package colors:v1.*int8.tflite"):
        choose_variant(read_manifest(edge_assets.package), "fp16.tflite")


def test_keras_variant_is_not_runnable_on_the_edge(edge_assets):
    with pytest.raises(PackageError, match="is a keras model"):
        choose_variant(read_manifest(edge_assets.package), "keras")


def test_no_runnable_variant_says_to_optimize(edge_assets):
    manifest = read_manifest(edge_assets.package)
    for key in ("int8", "fp32", "onnx"):
        del manifest.variants[key]
    with pytest.raises(PackageError, match=r"no TFLite or ONNX variant.*shipyard optimize"):
        choose_variant(manifest)


@pytest.mark.parametrize(("variant", "fmt"), [(None, "tflite"), ("fp32", "tflite"), ("model.onnx", "onnx")])
def test_open_variant_runner_returns_a_working_runner(edge_assets, variant, fmt):
    runner, manifest, key = open_variant_runner(edge_assets.package, variant, num_threads=1)
    assert runner.format == fmt
    assert manifest.variants[key].format == fmt
    assert (runner.height, runner.width) == (manifest.input.height, manifest.input.width)


def test_open_variant_runner_refuses_a_changed_file(edge_package_copy):
    path = edge_package_copy / "variants" / "int8.tflite"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte: still a loadable model, but not the one packaged
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"int8.tflite has sha256 .* the manifest says"):
        open_variant_runner(edge_package_copy)


def test_open_variant_runner_refuses_a_missing_file(edge_package_copy):
    (edge_package_copy / "variants" / "fp32.tflite").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        open_variant_runner(edge_package_copy, "fp32")


def test_open_variant_runner_refuses_a_size_that_contradicts_the_manifest(edge_package_copy):
    manifest = read_manifest(edge_package_copy)
    manifest.input.height = manifest.input.width = 64
    write_manifest(edge_package_copy, manifest)
    with pytest.raises(PackageError, match="takes 32x32 images but the manifest's input is 64x64"):
        open_variant_runner(edge_package_copy, "fp32")


def test_open_variant_runner_refuses_a_label_count_that_contradicts_the_model(edge_package_copy):
    manifest = read_manifest(edge_package_copy)
    manifest.labels.append("yellow")
    write_manifest(edge_package_copy, manifest)
    with pytest.raises(PackageError, match="outputs 3 classes but the manifest lists 4 labels"):
        open_variant_runner(edge_package_copy, "onnx")
