"""Mixed precision must not break the edge path: a model trained with ``train.mixed_precision: true`` is
exported in float32 (weights and compute) and converts to every variant of the table."""

from __future__ import annotations

import numpy as np
from _support import TINY_TRAIN

from edge.variants import VARIANTS


def test_a_mixed_precision_package_builds_every_variant(small_demo_dir, tmp_path):
    from training.config import load_training_config
    from training.optimize import run_optimize
    from training.pipeline import run_train

    sets = [
        *TINY_TRAIN,
        "model.name=mixed",
        "train.epochs=1",
        "train.mixed_precision=true",
        "train.version=v1",
    ]
    cfg = load_training_config(None, sets, data=small_demo_dir)
    package = run_train(cfg, tmp_path, verbose=0).package
    cfg = cfg.model_copy(
        update={
            "optimize": cfg.optimize.model_copy(
                update={
                    "latency": False,
                    "representative_samples": 32,
                    "fine_tune_samples": 64,
                    "qat_epochs": 1,
                    "prune_epochs": 1,
                    "cluster_epochs": 1,
                    "prune_min_weights": 64,
                    "tflite_metadata": False,  # metadata is tested elsewhere; this is about conversion
                }
            )
        }
    )
    outcome = run_optimize(package, cfg)
    rows = {r.key: r for r in outcome.results}
    assert set(rows) == set(VARIANTS)
    failed = {k: r.reason for k, r in rows.items() if r.status == "failed_export"}
    assert not failed, failed
    from ai_edge_litert.interpreter import Interpreter

    for key, row in rows.items():
        if row.spec.format != "tflite":
            continue
        interp = Interpreter(model_path=str(row.path))
        # no float16 tensor left in the graph (fp16.tflite stores float16 weights behind DEQUANTIZE: allowed there)
        halves = [d["name"] for d in interp.get_tensor_details() if d["dtype"] == np.float16]
        assert key == "fp16.tflite" or not halves, (key, halves[:5])
        assert row.metrics.get("agreement") is not None, key
