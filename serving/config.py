"""The prediction service's settings: :class:`ServeConfig` and its :class:`MonitorConfig` section.

Pydantic only (no BentoML), so that the front door can validate a ``serve:`` section without loading the
server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, ValidationError

from edge.config import ConfigError, StrictModel, format_validation_error, read_yaml_mapping, section_mapping


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
        description="bentoml.monitor class: 'default' (None), 'otlp' or a dotted path to a MonitorBase subclass",
    )
    sink_options: dict[str, Any] | None = Field(
        None, description="options of the sink class (the default sink's log_path is log_dir unless given here)"
    )
    log_dir: str | None = Field(
        None,
        description="folder of the default sink's request logs (default: monitoring/ in the BentoML home, "
        "$BENTOML_HOME or ~/bentoml); never the server's working directory",
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
        description="where predictions awaiting /feedback and the accuracy counts per model version are kept, "
        "shared by every API worker and across restarts and model swaps: 'auto' (feedback.sqlite3 in the monitoring "
        "folder, log_dir or $BENTOML_HOME/monitoring), a SQLite file path, or 'memory' (each worker alone, lost on "
        "restart)",
    )


class ServeConfig(StrictModel):
    """The prediction service (``serving/``, started by ``shipyard serve`` or ``bentoml serve``).

    The service process reads it with :meth:`from_env`: ``SHIPYARD_SERVE_CONFIG`` (a JSON object of these
    fields, or the path of a YAML file with a bare ``serve`` mapping or a pipeline config with a ``serve:``
    section), then the documented ``SHIPYARD_<FIELD>`` variables (``SHIPYARD_MODEL``, ``SHIPYARD_VARIANT``,
    ``SHIPYARD_MAX_BATCH_SIZE``...; ``SHIPYARD_MONITOR`` takes ``0``/``1`` or a JSON object), which win.
    ``shipyard serve`` hands the whole config to its child in one variable with :meth:`to_env`.
    """

    model: str | None = Field(None, description="model tag name:version or name:latest; env SHIPYARD_MODEL wins")
    alias: str | None = Field(
        None,
        description="follow this alias of the model (model is then the model's name): serve the version it points "
        "at and switch to the next one, without a restart or a dropped request, when 'shipyard models promote' or "
        "'rollback' moves it; env SHIPYARD_ALIAS",
    )
    alias_poll_s: float = Field(1.0, gt=0, le=60, description="how often each server process checks the alias file")
    shadow: str | None = Field(
        None,
        description="also load the version this alias (e.g. candidate) points at and mirror live requests to it off "
        "the request path, reporting its agreement with the served model at /shadow",
    )
    shadow_share: float = Field(1.0, ge=0, le=1, description="share of live requests mirrored to the shadow model")
    shadow_queue: int = Field(
        64, ge=1, description="mirrored requests waiting for the shadow model; more are shed (counted, never waited for)"
    )
    shadow_window: int = Field(200, ge=10, description="mirrored predictions per shadow report window")
    shadow_cpu: float = Field(
        0.1,
        gt=0,
        description="the most CPU the shadow candidate may use, in cores: its process rests after each batch "
        "to stay under it (and gets only idle CPU besides), so above it mirrored requests are shed",
    )
    variant: str = Field(
        "fp32.tflite",
        description="variant file to serve, e.g. fp32.tflite, model.onnx or int8.tflite (fp32.tflite: LiteRT's "
        "XNNPACK ran MobileNetV2 in 12% less CPU per image than ONNX Runtime, and the service answered 17-24% "
        "more requests per second with it)",
    )
    embeddings: bool = Field(
        True,
        description="when the package has a passing variant that is the served one plus the embedding output "
        "(fp32_embedding.tflite for fp32.tflite, model_embedding.onnx for model.onnx), serve that: the same "
        "probabilities plus the embedding the drift monitor compares",
    )
    allow_failed_gate: bool = Field(
        False,
        description="serve a variant that failed its gate (its parity or accuracy check); off, the server refuses "
        "to start with it",
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
        None,
        ge=1,
        description="inference threads per lane (default: the cores left to each lane once they are split over "
        "the API workers and the lanes)",
    )
    lanes: int | None = Field(
        None,
        ge=1,
        description="batches one model runs at once, each in its own thread (default: two per core once the cores "
        "are split over the API workers, at most 8; with serve.threads, as many as fit; 1 in the model service). "
        "An ONNX session runs them all, a TFLite model is opened once per lane",
    )
    top_k: int = Field(5, ge=1)
    max_batch_size: int = Field(
        4,
        ge=1,
        description="most images per batch (1: no batching); a TFLite variant runs a batch image by image, the "
        "batch still shares the dispatch; MobileNetV2 served best at 4 at 8 and 32 clients together (README, "
        "Adaptive batching)",
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
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

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
        if value := env.get(cls.ENV_FILE, "").strip():
            raw = _serialized_or_file(value, cls.ENV_FILE)
            source = f"{cls.ENV_FILE} and the environment"
        for name, var in cls.env_names().items():
            if var not in env:
                continue
            value: Any = env[var].strip()
            if name == "monitor":
                raw["monitor"] = _monitor_from_env(value, var, raw.get("monitor"))
                continue
            if value.lower() in ("", "none", "null", "auto") and name in _OPTIONAL:
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
        """``{"SHIPYARD_SERVE_CONFIG": <this config as JSON>}``: what :meth:`from_env` rebuilds it from."""
        return {self.ENV_FILE: self.model_dump_json()}

    def child_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``environ`` (default ``os.environ``) for a server process that serves exactly this
        config: :meth:`to_env` added and every ``SHIPYARD_<FIELD>`` variable removed, so that a stale
        variable in the parent's environment cannot win."""
        import os

        stale = set(self.env_names().values())
        env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in stale}
        env.update(self.to_env())
        return env


#: Fields whose variable may say ``none``/``auto`` (the default).
_OPTIONAL = ("model", "threads", "lanes", "alias", "shadow")


def _serialized_or_file(value: str, var: str) -> dict[str, Any]:
    """``SHIPYARD_SERVE_CONFIG``: a JSON object (what ``shipyard serve`` hands down) or a YAML file's path."""
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{var} is not a valid JSON object ({exc.msg}); give JSON or a YAML file's path") from None
        return dict(parsed)
    loaded = read_yaml_mapping(
        value, what=var, hint="point it at a YAML file with a serve: section (or a bare serve mapping)"
    )
    return section_mapping(loaded, "serve", value) if "serve" in loaded else dict(loaded)


def _monitor_from_env(value: str, var: str, base: Any) -> Any:
    """``SHIPYARD_MONITOR``: ``0``/``1`` (enabled) or a JSON object of :class:`MonitorConfig` fields."""
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
