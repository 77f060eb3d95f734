"""Serve settings: ``ServeConfig`` from the environment and back, the ``shipyard serve`` command line,
the batch wire format and the error-body rewriting of the request guard."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.config import ConfigError
from serving.config import ServeConfig
from serving.http import describe_validation, normalize_error
from serving.inference import pack, unpack

BIN = Path(sys.executable).parent


def test_env_round_trip_and_precedence(tmp_path):
    config = ServeConfig(
        model="digits:v3", variant="int8.tflite", threads=2, batching=False, max_batch_size=8
    )
    config.monitor.window = 50
    assert ServeConfig.from_env(config.to_env()) == config

    yaml_file = tmp_path / "serve.yaml"
    yaml_file.write_text("serve:\n  variant: fp32.tflite\n  top_k: 2\n  monitor:\n    window: 40\n")
    env = {"SHIPYARD_SERVE_CONFIG": str(yaml_file), "SHIPYARD_TOP_K": "3", "SHIPYARD_MODEL": "digits:latest"}
    loaded = ServeConfig.from_env(env)
    assert (loaded.variant, loaded.top_k, loaded.model, loaded.monitor.window) == (
        "fp32.tflite",
        3,
        "digits:latest",
        40,
    )
    assert ServeConfig.from_env({"SHIPYARD_MONITOR": "0"}).monitor.enabled is False
    assert ServeConfig.from_env({"SHIPYARD_MONITOR": '{"window": 30}'}).monitor.window == 30
    assert ServeConfig.from_env({"SHIPYARD_THREADS": "none"}).threads is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SHIPYARD_MAX_BATCH_SIZE": "lots"}, ("max_batch_size", "SHIPYARD_MAX_BATCH_SIZE")),
        ({"SHIPYARD_PORT": "0"}, ("port", "SHIPYARD_PORT")),
        ({"SHIPYARD_MONITOR": "maybe"}, ("SHIPYARD_MONITOR", "0, 1")),
        ({"SHIPYARD_SERVE_CONFIG": "/nonexistent/serve.yaml"}, ("does not exist", "SHIPYARD_SERVE_CONFIG")),
    ],
)
def test_bad_settings_name_the_variable(env, words):
    with pytest.raises(ConfigError) as err:
        ServeConfig.from_env(env)
    for word in words:
        assert word in str(err.value)


def test_pack_and_unpack_keep_every_column():
    rng = np.random.default_rng(0)
    probs, emb = rng.random((3, 4)).astype(np.float32), rng.random((3, 7)).astype(np.float32)
    rows = unpack(pack(probs, emb, 0.25), 4)
    assert [r.batch_size for r in rows] == [3, 3, 3] and rows[0].inference_s == pytest.approx(0.25)
    np.testing.assert_array_equal(np.stack([r.probabilities for r in rows]), probs)
    np.testing.assert_array_equal(np.stack([r.embedding for r in rows]), emb)
    assert unpack(pack(probs, None, 0.1), 4)[0].embedding is None


def test_error_bodies_of_every_shape_become_one_message():
    assert normalize_error(400, b'[{"error": "bad thing"}]', "POST", "/x") == "bad thing"
    validation = json.dumps(
        {"error": "1 validation error", "detail": [{"type": "missing", "loc": ["label"]}]}
    )
    assert normalize_error(400, validation.encode(), "POST", "/feedback") == "field 'label' is required"
    assert "no such endpoint" in normalize_error(404, b"Not Found", "GET", "/nope")
    assert normalize_error(503, b"", "GET", "/readyz") == "Service Unavailable"
    assert "is required" in describe_validation([{"type": "missing", "loc": ["body", "request_id"]}])


def _shipyard(*args: str, env: dict | None = None):
    import os
    import subprocess

    return subprocess.run(
        [str(BIN / "shipyard"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_serve_command_dry_run_passes_every_setting(served, tmp_path):
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("serve:\n  max_batch_size: 8\n  top_k: 2\n")
    proc = _shipyard(
        "serve",
        served.tag,
        "--config",
        str(cfg),
        "--set",
        "serve.top_k=4",
        "--port",
        "3999",
        "--variant",
        "int8.tflite",
        "--workers",
        "2",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "-m bentoml serve serving.service:Shipyard --host 127.0.0.1 --port 3999" in lines[0]
    env = dict(line.split("=", 1) for line in lines[1:])
    config = ServeConfig.from_env(env)
    assert (config.model, config.max_batch_size, config.top_k, config.variant, config.workers) == (
        served.tag,
        8,
        4,
        "int8.tflite",
        2,
    )


def test_serve_command_errors_are_one_line():
    proc = _shipyard("serve", "no-such-model:v1")
    assert proc.returncode == 2 and "not in the model store" in proc.stderr
    proc = _shipyard("serve", "x:y", "--set", "train.epochs=1")
    assert proc.returncode == 2 and "serve.KEY=VALUE" in proc.stderr
    proc = _shipyard("serve", env={"SHIPYARD_MODEL": ""})
    assert proc.returncode == 2 and "no model to serve" in proc.stderr


@pytest.mark.parametrize(
    ("settings", "variant", "cores", "layout"),
    [
        ({}, "model_embedding.onnx", 2, (4, 1)),  # two single-threaded lanes per core
        ({}, "fp32_embedding.tflite", 2, (4, 1)),  # TFLite too (an interpreter per lane)
        ({"workers": 2}, "model.onnx", 4, (4, 1)),  # the cores are split over the API workers first
        ({"lanes": 1}, "model.onnx", 4, (1, 4)),
        ({"lanes": 2, "threads": 3}, "model.onnx", 4, (2, 3)),
        ({"threads": 2}, "model.onnx", 4, (2, 2)),  # threads set: as many lanes as fit in the cores
        ({"threads": 4}, "model.onnx", 4, (1, 4)),
        ({"lanes": 3}, "int8.tflite", 4, (3, 1)),
        ({"lanes": 3}, "unknown.bin", 4, (1, 4)),  # not a variant of the table: one lane (and a warning)
        ({"model_service": True}, "model.onnx", 4, (1, 4)),  # the model service runs one batch at a time
        ({}, "model.onnx", 1, (2, 1)),
        ({}, "model.onnx", 64, (8, 8)),  # at most MAX_DEFAULT_LANES, the cores left as threads (or add API workers)
    ],
)
def test_the_inference_layout_follows_the_format_and_the_cores(settings, variant, cores, layout):
    from serving.batching import inference_layout

    assert inference_layout(ServeConfig(**settings), variant, cores) == layout


def test_lanes_read_from_the_environment():
    assert ServeConfig.from_env({"SHIPYARD_LANES": "auto"}).lanes is None
    assert ServeConfig.from_env({"SHIPYARD_LANES": "3"}).lanes == 3
    with pytest.raises(ConfigError, match="SHIPYARD_LANES"):
        ServeConfig.from_env({"SHIPYARD_LANES": "0"})
