"""``shipyard tune CONFIG``: hyperparameter search over ``tune.space`` with KerasTuner."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from shipyard.cli import add_config_args, progress_printer

_DESCRIPTION = """\
Searches the config keys listed in tune.space (random search, Hyperband or Bayesian optimization:
tune.tuner), training every trial like 'shipyard train' and scoring it on the validation split
(tune.objective: val_accuracy, val_macro_f1 or val_loss; the mean over tune.folds folds when >= 2).
Writes trials.csv, trials.md, objective.png, best.yaml (a config for 'shipyard train') and TensorBoard
HParams logs to --output. Running it again on the same --output resumes the search.

Distributed search (KerasTuner's chief/worker mode): start one process with KERASTUNER_TUNER_ID=chief
and workers with KERASTUNER_TUNER_ID=worker0, worker1, ..., all with KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT set to the chief's address. The chief hands out trials and writes the report.

The last line printed is the package path with --train-best, else the path of best.yaml."""


def register(sub) -> None:
    from training.config import TuneConfig

    p = sub.add_parser(
        "tune",
        help="search hyperparameters (tune.space) with KerasTuner and write the best config",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--data", default=None, help="data folder (overrides data.path)")
    p.add_argument("--output", default=None, help="search folder (default: runs/tune/<model.name>/)")
    p.add_argument(
        "--tuner",
        choices=list(get_args(TuneConfig.model_fields["tuner"].annotation)),
        default=None,
        help="overrides tune.tuner",
    )
    p.add_argument(
        "--train-best", action="store_true", help="train and package the best config; print its path"
    )
    p.add_argument(
        "--fresh", action="store_true", help="discard an earlier search in --output instead of resuming"
    )
    p.add_argument("--quiet", action="store_true", help="no per-trial progress")
    p.set_defaults(handler=_tune)


def _tune(args) -> int:
    from shipyard import api

    overrides = list(args.overrides)
    if args.tuner:
        overrides.append(f"tune.tuner={args.tuner}")

    progress = progress_printer(args.quiet)

    outcome = api.tune(
        args.config, data=args.data, output=args.output, fresh=args.fresh, progress=progress, overrides=overrides
    )
    if outcome.role == "worker":
        print(f"ran {outcome.trials_run} trial(s) for the chief")
        return 0
    best = outcome.best
    print(outcome.table)
    print(f"\n{outcome.stopped}; best: trial {best.trial_id}, {outcome.best_config.tune.objective} = {best.score:.4f}")
    for name in ("csv", "markdown", "plot"):
        print(f"{name}: {outcome.files[name]}")
    print(f"tensorboard: tensorboard --logdir {outcome.output / 'tensorboard'}")
    if not args.train_best:
        print(outcome.files["best"])
        return 0

    progress(f"training the best config ({outcome.files['best']})")
    trained = api.train(outcome.best_config, output=Path(outcome.output) / "best")
    print(trained.evaluation_table)
    print(f"\ntrained {trained.epochs} epochs in {trained.seconds:.1f}s")
    print(trained.package)
    return 0
