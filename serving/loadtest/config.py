"""The load tester's settings (:class:`LoadTestConfig`): pydantic only, importable without Locust."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from edge.config import StrictModel


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
