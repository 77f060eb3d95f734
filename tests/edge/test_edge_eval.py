"""edge.evaluate and ``shipyard-edge eval``: metrics on the device, agreement with the reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import DataError
from edge.evaluate import classification_metrics, evaluate_package, find_images, match_reference


def test_classification_metrics_by_hand():
    # true:  0 0 0 1 1 2 ; predicted: 0 0 1 1 2 2
    m = classification_metrics(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    a, b, c = m["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"]) == (0.5, 0.5)
    assert (c["precision"], c["recall"], c["f1"]) == (0.5, 1.0, pytest.approx(2 / 3))
    assert a["f1"] == pytest.approx(0.8)
    assert m["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])


def test_classification_metrics_class_without_predictions_scores_zero():
    m = classification_metrics(np.array([0, 1]), np.array([0, 0]), ["a", "b", "c"])
    assert m["per_class"][1] == {"label": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro"]["recall"] == pytest.approx(
        0.5
    )  # classes without support are left out of the macro average


def test_classification_metrics_refuses_bad_indices():
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.array([0, 3]), np.array([0, 0]), ["a", "b"])


def test_match_reference_by_relative_path():
    ref = ["test/3/img_0012.png", "test/4/img_0001.png", "7/a.png", "train/1/x.png", "val/1/x.png"]
    local = [
        "test/3/img_0012.png",  # equal
        "4/img_0001.png",  # DATA_DIR is the test folder: a suffix of the reference
        "data/7/a.png",  # the reference is a suffix of the local path
        "1/x.png",  # would match two references: left alone
        "img_0012.png",  # the class folder must agree too
        "test/9/img_0012.png",  # other class
        "train/3/img_0012.png",  # other split: not the same image
    ]
    assert match_reference(local, ref) == [0, 1, 2, None, None, None, None]


def test_find_images_in_split_and_class_layouts(edge_assets, tmp_path):
    images, split, skipped = find_images(edge_assets.data_dir)
    assert split == "test" and len(images) == 12 and not skipped
    assert {img.relpath for img in images} == set(edge_assets.test_paths)
    images, split, _ = find_images(edge_assets.data_dir, "all")
    assert split == "all" and len(images) == 3 * (4 + 2 + 4)
    images, split, _ = find_images(edge_assets.data_dir / "test")
    assert split == "all" and {img.class_name for img in images} == set(edge_assets.labels)
    with pytest.raises(DataError, match="'holdout' is not a folder"):
        find_images(edge_assets.data_dir, "holdout")
    with pytest.raises(DataError, match="does not exist"):
        find_images(tmp_path / "missing")


def test_eval_package_on_its_data(edge_assets):
    result = evaluate_package(edge_assets.package, edge_assets.data_dir, threads=1)
    assert result.variant == "int8" and result.split == "test"
    assert result.images == 12
    assert result.accuracy == 1.0
    assert result.confusion == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    ref = result.reference
    assert ref.matched == ref.total == 12
    assert ref.top1_agreement == 1.0
    assert 0 < ref.max_abs_diff < 0.05  # int8 against the float reference
    assert ref.label_mismatches == 0


def test_eval_float_variant_agrees_exactly_from_the_test_folder(edge_assets):
    result = evaluate_package(edge_assets.package, edge_assets.data_dir / "test", variant="fp32", threads=1)
    assert result.reference.matched == 12
    assert result.reference.max_abs_diff < 1e-5


def test_eval_reads_the_reference_only_when_the_manifest_vouches_for_it(edge_assets, edge_package_copy):
    from edge.errors import IntegrityError
    from edge.evaluate import REFERENCE_FILE
    from edge.manifest import read_manifest, write_manifest

    reference = edge_package_copy / REFERENCE_FILE
    reference.write_bytes(reference.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        evaluate_package(edge_package_copy, edge_assets.data_dir, threads=1)
    manifest = read_manifest(edge_package_copy)
    del manifest.files[REFERENCE_FILE]
    write_manifest(edge_package_copy, manifest)
    assert not evaluate_package(edge_package_copy, edge_assets.data_dir, threads=1).reference.available  # unlisted: unread
    reference.unlink()
    manifest.files[REFERENCE_FILE] = read_manifest(edge_assets.package).files[REFERENCE_FILE]
    write_manifest(edge_package_copy, manifest)
    assert not evaluate_package(edge_package_copy, edge_assets.data_dir, threads=1).reference.available  # left off


def test_eval_measures_mistakes(edge_assets, dataset_factory, tmp_path):
    data = dataset_factory(tmp_path / "data", {"test": 3}, seed=5)
    # two green images filed as red: the model (rightly) calls them green
    for name in ("img_0000.png", "img_0001.png"):
        shutil.move(data / "test" / "green" / name, data / "test" / "red" / f"moved_{name}")
    result = evaluate_package(edge_assets.package, data, variant="fp32", threads=1, all_images=True)
    assert result.images == 9 and not result.held_out_only
    assert result.confusion == [[3, 2, 0], [0, 1, 0], [0, 0, 3]]
    assert result.accuracy == pytest.approx(7 / 9)
    red = result.per_class[0]
    assert (red["precision"], red["recall"]) == (1.0, pytest.approx(3 / 5))
    assert result.per_class[1]["precision"] == pytest.approx(1 / 3)


def test_eval_reports_unknown_folders_and_bad_files(edge_assets, tmp_path):
    data = tmp_path / "flat"
    shutil.copytree(edge_assets.data_dir / "test", data)
    (data / "purple").mkdir()
    shutil.copy(data / "red" / "img_0000.png", data / "purple" / "p.png")
    (data / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (data / "blue" / "notes.txt").write_text("not an image")
    result = evaluate_package(edge_assets.package, data, variant="onnx", threads=1, all_images=True)
    assert result.images == 12
    assert result.unknown_classes == {"purple": 1}
    reasons = {item["path"]: item["reason"] for item in result.skipped}
    assert set(reasons) == {"blue/broken.png", "blue/notes.txt"}
    assert result.reference.matched == 12  # the test folder itself still matches test/<class>/<file>


def test_cli_eval_json(edge_assets, capsys):
    code = main(["eval", str(edge_assets.package), str(edge_assets.data_dir), "--json", "--threads", "1"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"] == 1.0
    assert data["reference"]["matched"] == 12
    assert [c["label"] for c in data["per_class"]] == edge_assets.labels
    assert len(data["confusion"]) == 3


def test_cli_eval_table(edge_assets, capsys):
    code = main(["eval", str(edge_assets.package), str(edge_assets.data_dir), "--variant", "fp32.tflite"])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy 1.0000" in out
    assert "confusion matrix" in out
    assert "reference: 12 of 12 reference images matched; top-1 agreement 1.0000" in out


def test_cli_eval_says_when_nothing_matches(edge_assets, capsys):
    args = ["eval", str(edge_assets.package), str(edge_assets.data_dir), "--split", "train"]
    assert main(args) == 2  # no train image is held out
    err = capsys.readouterr().err
    assert "none of the 12 images" in err and "held-out test split" in err and "--all-images" in err
    code = main([*args, "--all-images", "--json"])
    assert code == 0
    ref = json.loads(capsys.readouterr().out)["reference"]
    assert ref["matched"] == 0 and ref["top1_agreement"] is None
    assert ref["message"].startswith("none of the 12 images matches the 12 reference images")


def test_cli_eval_errors(edge_assets, capsys, tmp_path):
    assert main(["eval", str(edge_assets.package), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes((edge_assets.data_dir / edge_assets.test_paths[0]).read_bytes())
    assert main(["eval", str(edge_assets.package), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no image in a folder named after one of the model's labels" in err and "cats" in err
    assert main(["eval", str(edge_assets.fp32), str(edge_assets.data_dir)]) == 2
    assert "eval needs a package" in capsys.readouterr().err


def test_eval_scores_only_the_held_out_split_unless_asked(edge_assets, edge_package_copy, capsys):
    from edge.manifest import HeldOutSplit, read_manifest, write_manifest

    # a flat class-folder dataset holding train and test images, as the demo is
    flat = Path(shutil.copytree(edge_assets.data_dir / "test", edge_package_copy.parent / "flat"))
    for src in sorted((edge_assets.data_dir / "train").rglob("*.png")):
        shutil.copy(src, flat / src.parent.name / f"train_{src.name}")
    manifest = read_manifest(edge_package_copy)
    held = [p.removeprefix("test/") for p in edge_assets.test_paths[:6]]
    manifest.held_out = HeldOutSplit(split="test", files=held)
    write_manifest(edge_package_copy, manifest)
    everything = len([p for p in flat.rglob("*") if p.is_file()])

    result = evaluate_package(edge_package_copy, flat, variant="fp32", threads=1)
    assert result.held_out_only and result.images == 6
    assert "held-out test split: 6 of" in result.scope

    assert main(["eval", str(edge_package_copy), str(flat), "--all-images"]) == 0
    out = capsys.readouterr().out
    assert f"(split all): {everything} images" in out
    assert "including any the model was trained on (--all-images)" in out
