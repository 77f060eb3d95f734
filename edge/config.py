"""Configuration plumbing shared by every stage: strict pydantic models, YAML loading, ``--set`` overrides.

Every stage's options object derives from :class:`StrictModel`: unknown keys are errors that name the
key and list the valid ones. The sections that the server reads (:class:`ServeConfig`,
:class:`MonitorConfig`, :class:`LoadTestConfig`) live here because ``serving`` may not import
``training``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.errors import ShipyardError


class ConfigError(ShipyardError):
    """A configuration file or override is wrong; the message names the key, the value and what is allowed."""


class StrictModel(BaseModel):
    """Base of every options object: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ServeConfig(StrictModel):
    """The prediction service (``serving/``, started by ``shipyard serve`` or ``bentoml serve``).

    The service process reads it with :meth:`from_env`: a YAML file named by ``SHIPYARD_SERVE_CONFIG``
    (a bare ``serve`` mapping or a pipeline config with a ``serve:`` section), then one
    ``SHIPYARD_<FIELD>`` variable per field (``SHIPYARD_MODEL``, ``SHIPYARD_VARIANT``,
    ``SHIPYARD_MAX_BATCH_SIZE``...; ``SHIPYARD_MONITOR`` takes ``0``/``1`` or a JSON object).
    ``shipyard serve`` passes its settings down with :meth:`to_env`.
    """

    model: str | None = Field(None, description="model tag name:version or name:latest; env SHIPYARD_MODEL wins")
    variant: str = Field("model.onnx", description="variant file to serve, e.g. model.onnx or int8.tflite")
    embeddings: bool = Field(
        True,
        description="when serving model.onnx and the package has a passing model_embedding.onnx, serve that: "
        "the same probabilities plus the embedding the drift monitor compares",
    )
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="API worker processes")
    model_service: bool = Field(
        False,
        description="run the model in its own process (bentoml.depends), shared by every API worker, instead "
        "of one model per API worker: less memory with several workers, one more hop per request",
    )
    threads: int | None = Field(
        None, ge=1, description="inference threads per model (default: all cores, split over the API workers)"
    )
    top_k: int = Field(5, ge=1)
    max_batch_size: int = Field(
        4,
        ge=1,
        description="most images per inference call (1: no batching); on CPU, MobileNetV2's CPU time per image "
        "is lowest at batches of 2-4 and grows beyond (benchmarks/serving.py)",
    )
    max_latency_ms: int = Field(
        5000,
        ge=10,
        description="a request whose batch would finish later than this is shed with 503 (BentoML's dispatcher)",
    )
    batching: bool = True
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="request body cap (413 above)")
    max_batch_images: int = Field(32, ge=1, description="most images in one /classify_batch request")
    max_pixels: int = Field(50_000_000, ge=1, description="pixel cap per image, checked from the header")
    max_concurrency: int = Field(64, ge=1, description="requests in progress in the service (429 above)")
    timeout_s: float = Field(30.0, gt=0, description="request timeout (504 above)")
    tracing: bool = Field(
        False,
        description="record an OpenTelemetry span per request, as BentoML does by default (set its exporter and "
        "sample rate in the BentoML config); off, requests are left out of tracing, which saves CPU per request",
    )
    monitor: MonitorConfig = Field(default_factory=lambda: MonitorConfig())

    #: Prefix of the environment variables :meth:`from_env` reads and :meth:`to_env` writes.
    ENV_PREFIX: ClassVar[str] = "SHIPYARD_"
    ENV_FILE: ClassVar[str] = "SHIPYARD_SERVE_CONFIG"

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """``{field: environment variable}`` for every field (``monitor`` -> ``SHIPYARD_MONITOR``)."""
        return {name: cls.ENV_PREFIX + name.upper() for name in cls.model_fields}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Build the config from ``SHIPYARD_SERVE_CONFIG`` (YAML) and ``SHIPYARD_<FIELD>`` variables.

        Args:
            environ: the environment to read (default ``os.environ``).

        Returns:
            The validated config; variables win over the file, the file over the defaults.

        Raises:
            ConfigError: the file is missing or malformed, or a variable's value is invalid (the message
                names the variable and what it accepts).
        """
        import os

        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        source = "environment"
        if path := env.get(cls.ENV_FILE):
            loaded = read_yaml_mapping(
                path, what=cls.ENV_FILE, hint="point it at a YAML file with a serve: section (or a bare serve mapping)"
            )
            raw = section_mapping(loaded, "serve", path) if "serve" in loaded else dict(loaded)
            source = f"{path} and the environment"
        for name, var in cls.env_names().items():
            if var not in env:
                continue
            value: Any = env[var].strip()
            if name == "monitor":
                raw["monitor"] = _monitor_from_env(value, var, raw.get("monitor"))
                continue
            if value.lower() in ("", "none", "null", "auto") and name in ("model", "threads"):
                value = None
            raw[name] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            lines = format_validation_error(exc, cls, source).splitlines()
            names = cls.env_names()
            hinted = [
                line + (f" (variable {names[key]})" if (key := _first_key(line)) in names and names[key] in env else "")
                for line in lines
            ]
            raise ConfigError("\n".join(hinted)) from None

    def to_env(self) -> dict[str, str]:
        """The ``SHIPYARD_<FIELD>`` variables that make :meth:`from_env` rebuild this config exactly.

        ``model`` and ``threads`` are written as ``none`` when unset, so that a stale variable in the
        parent's environment cannot win.
        """
        out: dict[str, str] = {}
        for name, var in self.env_names().items():
            value = getattr(self, name)
            if name == "monitor":
                out[var] = value.model_dump_json()
            elif value is None:
                out[var] = "none"
            elif isinstance(value, bool):
                out[var] = "1" if value else "0"
            else:
                out[var] = str(value)
        return out


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
        "(each holds the at most 64x64 pixels its image statistics read: 1,000 are at most 12 MB)",
    )
    feedback_ttl_s: float = Field(86_400.0, gt=0, description="how long a prediction accepts /feedback")
    feedback_capacity: int = Field(50_000, ge=1, description="predictions kept for /feedback (oldest are forgotten)")
    feedback_store: str | None = Field(
        "auto",
        description="where API workers share predictions awaiting /feedback: 'auto' (a SQLite file in BentoML's "
        "PROMETHEUS_MULTIPROC_DIR under bentoml serve with more than one worker, else memory), 'memory' (each "
        "worker alone) or a file path",
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
    scenario: Literal["traffic", "bad-inputs"] = Field(
        "traffic", description="traffic: good images only; bad-inputs: bad requests mixed into good traffic"
    )
    think_min_s: float = Field(0.1, ge=0, le=60, description="think time between a user's requests: min")
    think_max_s: float = Field(0.5, ge=0, le=60, description="think time between a user's requests: max")
    bad_share: float = Field(0.5, ge=0, le=1, description="share of a bad-input user's requests that are bad")
    request_timeout_s: float = Field(30.0, gt=0, le=600)
    max_images: int = Field(1000, ge=1, description="most images each Locust process loads into memory")
    workers: int = Field(0, ge=0, le=64, description="Locust workers under a master (0: one process)")
    ready_timeout_s: float = Field(180.0, gt=0, le=3600, description="seconds a started service may take")
    variant: str | None = Field(None, description="variant served with --serve (default: the server's)")
    serve_workers: int | None = Field(None, ge=1, description="API workers with --serve (default: serve's)")
    sweep_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 8, 32], min_length=1)
    # the bounds of ServeConfig.max_latency_ms: a point below them would only fail when its server starts
    sweep_latencies_ms: list[Annotated[int, Field(ge=10)]] = Field(default_factory=lambda: [50, 1000], min_length=1)
    sweep_workers: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1], min_length=1)

    @model_validator(mode="after")
    def _think_range(self) -> LoadTestConfig:
        if self.think_min_s > self.think_max_s:
            raise ValueError(
                f"think time {self.think_min_s:g},{self.think_max_s:g}: the minimum is above the maximum; swap them"
            )
        return self


ServeConfig.model_rebuild()


def read_yaml_mapping(path: str | Path, *, hint: str, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file is an empty mapping).

    Raises:
        ConfigError: the file is missing (the message ends with ``hint``), not YAML, or not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; {hint}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def section_mapping(loaded: dict[str, Any], section: str, path: str | Path) -> dict[str, Any]:
    """A copy of the ``section:`` mapping of a loaded config file (empty when absent).

    Raises:
        ConfigError: the section is there but not a mapping.
    """
    value = loaded.get(section) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: the {section}: section must be a mapping, not {type(value).__name__}")
    return dict(value)


def load_section(path: str | Path | None, section: str, overrides: list[str] | None, *, command: str) -> dict[str, Any]:
    """The ``section:`` of a config file (the file's other sections are other stages' business) with
    ``--set section.KEY=VALUE`` overrides merged in, for a command that reads only that section.

    Raises:
        ConfigError: a bad file, or an override outside ``section``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml_mapping(path, hint=f"pass a YAML file with a {section}: section (a pipeline config works)")
        raw = section_mapping(loaded, section, path)
    extra = parse_overrides(overrides)
    others = sorted(set(extra) - {section})
    if others:
        raise ConfigError(
            f"--set {others[0]}.…: '{command}' takes {section}.KEY=VALUE only, e.g. --set {section}.<setting>=<value>"
        )
    return deep_merge(raw, extra.get(section, {}))


def _monitor_from_env(value: str, var: str, base: Any) -> Any:
    """``SHIPYARD_MONITOR``: ``0``/``1`` (enabled) or a JSON object of :class:`MonitorConfig` fields."""
    import json

    merged = dict(base) if isinstance(base, dict) else {}
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{var} is not valid JSON ({exc.msg}); give 0, 1 or a JSON object") from None
        return {**merged, **parsed}
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return {**merged, "enabled": True}
    if lowered in ("0", "false", "no", "off"):
        return {**merged, "enabled": False}
    raise ConfigError(f"{var}={value!r} is invalid: give 0, 1 or a JSON object of monitor settings")


def _first_key(line: str) -> str:
    """The top-level key named in one line of :func:`format_validation_error`."""
    start = line.find("'")
    end = line.find("'", start + 1)
    return line[start + 1 : end].split(".")[0] if 0 <= start < end else ""

M = TypeVar("M", bound=BaseModel)


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


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
) -> M:
    """Build ``model`` from a YAML file (optional), ``--set`` overrides, then ``values`` (nested plain
    values taken as they are, not parsed as YAML: a folder named ``2024`` or ``data #1`` stays a string).

    Relative paths in the file are kept as written (resolved against the working directory).

    Raises:
        ConfigError: file missing or not YAML, an unknown key, a wrong type or a value out of range.
    """
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        raw = read_yaml_mapping(path, hint="pass a YAML file such as configs/demo.yaml")
        source = str(path)
    return validate_config(model, deep_merge(deep_merge(raw, parse_overrides(overrides)), values or {}), source)


def validate_config(model: type[M], raw: dict[str, Any], source: str) -> M:
    """``model`` from ``raw``; a validation error becomes one :class:`ConfigError` line per problem,
    each naming ``source`` (a file, "overrides", ...), the key and what it accepts."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None
