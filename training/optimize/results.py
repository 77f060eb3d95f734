"""A variant's row: how it was built and how it did, for the report and the manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.manifest import QuantParams, VariantInfo
from edge.variants import VARIANTS, Variant
from training.optimize.gates import GateCheck

Status = Literal["passed", "failed_gate", "failed_export", "not_checked"]


@dataclass
class VariantResult:
    """One row of the report: how a variant was built and how it did."""

    key: str
    spec: Variant
    status: Status = "not_checked"
    reason: str | None = None
    path: Path | None = None
    sha256: str | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    sparsity: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[GateCheck] = field(default_factory=list)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    io: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    build_seconds: float | None = None
    earlier_run: bool = False

    @property
    def passed(self) -> bool:
        """It passed its gate."""
        return self.status == "passed"

    def failed_checks(self) -> list[GateCheck]:
        """The checks of its gate that failed."""
        return [c for c in self.checks if c.passed is False]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the row of report.json)."""
        return {
            "variant": self.key,
            "format": self.spec.format,
            "quantization": self.spec.quantization,
            "description": self.spec.description,
            "gate_kind": self.spec.gate,
            "needs_representative": self.spec.needs_representative,
            "needs_retraining": self.spec.needs_fine_tuning,
            "outputs": list(self.spec.outputs),
            "status": self.status,
            "reason": self.reason,
            "file": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "gzip_bytes": self.gzip_bytes,
            "sparsity": self.sparsity,
            "metrics": self.metrics,
            "gate": [c.to_dict() for c in self.checks],
            "latency_ms": self.latency,
            "io": self.io,
            "details": _jsonable(self.details),
            "build_seconds": self.build_seconds,
            "earlier_run": self.earlier_run,
        }

    def variant_info(self, relfile: str) -> VariantInfo:
        """The manifest entry of this variant."""
        io = self.io
        metrics = {
            **self.metrics,
            "gzip_bytes": self.gzip_bytes,
            "sparsity": self.sparsity,
            "latency_ms": self.latency,
            "gate": [c.to_dict() for c in self.checks],
            **({"metadata": self.details["metadata"]} if "metadata" in self.details else {}),
        }
        return VariantInfo(
            file=relfile,
            format=self.spec.format,
            status=self.status,
            reason=self.reason,
            sha256=self.sha256,
            bytes=self.bytes,
            quantization=self.spec.quantization,
            input_dtype=io.get("input_dtype", "float32"),
            output_dtype=io.get("output_dtype", "float32"),
            input_quantization=QuantParams(**io["input_quantization"])
            if io.get("input_quantization")
            else None,
            output_quantization=QuantParams(**io["output_quantization"])
            if io.get("output_quantization")
            else None,
            outputs=list(self.spec.outputs),
            metrics=_jsonable(metrics),
        )


def result_from_manifest(key: str, info: VariantInfo) -> VariantResult:
    """Rebuild a report row from a variant's manifest entry (a variant not rebuilt in this run)."""
    metrics = dict(info.metrics)
    checks = [
        GateCheck(c["name"], c.get("value"), c["limit"], c["op"]) for c in metrics.pop("gate", []) or []
    ]
    io = {
        "input_dtype": info.input_dtype,
        "output_dtype": info.output_dtype,
        "input_quantization": info.input_quantization.model_dump() if info.input_quantization else None,
        "output_quantization": info.output_quantization.model_dump() if info.output_quantization else None,
    }
    return VariantResult(
        key=key,
        spec=VARIANTS[key],
        status=info.status,
        reason=info.reason,
        sha256=info.sha256,
        bytes=info.bytes,
        gzip_bytes=metrics.pop("gzip_bytes", None),
        sparsity=metrics.pop("sparsity", None),
        latency=metrics.pop("latency_ms", None) or {},
        metrics=metrics,
        checks=checks,
        io=io,
        earlier_run=True,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
