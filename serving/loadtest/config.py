"""The load tester's settings (:class:`LoadTestConfig`): pydantic only, importable without Locust.

The load tester hands the whole config to its Locust processes as one JSON variable
(:meth:`LoadTestConfig.to_env`, read back with :meth:`LoadTestConfig.from_env`), so that the command line
and the Locust scenarios validate the same fields with the same bounds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from edge.config import ConfigError, StrictModel, read_yaml_mapping, section_mapping, validate_config


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
    remote_workers: int = Field(
        0, ge=0, le=256, description="more Locust workers the master waits for, started on other hosts"
    )
    master_bind_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address the Locust master listens on (0.0.0.0: every interface)",
    )
    master_port: int | None = Field(
        None, ge=1, le=65535, description="port the Locust master listens on (default: a free one)"
    )
    mode: Literal["users", "ramp", "rate"] = Field(
        "users",
        description=(
            "users: a fixed number of users with think time; ramp: users without think time, stepped up; "
            "rate: an open workload, a target arrival rate stepped up. Stepped modes stop at the first step "
            "that breaks max_p95_ms or max_fail_ratio (or stops gaining throughput) and report the saturation"
        ),
    )
    step_s: float = Field(10.0, gt=0, le=600, description="seconds per step of a stepped mode")
    step_users: int = Field(2, ge=1, le=1000, description="ramp: users added per step (up to users)")
    step_rps: float = Field(5.0, gt=0, description="rate: requests/s added per step (up to max_rps)")
    max_rps: float = Field(200.0, gt=0, description="rate: the highest arrival rate tried")
    user_rps: float = Field(
        1.0, gt=0, le=100, description="rate: requests/s each user sends (users = rate / user_rps)"
    )
    ready_timeout_s: float = Field(180.0, gt=0, le=3600, description="seconds a started service may take")
    variant: str | None = Field(None, description="variant served with --serve (default: the server's)")
    serve_workers: int | None = Field(None, ge=1, description="API workers with --serve (default: serve's)")
    sweep_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 8, 32], min_length=1
    )
    # the bounds of ServeConfig.max_latency_ms: a point below them would only fail when its server starts
    sweep_latencies_ms: list[Annotated[int, Field(ge=10)]] = Field(
        default_factory=lambda: [50, 1000], min_length=1
    )
    sweep_workers: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1], min_length=1)

    #: The variable a Locust process reads its config from: a JSON object of these fields, or the path of a
    #: YAML file with a ``loadtest:`` section (or a bare mapping).
    ENV: ClassVar[str] = "SHIPYARD_LOADTEST_CONFIG"

    @model_validator(mode="after")
    def _think_range(self) -> LoadTestConfig:
        if self.think_min_s > self.think_max_s:
            raise ValueError(
                f"think time {self.think_min_s:g},{self.think_max_s:g}: the minimum is above the maximum; swap them"
            )
        if self.mode == "rate" and self.step_rps > self.max_rps:
            raise ValueError(f"step_rps {self.step_rps:g} is above max_rps {self.max_rps:g}; lower it")
        return self

    @property
    def stepped(self) -> bool:
        """A stepped mode (``ramp`` or ``rate``): the load grows step by step until a limit breaks."""
        return self.mode != "users"

    def limits(self) -> dict[str, float | None]:
        """The pass/fail limits (``None``: not checked), as :func:`serving.loadtest.check_limits` takes them."""
        return {"max_p95_ms": self.max_p95_ms, "max_fail_ratio": self.max_fail_ratio, "min_rps": self.min_rps}

    def to_env(self) -> dict[str, str]:
        """``{"SHIPYARD_LOADTEST_CONFIG": <this config as JSON>}``: what :meth:`from_env` rebuilds it from."""
        return {self.ENV: self.model_dump_json()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadTestConfig:
        """The config in ``SHIPYARD_LOADTEST_CONFIG`` (defaults when it is unset).

        Raises:
            ConfigError: the value is not a JSON object or a readable YAML file, or a field is invalid (the
                message names the variable, the key and what it accepts).
        """
        import os

        value = (os.environ if environ is None else environ).get(cls.ENV, "").strip()
        return validate_config(cls, _serialized_or_file(value, cls.ENV) if value else {}, cls.ENV)


def _serialized_or_file(value: str, var: str) -> dict[str, Any]:
    """A JSON object (what the load tester hands down) or a YAML file's path."""
    if value.startswith("{"):
        try:
            return dict(json.loads(value))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{var} is not a valid JSON object ({exc.msg}); give JSON or a YAML file's path"
            ) from None
    loaded = read_yaml_mapping(value, what=var, hint="point it at a YAML file with a loadtest: section")
    return section_mapping(loaded, "loadtest", value) if "loadtest" in loaded else dict(loaded)
