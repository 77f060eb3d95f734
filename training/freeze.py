"""Which base layers train: ``model.freeze`` (phase 1) and ``train.fine_tune.unfreeze`` (phase 2).

A selection is one of:

* ``"all"`` / ``"none"``: every base layer / no base layer;
* an integer N: for ``model.freeze``, every base layer but the last N (the last N train); for
  ``fine_tune.unfreeze_layers``, the last N;
* a list whose entries are layer names (``conv3``), glob patterns (``block_1*``), regular expressions
  prefixed ``re:`` (``re:block_(1[3-6])_.*``) or layer types (``BatchNormalization``); the union of what
  the entries match;
* ``{until: LAYER}``: the base layers before LAYER; ``{from: LAYER}``: LAYER and the base layers after it.

An entry that matches no base layer is an error naming the closest layer names and types (difflib), so
that a typo never silently trains the wrong layers.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sequence
from typing import Any

from edge.config import ConfigError
from training.config import LayerRange

_GLOB = set("*?[")


def _closest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(dict.fromkeys(candidates)), n=5, cutoff=0.4)
    if close:
        return "closest: " + ", ".join(close)
    return "some base layers: " + ", ".join(list(candidates)[:8])


def _match_entry(entry: str, layers: Sequence[Any]) -> list[str]:
    """Names of the layers one list entry matches (name, glob, ``re:`` regex or layer type)."""
    if entry.startswith("re:"):
        try:
            pattern = re.compile(entry[3:])
        except re.error as exc:
            raise ConfigError(f"{entry!r} is not a valid regular expression: {exc}") from None
        return [layer.name for layer in layers if pattern.fullmatch(layer.name)]
    if _GLOB & set(entry):
        return [layer.name for layer in layers if fnmatch.fnmatchcase(layer.name, entry)]
    by_type = [layer.name for layer in layers if type(layer).__name__ == entry]
    return by_type or [layer.name for layer in layers if layer.name == entry]


def _index_of(name: str, layers: Sequence[Any], what: str) -> int:
    names = [layer.name for layer in layers]
    if name not in names:
        raise ConfigError(f"{what}: {name!r} is not a base layer; {_closest(name, names)}")
    return names.index(name)


def select_layers(layers: Sequence[Any], selection: Any, *, what: str, count_means: str = "last") -> set[str]:
    """Names of the base layers a selection picks.

    Args:
        layers: the base layers, in model order.
        selection: ``"all"``, ``"none"``, an int, a list of names/patterns/types, or a :class:`LayerRange`
            (or its dict form).
        what: the config key, for error messages.
        count_means: an int N picks the ``"last"`` N layers, or ``"all_but_last"`` N.

    Returns:
        The selected layer names.

    Raises:
        ConfigError: an entry or range end that matches no base layer (with the closest names).
    """
    names = [layer.name for layer in layers]
    if selection == "all":
        return set(names)
    if selection == "none":
        return set()
    if isinstance(selection, int):
        n = max(0, min(selection, len(names)))
        last = set(names[len(names) - n :]) if n else set()
        return last if count_means == "last" else set(names) - last
    if isinstance(selection, dict):
        selection = LayerRange.model_validate(selection)
    if isinstance(selection, LayerRange):
        if selection.until is not None:
            return set(names[: _index_of(selection.until, layers, what)])
        return set(names[_index_of(str(selection.from_), layers, what) :])
    chosen: set[str] = set()
    for entry in selection:
        matched = _match_entry(str(entry), layers)
        if not matched:
            types = sorted({type(layer).__name__ for layer in layers})
            raise ConfigError(
                f"{what}: {entry!r} matches no base layer (names, globs, 're:' regexes and layer types such as "
                f"{', '.join(types[:4])} are accepted); {_closest(str(entry), names + types)}"
            )
        chosen.update(matched)
    return chosen


def apply_trainable(layers: Sequence[Any], trainable: set[str], *, freeze_batchnorm: bool) -> None:
    """Set ``layer.trainable`` on the base layers: on for the names in ``trainable``, off for the rest.

    With ``freeze_batchnorm`` (a pretrained base) BatchNormalization layers stay frozen, so that they run in
    inference mode and keep their pretrained statistics.
    """
    from training._tf import keras

    for layer in layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer.name in trainable and not (is_bn and freeze_batchnorm)


def trainable_summary(model: Any, base_names: Sequence[str]) -> dict[str, int]:
    """Counts of trainable and frozen base layers (those with weights) and parameters of the whole model."""
    import numpy as np

    wanted = set(base_names)
    base = [layer for layer in model.layers if layer.name in wanted and layer.weights]
    trainable_params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen_params = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {
        "base_layers_trainable": sum(1 for layer in base if layer.trainable),
        "base_layers_frozen": sum(1 for layer in base if not layer.trainable),
        "params_trainable": trainable_params,
        "params_frozen": frozen_params,
    }


def describe(summary: dict[str, int], phase: str) -> str:
    """One line for the start of a phase: trainable/frozen base layers and parameters."""
    return (
        f"{phase}: base layers {summary['base_layers_trainable']} trainable / {summary['base_layers_frozen']} frozen; "
        f"parameters {summary['params_trainable']:,} trainable / {summary['params_frozen']:,} frozen"
    )
