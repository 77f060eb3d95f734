"""Configuration plumbing shared by every stage: strict pydantic models, YAML loading, ``--set`` overrides.

Every stage's options object derives from :class:`StrictModel`: unknown keys are errors that name the
key and list the valid ones. Each package owns its own sections (``training.config``, ``serving.config``,
``serving.loadtest.config``); the front door (``shipyard.config``) assembles them into one pipeline config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edge.errors import ShipyardError


class ConfigError(ShipyardError):
    """A configuration file or override is wrong; the message names the key, the value and what is allowed."""


class StrictModel(BaseModel):
    """Base of every options object: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())



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
