"""Shipyard: from a folder of images to a transfer-learned classifier, optimized edge models and an HTTP
prediction service, with proof at every step.

This module only names the public surface. Each function imports its stage (TensorFlow for training,
BentoML for serving) when it is called, so ``import shipyard`` is quick and light::

    import shipyard

    run = shipyard.train("configs/demo.yaml", data="demo_data")
    shipyard.optimize(run.package)
    tag = shipyard.register(run.package)

The ``shipyard`` command line (:mod:`shipyard.cli`) is a thin layer over these same functions.
"""

from shipyard.api import (
    RegisteredModel,
    aliases,
    cross_validate,
    demo_data,
    ensemble,
    evaluate,
    load_config,
    loadtest,
    models,
    optimize,
    pipeline,
    promote,
    register,
    report,
    rollback,
    serve,
    train,
    tune,
)
from shipyard.config import PipelineConfig

__version__ = "0.2.0"

__all__ = [
    "PipelineConfig",
    "RegisteredModel",
    "aliases",
    "cross_validate",
    "demo_data",
    "ensemble",
    "evaluate",
    "load_config",
    "loadtest",
    "models",
    "optimize",
    "pipeline",
    "promote",
    "register",
    "report",
    "rollback",
    "serve",
    "train",
    "tune",
]
