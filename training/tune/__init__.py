"""Hyperparameter search with KerasTuner: ``shipyard tune CONFIG``.

The search space is ``tune.space`` in the config: config keys (``train.learning_rate``,
``model.head.dense``, ``data.augment.rotation``, ...) mapped to how to search them
(:class:`training.config.SearchParamConfig`). A trial is the whole :class:`TrainingConfig` with the
trial's values merged in the way ``--set`` merges overrides, validated like any config, and trained by
:func:`training.train.train`, the code behind ``shipyard train``. Its score is measured after training
on the validation split (or as the mean over ``tune.folds`` cross-validation folds), so the best trial's
config, written as ``best.yaml``, reproduces the trial's score with ``shipyard train best.yaml``
(exactly, with ``train.deterministic``).

KerasTuner provides the search algorithms (the oracles of :data:`TUNERS`), the trial bookkeeping that
makes a search resumable (``overwrite=False`` on the same folder: finished trials are kept, a trial that
was interrupted runs again) and distributed search: one process with ``KERASTUNER_TUNER_ID=chief`` runs
the oracle as a gRPC server on ``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT``, every other process
(``KERASTUNER_TUNER_ID=worker0``, ...) asks it for trials, trains them and reports back. No Keras object
crosses into KerasTuner: only its oracles and :class:`BaseTuner` are used (KerasTuner itself imports
Keras 3; the models are tf_keras).

Design choices:

* Hyperband trials train from scratch for their bracket's epochs instead of continuing the weights of an
  earlier round, so that every trial is reproducible by training its config.
* ``val_loss`` as an objective is the cross-entropy of the validation split whatever ``train.loss`` is,
  so trials that search the loss (cross-entropy against focal) compare fairly.
* ``tune.max_time_s`` is checked by the oracle before each new trial; a running trial is not cut.

Output folder (``runs/tune/<model.name>/`` by default)::

    trials.csv, trials.md    every trial, best first: hyperparameters, objective (and its std over folds)
    objective.png            the objective against each hyperparameter
    best.yaml                the best trial's full config: ``shipyard train best.yaml``
    search.json              what the search was started with (a resumed search must match)
    search/                  KerasTuner's project: oracle.json, trial_<id>/trial.json and each trial's run
    tensorboard/             HParams dashboard: ``tensorboard --logdir <output>/tensorboard``
    folds/                   with tune.folds >= 2: the folds as split folders (symlinks to the images)

Modules: ``space`` (tune.space parsed and checked, a trial's config), ``oracles`` (the objective and tuner
registries), ``folds`` (k-fold split folders, reusable by any stage), ``trials`` (running one trial, the
KerasTuner tuner), ``hparams`` (TensorBoard HParams), ``resume`` (distributed role, resume checks),
``report`` (tables, plot, best.yaml) and ``run`` (:func:`run_tune`, the search as a list of steps).
"""

from training.tune.folds import assign_folds, make_folds
from training.tune.oracles import OBJECTIVES, TUNERS
from training.tune.report import TrialRow, trials_table, write_report
from training.tune.resume import distributed_role
from training.tune.run import TuneOutcome, default_output, run_tune
from training.tune.space import SearchParam, parse_space, trial_config

__all__ = [
    "OBJECTIVES",
    "TUNERS",
    "SearchParam",
    "TrialRow",
    "TuneOutcome",
    "assign_folds",
    "default_output",
    "distributed_role",
    "make_folds",
    "parse_space",
    "run_tune",
    "trial_config",
    "trials_table",
    "write_report",
]
