"""The search space: ``tune.space`` parsed and checked against the config, and a trial's config from its values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from edge.config import ConfigError, deep_merge, format_validation_error
from training.config import SearchParamConfig, TrainingConfig
from training.tune._kt import kt
from training.tune.oracles import OBJECTIVES

#: Config keys a search may not change, and why.
FORBIDDEN_KEYS: dict[str, str] = {
    "data.path": "the data folder is given once (--data), not searched",
    "data.seed": "it changes the validation split, so scores would not be comparable",
    "data.val_fraction": "it changes the validation split, so scores would not be comparable",
    "data.test_fraction": "it changes the validation split, so scores would not be comparable",
    "model.name": "it names the package, it is not a hyperparameter",
    "train.version": "it names the run, it is not a hyperparameter",
    "train.distribution": "it changes where training runs, not the model",
}
FORBIDDEN_SECTIONS = ("tune", "optimize", "serve", "loadtest")


def _scalar_type(values: list[Any]) -> type | None:
    """The one scalar type all values share (KerasTuner's Choice needs that), or None."""
    types = {type(v) for v in values}
    if len(types) == 1 and next(iter(types)) in (str, int, float, bool):
        return next(iter(types))
    return None


def label(value: Any) -> str:
    """How a choice that KerasTuner cannot hold directly (a list, a mapping, mixed types) is named."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


@dataclass(frozen=True)
class SearchParam:
    """One validated entry of ``tune.space``.

    ``labels`` maps KerasTuner's value to the config value for choices that KerasTuner cannot hold
    directly (lists such as ``[128, 64]``, mappings, mixed types): KerasTuner then chooses among the
    labels (``"[128, 64]"``) and :meth:`decode` turns a label back into the value.
    """

    key: str
    spec: SearchParamConfig
    labels: dict[str, Any] = field(default_factory=dict)

    def declare(self, hps: Any) -> None:
        """Add this entry to a KerasTuner ``HyperParameters`` space."""
        s = self.spec
        sampling = "log" if s.log else "linear"
        if s.type == "float":
            hps.Float(self.key, float(s.min), float(s.max), step=s.step, sampling=sampling)
        elif s.type == "int":
            step = int(s.step) if s.step is not None else None
            hps.Int(self.key, int(s.min), int(s.max), step=step, sampling=sampling)
        elif s.type == "bool":
            hps.Boolean(self.key)
        else:
            hps.Choice(self.key, self.choices(), ordered=False)

    def choices(self) -> list[Any]:
        """What KerasTuner chooses among: the labels or values of a choice, ``[False, True]`` for a bool."""
        if self.spec.type == "bool":
            return [False, True]
        return list(self.labels) if self.labels else list(self.spec.values or [])

    def decode(self, raw: Any) -> Any:
        """The config value for KerasTuner's value."""
        if self.labels:
            return self.labels[raw]
        if self.spec.type == "float":
            return float(f"{float(raw):.10g}")  # 0.30000000000000004 -> 0.3
        if self.spec.type == "int":
            return int(raw)
        return raw

    def display(self, raw: Any) -> str:
        """A short text for tables and plots."""
        value = self.decode(raw)
        if isinstance(value, float):
            return f"{value:.4g}"
        return value if isinstance(value, str) else label(value)

    def candidates(self) -> list[tuple[str, Any]]:
        """The values that must each be a valid config: the ends of a range, every choice, both booleans."""
        s = self.spec
        if s.type == "float":
            return [("min", float(s.min)), ("max", float(s.max))]
        if s.type == "int":
            return [("min", int(s.min)), ("max", int(s.max))]
        if s.type == "bool":
            return [("value", False), ("value", True)]
        return [("value", v) for v in s.values]

    @property
    def numeric(self) -> bool:
        """Whether the values are numbers on an axis (float, int, or a choice of one numeric type)."""
        if self.spec.type in ("float", "int"):
            return True
        return (
            self.spec.type == "choice" and not self.labels and _scalar_type(self.spec.values) in (int, float)
        )


def _nested(key: str, value: Any) -> dict[str, Any]:
    """``("a.b.c", v)`` -> ``{"a": {"b": {"c": v}}}``: the shape ``--set a.b.c=v`` merges in."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _check_key(key: str) -> None:
    """The key must name a field of the config (a setting or a whole section), and be searchable."""
    from pydantic import BaseModel

    if key in FORBIDDEN_KEYS:
        raise ConfigError(f"tune.space[{key!r}] cannot be searched: {FORBIDDEN_KEYS[key]}")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(
            f"tune.space[{key!r}] has an empty part; write the key as section.key, e.g. train.learning_rate"
        )
    if parts[0] in FORBIDDEN_SECTIONS:
        raise ConfigError(
            f"tune.space[{key!r}] cannot be searched: the {parts[0]} section does not change training; "
            "search keys of data, model and train"
        )
    model: Any = TrainingConfig
    for n, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:n]) or "the config"
            raise ConfigError(
                f"tune.space[{key!r}]: {part!r} is not a key of {where}; valid keys there: {', '.join(fields)}"
            )
        annotation = fields[part].annotation
        if n < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ConfigError(
                    f"tune.space[{key!r}]: {'.'.join(parts[: n + 1])} is a setting, not a section; "
                    f"search it as a whole, e.g. tune.space[{'.'.join(parts[: n + 1])!r}]"
                )
            model = annotation


def parse_space(config: TrainingConfig) -> list[SearchParam]:
    """Validate ``tune.space`` against the config and return its entries, before any trial runs.

    Every key must name a setting (or section) of the data, model or train sections, and every value
    the entry can produce at its ends (a range's min and max, each choice, both booleans) must make a
    config that validates, merged into ``config`` like a ``--set``.

    Args:
        config: the base config, with ``tune.space`` set.

    Returns:
        The entries in the order of the space.

    Raises:
        ConfigError: an empty space, an unknown or unsearchable key, a value the config rejects, an
            unknown ``model.base``, or ``train.epochs`` searched by Hyperband (one line each).
    """
    space = config.tune.space
    if not space:
        raise ConfigError(
            "tune.space is empty; map the config keys to search to their ranges, e.g. "
            "tune: {space: {train.learning_rate: {type: float, min: 0.0001, max: 0.01, log: true}}}"
        )
    return [_parse_entry(config, key, spec) for key, spec in space.items()]


def _parse_entry(config: TrainingConfig, key: str, spec: SearchParamConfig) -> SearchParam:
    """One entry of ``tune.space``: its key checked, its labels made, every candidate value validated."""
    _check_key(key)
    if key == "train.epochs" and config.tune.tuner == "hyperband":
        raise ConfigError(
            "tune.space['train.epochs'] cannot be searched with tune.tuner = 'hyperband': Hyperband sets each "
            "trial's epochs itself (up to train.epochs); remove the entry or use tune.tuner random or bayesian"
        )
    param = SearchParam(key, spec, _choice_labels(key, spec))
    for what, value in param.candidates():
        _check_candidate(config, key, what, value)
    return param


def _choice_labels(key: str, spec: SearchParamConfig) -> dict[str, Any]:
    """Labels for a choice that KerasTuner cannot hold directly (see :class:`SearchParam`), else ``{}``."""
    if spec.type != "choice" or _scalar_type(spec.values) is not None:
        return {}
    labels = {label(v): v for v in spec.values}
    if len(labels) != len(spec.values):
        raise ConfigError(
            f"tune.space[{key!r}]: values {spec.values!r} contain two values that read the same "
            f"({', '.join(map(label, spec.values))}); make them distinct"
        )
    return labels


def _check_candidate(config: TrainingConfig, key: str, what: str, value: Any) -> None:
    """``value`` for ``key``, merged into ``config`` like a ``--set``, must make a valid config."""
    from training.models import BACKBONES

    if key == "model.base" and value not in BACKBONES:
        raise ConfigError(
            f"tune.space['model.base']: {value!r} is not a known base; choose among: {', '.join(BACKBONES)}"
        )
    try:
        validated(config.training_dump(), {key: value})
    except ConfigError as exc:
        raise ConfigError(f"tune.space[{key!r}]: {what} {value!r} is rejected: {exc}") from None


def validated(raw: dict[str, Any], values: dict[str, Any]) -> TrainingConfig:
    """``raw`` (a config dump) with ``{key: value}`` merged in like ``--set``, validated.

    Raises:
        ConfigError: the result is not a valid config (one line).
    """
    for key, value in values.items():
        raw = deep_merge(raw, _nested(key, value))
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        message = format_validation_error(exc, TrainingConfig, "config").replace("config: ", "")
        raise ConfigError("; ".join(message.splitlines())) from None


def trial_config(
    base: TrainingConfig, params: list[SearchParam], values: dict[str, Any], *, epochs: int | None = None
) -> TrainingConfig:
    """The full config of one trial: ``base`` with the trial's values merged in (like ``--set``).

    ``tune.early_stopping_patience``, when set, becomes the trial's ``train.early_stopping_patience``
    (watching the objective's Keras log); ``epochs`` (Hyperband's budget) becomes ``train.epochs``.
    The result is what ``best.yaml`` holds for the best trial.

    Args:
        base: the config the search started from.
        params: the entries of :func:`parse_space`.
        values: KerasTuner's values of the trial (Hyperband's own keys are ignored).
        epochs: the trial's epochs, or None for ``train.epochs``.

    Returns:
        A validated :class:`TrainingConfig`.

    Raises:
        ConfigError: the combination of values is not a valid config.
    """
    merged = {p.key: p.decode(values[p.key]) for p in params if p.key in values}
    tune = base.tune
    if tune.early_stopping_patience is not None:
        merged["train.early_stopping_patience"] = tune.early_stopping_patience
        merged["train.monitor"] = OBJECTIVES[tune.objective].monitor
    if epochs is not None:
        merged["train.epochs"] = int(epochs)
    return validated(base.training_dump(), merged)


def hyperparameters(params: list[SearchParam]) -> Any:
    """The KerasTuner ``HyperParameters`` space of the entries."""
    hps = kt.HyperParameters()
    for p in params:
        p.declare(hps)
    return hps
