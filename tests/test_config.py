"""Configuration: YAML + --set overrides, one-line errors naming key, value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, parse_overrides
from shipyard.config import load_pipeline_config
from training.config import TrainingConfig, require_data_dir

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_loads_with_overrides():
    cfg = load_pipeline_config(ROOT / "configs" / "demo.yaml", ["train.epochs=2", "model.head.dense=[8, 4]"])
    assert cfg.model.base == "small_cnn"
    assert cfg.train.epochs == 2
    assert cfg.model.head.dense == [8, 4]
    assert cfg.data.image_size == 32


def test_data_flag_overrides_path(tmp_path):
    cfg = load_pipeline_config(ROOT / "configs" / "demo.yaml", data=tmp_path)
    assert Path(cfg.data.path) == tmp_path


def test_unknown_key_names_key_value_and_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(f)
    msg = str(err.value)
    assert "unknown key 'train.epoch'" in msg and "(value 3)" in msg
    assert "epochs" in msg and "learning_rate" in msg
    assert "\n" not in msg


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*valid keys here: data, loadtest, model, optimize"):
        load_pipeline_config(None, ["trian.epochs=3"])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("data.batch_size=-3", "'data.batch_size' = -3 is invalid: Input should be greater than 0"),
        ("train.epochs=many", "'train.epochs' = 'many' is invalid"),
        ("train.optimizer=rmsprop", "'train.optimizer' = 'rmsprop' is invalid: Input should be 'adam', 'adamw' or 'sgd'"),
        ("model.name=Bad Name", "model.name"),
        ("data.val_fraction=0.5", "leaves almost no training data"),
        ("model.freeze=-1", "freeze"),
    ],
)
def test_bad_values_are_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(None, [override, "data.test_fraction=0.45"] if "val_fraction" in override else [override])
    assert fragment in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_missing_data_folder_is_clear(tmp_path):
    cfg = load_pipeline_config(None, [f"data.path={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="is not a folder"):
        require_data_dir(cfg)
    with pytest.raises(ConfigError, match=r"data\.path is not set"):
        require_data_dir(TrainingConfig())


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_pipeline_config(scalar)


def test_override_parsing():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=true", "e=x=y"]) == {"a": {"b": 1, "c": [1, 2]}, "d": True, "e": "x=y"}
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="empty key part"):
        parse_overrides(["a..b=1"])


def test_config_is_not_mutated_by_loading_twice():
    a = load_pipeline_config(None, ["train.epochs=3"])
    b = load_pipeline_config(None)
    assert a.train.epochs == 3 and b.train.epochs == 10


@pytest.mark.parametrize("name", ["2024", "data #1", "on", "null"])
def test_data_folder_is_taken_as_written_not_parsed_as_yaml(tmp_path, name):
    folder = tmp_path / name
    cfg = load_pipeline_config(None, ["data.path=elsewhere"], data=folder)
    assert cfg.data.path == folder  # --data wins over --set, and "2024" stays a path, not an int
