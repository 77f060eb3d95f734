"""Configuration plumbing shared by every stage: strict pydantic models, YAML loading, ``--set`` overrides.

Every stage's options object derives from :class:`StrictModel`: unknown keys are errors that name the
key and list the valid ones. The sections that the server reads (:class:`ServeConfig`,
:class:`MonitorConfig`, :class:`LoadTestConfig`) live here because ``serving`` may not import
``training``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.errors import ShipyardError


class ConfigError(ShipyardError):
    """A configuration file or override is wrong; the message names the key, the value and what is allowed."""


class StrictModel(BaseModel):
    """Base of every options object: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ServeConfig(StrictModel):
    """The prediction service."""

    model: str | None = Field(None, description="model tag name:version or name:latest; env SHIPYARD_MODEL wins")
    variant: str = Field("model.onnx", description="variant file to serve, e.g. model.onnx or int8.tflite")
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1, description="inference threads per worker (default: all cores)")
    top_k: int = Field(5, ge=1)
    max_batch_size: int = Field(16, ge=1)
    max_latency_ms: int = Field(20, ge=1)
    batching: bool = True
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(50_000_000, ge=1)
    max_concurrency: int = Field(64, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    monitor: MonitorConfig = Field(default_factory=lambda: MonitorConfig())


class MonitorConfig(StrictModel):
    """Latency and drift monitoring inside the service (:mod:`serving.monitoring`).

    Drift is tested on a rolling window of the last ``window`` requests, every ``evaluate_every``
    requests. ``ks_pvalue`` is the false-alarm probability of one evaluation over *all* signals: it is
    split evenly over the signals (Bonferroni) and, for the input signal, again over its features.
    ``psi_threshold`` and ``mmd_threshold`` are minimum effect sizes: the threshold used is the larger of
    each and the statistic's null quantile at the corrected level, so a small reference split or a
    small window does not raise false alarms.
    """

    enabled: bool = True
    window: int = Field(200, ge=10, description="requests per drift window")
    psi_threshold: float = Field(0.25, gt=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    mmd_threshold: float = Field(0.05, gt=0)
    sink: str = Field("default", description="bentoml.monitor sink name")
    evaluate_every: int | None = Field(
        None, ge=1, description="requests between drift evaluations once the window is full (default window // 2)"
    )
    permutations: int = Field(200, ge=20, le=5000, description="permutations of the embedding MMD test")
    alarm_after: int = Field(
        1, ge=1, description="consecutive evaluations a signal must flag before it reports drift (2+ for fewer alarms)"
    )
    sink_enabled: bool = Field(True, description="log every request's features and prediction via bentoml.monitor")
    sink_class: str | None = Field(
        None,
        description="bentoml.monitor class: 'default', 'otlp' or a dotted path to a MonitorBase subclass; "
        "None uses BentoML's monitoring.type setting",
    )
    sink_options: dict[str, Any] | None = Field(
        None, description="options of the sink class (e.g. {log_path: ...}); None uses BentoML's monitoring.options"
    )
    queue_size: int = Field(
        1_000,
        ge=1,
        description="observations waiting for the monitoring thread before new ones are dropped "
        "(each holds its model input: 1,000 at 224x224 px is 150 MB)",
    )
    feedback_ttl_s: float = Field(86_400.0, gt=0, description="how long a prediction accepts /feedback")
    feedback_capacity: int = Field(50_000, ge=1, description="predictions kept for /feedback (oldest are forgotten)")
    feedback_store: str | None = Field(
        "auto",
        description="where API workers share predictions awaiting /feedback: 'auto' (a SQLite file in BentoML's "
        "PROMETHEUS_MULTIPROC_DIR under bentoml serve, else memory), 'memory' (each worker alone) or a file path",
    )


class LoadTestConfig(StrictModel):
    """Locust load tests against a running service."""

    host: str = "http://127.0.0.1:3000"
    users: int = Field(8, ge=1, le=1000)
    spawn_rate: float = Field(8.0, gt=0)
    duration_s: float = Field(20.0, gt=0, le=3600)
    batch_share: float = Field(0.2, ge=0, le=1)
    batch_images: int = Field(4, ge=1, le=64)
    images: str | None = None
    max_p95_ms: float | None = Field(None, gt=0)
    max_fail_ratio: float = Field(0.01, ge=0, le=1)
    min_rps: float | None = Field(None, ge=0)


ServeConfig.model_rebuild()

M = TypeVar("M", bound=BaseModel)
_ANY = Literal["any"]


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str = "config") -> str:
    """One line per problem: the key, the value given and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent else "(see the docs)"
            lines.append(f"{source}: unknown key '{key}' (value {value!r}); valid keys here: {valid}")
        elif err["type"] == "missing":
            lines.append(f"{source}: '{key}' is required")
        else:
            lines.append(f"{source}: '{key}' = {value!r} is invalid: {err['msg']}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        current = _unwrap(fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "data.augment.flip=true"]`` into a nested dict (values parsed as YAML)."""
    import yaml

    nested: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} is not of the form key.sub=value (for example --set train.epochs=3)")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {pair!r} has an empty key part; write it as section.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r} conflicts with another --set for {part!r}")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``base`` with ``extra`` merged in recursively."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Build ``model`` from a YAML file (optional) plus ``--set`` overrides.

    Relative paths in the file are kept as written (resolved against the working directory).

    Raises:
        ConfigError: file missing or not YAML, an unknown key, a wrong type or a value out of range.
    """
    import yaml

    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/demo.yaml")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (data:, model:, train:, ...), not {type(loaded).__name__}")
        raw = loaded
    raw = deep_merge(raw, parse_overrides(overrides))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None
