"""Parity gates as data: each gate kind is a list of limits, each limit a metric, a setting and a direction.

A variant's table entry (:data:`edge.variants.VARIANTS`) names its gate kind; :data:`GATES` says which
metrics that kind checks against which setting of :class:`training.config.GateConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edge.variants import GateKind

Op = Literal[">=", "<="]


@dataclass
class GateCheck:
    """One limit of a gate: ``value`` compared with ``limit`` (``">="`` or ``"<="``)."""

    name: str
    value: float | None
    limit: float
    op: Op

    @property
    def passed(self) -> bool | None:
        """Whether the value is within the limit (``None`` when there is no value to compare)."""
        if self.value is None:
            return None
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    def describe(self) -> str:
        """``"top-1 agreement 0.98 (limit >= 0.99)"``."""
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        return f"{self.name} {value} (limit {self.op} {self.limit:g})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the manifest's and the report's ``gate`` entries)."""
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "op": self.op,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Limit:
    """One limit of a gate kind.

    Attributes:
        name: shown in the report.
        metric: the key of the variant's metrics compared.
        setting: the :class:`~training.config.GateConfig` field holding the limit.
        op: ``">="`` or ``"<="``.
        optional: checked only when the metric exists (the embedding of a variant that outputs one).
        parent_name, parent_metric: for fine-tuned variants with ``int8_agreement_with: parent``, the
            limit is also checked on this metric (against the float model the file was converted from).
    """

    name: str
    metric: str
    setting: str
    op: Op
    optional: bool = False
    parent_name: str | None = None
    parent_metric: str | None = None


def _agreement(setting: str, **parent: str) -> Limit:
    return Limit("top-1 agreement with Keras", "agreement", setting, ">=", **parent)  # type: ignore[arg-type]


def _prob_diff(setting: str) -> Limit:
    return Limit("max probability difference", "max_prob_diff", setting, "<=")


def _accuracy_drop(setting: str) -> Limit:
    return Limit("accuracy drop", "accuracy_drop", setting, "<=")


#: The limits of each gate kind (see :class:`training.config.GateConfig`).
GATES: dict[str, tuple[Limit, ...]] = {
    "float": (
        _agreement("float_min_agreement"),
        _prob_diff("float_max_prob_diff"),
        Limit(
            "embedding relative difference",
            "embedding_rel_diff",
            "embedding_max_rel_diff",
            "<=",
            optional=True,
        ),
    ),
    "fp16": (_agreement("fp16_min_agreement"), _prob_diff("fp16_max_prob_diff")),
    "dynamic": (_agreement("dynamic_min_agreement"), _accuracy_drop("dynamic_max_accuracy_drop")),
    "int8": (
        _agreement(
            "int8_min_agreement",
            parent_name="top-1 agreement with fine-tuned float",
            parent_metric="agreement_parent",
        ),
        _accuracy_drop("int8_max_accuracy_drop"),
    ),
}


def gate_checks(
    kind: GateKind, metrics: dict[str, Any], gates: Any, *, retrained: bool = False
) -> list[GateCheck]:
    """The checks of a gate kind for a variant's metrics (see :class:`training.config.GateConfig`).

    Every limit is checked against the original Keras model (the model that was trained and evaluated).
    A fine-tuned variant (``retrained``) with ``int8_agreement_with: parent`` must also agree with the
    fine-tuned float model it was converted from (the conversion was faithful); so "agreement >= 98%"
    always means agreement with the trained model, and the parent check comes on top.

    Args:
        kind: a key of :data:`GATES`.
        metrics: the variant's metrics (``agreement``, ``max_prob_diff``, ``agreement_parent``...).
        gates: the :class:`~training.config.GateConfig` holding the limits.
        retrained: the variant was fine-tuned (QAT, pruning, clustering).
    """
    use_parent = retrained and gates.int8_agreement_with == "parent"
    checks = []
    for limit in GATES[kind]:
        if limit.optional and limit.metric not in metrics:
            continue
        limit_value = getattr(gates, limit.setting)
        checks.append(GateCheck(limit.name, metrics.get(limit.metric), limit_value, limit.op))
        if use_parent and limit.parent_metric is not None:
            name = limit.parent_name or limit.name
            checks.append(GateCheck(name, metrics.get(limit.parent_metric), limit_value, limit.op))
    return checks
