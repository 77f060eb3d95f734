"""TensorBoard's HParams dashboard for a search: the experiment once, one session per trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.tune.oracles import TRIAL_METRICS
from training.tune.space import SearchParam


def _hparam_value(param: SearchParam, raw: Any) -> Any:
    """HParams take bool, int, float or str: a label for a list-valued choice, else the config value."""
    if param.labels:
        return str(raw)
    value = param.decode(raw)
    return value.item() if isinstance(value, np.generic) else value


class HParamsLog:
    """TensorBoard HParams summaries: the experiment (once) and one session per trial."""

    def __init__(self, root: Path, params: list[SearchParam], objective: str, folds: bool):
        self.root, self.params, self.objective, self.folds = root, params, objective, folds

    def _hparams(self) -> list[Any]:
        from tensorboard.plugins.hparams import api as hp_api

        out = []
        for p in self.params:
            s = p.spec
            if s.type == "float":
                domain = hp_api.RealInterval(float(s.min), float(s.max))
            elif s.type == "int":
                domain = hp_api.IntInterval(int(s.min), int(s.max))
            elif s.type == "bool":
                domain = hp_api.Discrete([False, True])
            else:
                domain = hp_api.Discrete(p.choices())
            out.append(hp_api.HParam(p.key, domain))
        return out

    def write_experiment(self) -> None:
        """The experiment's hyperparameters (with their domains) and metrics, in ``root``."""
        from tensorboard.plugins.hparams import api as hp_api

        from training._tf import tf

        metrics = [hp_api.Metric(name, display_name=name) for name in (*TRIAL_METRICS, "epochs", "seconds")]
        if self.folds:
            metrics.append(
                hp_api.Metric(self.objective + "_std", display_name=self.objective + " std over folds")
            )
        if any(self.root.glob("events.out.tfevents.*")):  # written when the search started (or by the chief)
            return
        writer = tf.summary.create_file_writer(str(self.root))
        with writer.as_default():
            hp_api.hparams_config(hparams=self._hparams(), metrics=metrics)
        writer.close()

    def write_trial(self, trial_id: str, values: dict[str, Any], metrics: dict[str, float]) -> None:
        """One trial's values and metrics, in ``root/trial_<id>``."""
        from tensorboard.plugins.hparams import api as hp_api

        from training._tf import tf

        writer = tf.summary.create_file_writer(str(self.root / f"trial_{trial_id}"))
        with writer.as_default():
            hp_api.hparams(
                {p.key: _hparam_value(p, values[p.key]) for p in self.params if p.key in values},
                trial_id=trial_id,
            )
            for name, value in metrics.items():
                tf.summary.scalar(name, value, step=1)
