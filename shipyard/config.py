"""The whole-pipeline config: one YAML file, one section per stage, each section owned by its package.

``data``, ``model``, ``train``, ``optimize``, ``tune`` and ``report`` are training's
(:class:`training.config.TrainingConfig`); ``serve`` is the server's (:class:`serving.config.ServeConfig`);
``loadtest`` the load tester's (:class:`serving.loadtest.config.LoadTestConfig`). All three modules are
pydantic only: loading a pipeline config imports neither TensorFlow nor BentoML.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edge.config import load_config
from serving.config import ServeConfig
from serving.loadtest.config import LoadTestConfig
from training.config import TrainingConfig


class PipelineConfig(TrainingConfig):
    """Everything, one section per stage; loads from YAML. A :class:`TrainingConfig` with the serving
    sections added, so that it can be handed to any training stage as it is."""

    serve: ServeConfig = Field(default_factory=ServeConfig)
    loadtest: LoadTestConfig = Field(default_factory=LoadTestConfig)


def load_pipeline_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, data: str | Path | None = None
) -> PipelineConfig:
    """Load a :class:`PipelineConfig` from YAML plus ``--set`` overrides; ``data`` overrides ``data.path``.

    Raises:
        ConfigError: a bad file, key or value (one line each, naming the key and the valid ones).
    """
    values = {"data": {"path": str(data)}} if data is not None else None
    return load_config(PipelineConfig, path, overrides, values=values)
