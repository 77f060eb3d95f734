"""The search's report: the trials table (terminal, CSV, Markdown), the objective plot and ``best.yaml``."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.config import TrainingConfig, TuneConfig
from training.tables import format_table, markdown_table
from training.tune.oracles import OBJECTIVES, TRIAL_METRICS, TUNERS
from training.tune.space import SearchParam, label


@dataclass
class TrialRow:
    """One trial in the report: its config values (for display), metrics and status."""

    trial_id: str
    status: str
    score: float | None
    values: dict[str, Any]
    display: dict[str, str]
    metrics: dict[str, float]
    tuner: str
    message: str = ""


def trial_rows(oracle: Any, params: list[SearchParam]) -> list[TrialRow]:
    """Every trial of the oracle, best first (finished trials by the objective, then the others)."""
    direction = oracle.objective.direction
    rows = []
    for trial in oracle.trials.values():
        values = dict(trial.hyperparameters.values)
        metrics = {name: float(trial.metrics.get_last_value(name)) for name in trial.metrics.metrics}
        score = trial.score if trial.status == "COMPLETED" else None
        rows.append(
            TrialRow(
                trial_id=trial.trial_id,
                status=trial.status,
                score=None if score is None else float(score),
                values=values,
                display={p.key: p.display(values[p.key]) for p in params if p.key in values},
                metrics=metrics,
                tuner=getattr(oracle, "trial_tuners", {}).get(trial.trial_id, ""),
                message=trial.message or "",
            )
        )
    sign = -1.0 if direction == "max" else 1.0
    return sorted(
        rows,
        key=lambda r: (r.score is None or math.isnan(r.score), sign * (r.score or 0.0), int(r.trial_id)),
    )


@dataclass(frozen=True)
class _Layout:
    """Which columns the trials table has: the objective's spread with folds, Hyperband's budget, the tuner."""

    objective: str
    std: bool
    others: list[str]
    hyperband: bool
    tuners: bool

    @classmethod
    def of(cls, rows: list[TrialRow], tune: TuneConfig) -> _Layout:
        return cls(
            objective=tune.objective,
            std=tune.folds >= 2,
            others=[m for m in TRIAL_METRICS if m != tune.objective],
            hyperband=any("tuner/epochs" in r.values for r in rows),
            tuners=any(r.tuner not in ("", "tuner0") for r in rows),  # distributed: who ran each trial
        )

    def headers(self, params: list[SearchParam]) -> list[str]:
        objective = self.objective
        return [
            "rank",
            "trial",
            "status",
            objective,
            *([f"{objective}_std"] if self.std else []),
            *(p.key for p in params),
            *self.others,
            "epochs",
            *(["budget_epochs"] if self.hyperband else []),
            "seconds",
            *(["tuner"] if self.tuners else []),
        ]

    def row(self, rank: int, r: TrialRow, params: list[SearchParam], precise: bool) -> list[Any]:
        def num(name: str, fmt: str = ".4f") -> Any:
            if name not in r.metrics:
                return ""
            return r.metrics[name] if precise else format(r.metrics[name], fmt)

        def value(p: SearchParam) -> Any:
            if p.key not in r.values:
                return ""
            if not precise:
                return r.display[p.key]
            v = p.decode(r.values[p.key])
            return v if isinstance(v, int | float | str) else label(v)

        return [
            rank if r.score is not None else "",
            r.trial_id,
            r.status,
            num(self.objective),
            *([num(f"{self.objective}_std")] if self.std else []),
            *(value(p) for p in params),
            *(num(o) for o in self.others),
            num("epochs", ".3g"),
            *([r.values.get("tuner/epochs", "")] if self.hyperband else []),
            num("seconds", ".1f"),
            *([r.tuner] if self.tuners else []),
        ]


def _columns(
    rows: list[TrialRow], params: list[SearchParam], tune: TuneConfig, *, precise: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the trials table; ``precise`` keeps full precision (for the CSV file)."""
    layout = _Layout.of(rows, tune)
    table = [layout.row(rank, r, params, precise) for rank, r in enumerate(rows, start=1)]
    return layout.headers(params), table


def trials_table(
    rows: list[TrialRow], params: list[SearchParam], tune: TuneConfig, limit: int | None = None
) -> str:
    """The trials as a plain-text table, best first (at most ``limit`` rows)."""
    headers, table = _columns(rows, params, tune)
    shown = table[:limit] if limit else table
    text = format_table(headers, shown)
    if limit and len(table) > limit:
        text += f"\n({len(table) - limit} more in trials.csv)"
    return text


def write_report(
    output: Path,
    config: TrainingConfig,
    params: list[SearchParam],
    rows: list[TrialRow],
    best_config: TrainingConfig,
    stopped: str,
) -> dict[str, Path]:
    """Write ``trials.csv``, ``trials.md``, ``objective.png`` and ``best.yaml`` into ``output``.

    Returns:
        ``{"csv", "markdown", "plot", "best"}`` paths.
    """
    files = {
        "csv": output / "trials.csv",
        "markdown": output / "trials.md",
        "plot": output / "objective.png",
        "best": output / "best.yaml",
    }
    _write_csv(files["csv"], rows, params, config.tune)
    files["markdown"].write_text(_markdown(config, params, rows, stopped))
    plot_objective(rows, params, config.tune.objective, files["plot"])
    _write_best(files["best"], config.tune, rows, best_config)
    return files


def _write_csv(path: Path, rows: list[TrialRow], params: list[SearchParam], tune: TuneConfig) -> None:
    headers, precise = _columns(rows, params, tune, precise=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows(precise)


def _markdown(config: TrainingConfig, params: list[SearchParam], rows: list[TrialRow], stopped: str) -> str:
    """``trials.md``: the search's settings, the best trial and its overrides, the table and the plot."""
    tune = config.tune
    headers, table = _columns(rows, params, tune)
    best = rows[0]
    completed = sum(r.status == "COMPLETED" for r in rows)
    objective = OBJECTIVES[tune.objective]
    overrides = " ".join(
        f"--set {p.key}={label(p.decode(best.values[p.key]))}" for p in params if p.key in best.values
    )
    md = [
        f"# Hyperparameter search: {config.model.name}",
        "",
        f"- tuner: {tune.tuner} ({TUNERS[tune.tuner].description})",
        f"- objective: {tune.objective}, {objective.description} ({objective.direction})"
        + (f", mean over {tune.folds} folds" if tune.folds >= 2 else ""),
        f"- trials: {completed} finished of {len(rows)} ({stopped})",
        f"- best: trial {best.trial_id}, {tune.objective} = {best.score:.4f}",
        f"- best config: `best.yaml` (`shipyard train best.yaml`), i.e. `{overrides}`",
        "",
        markdown_table(headers, table),
        "",
        "![objective against each hyperparameter](objective.png)",
        "",
    ]
    return "\n".join(md)


def _write_best(path: Path, tune: TuneConfig, rows: list[TrialRow], best_config: TrainingConfig) -> None:
    """``best.yaml``: the best trial's full config, headed by how it scored and how to train it."""
    best = rows[0]
    completed = sum(r.status == "COMPLETED" for r in rows)
    header = (
        f"# Best of {completed} trials of 'shipyard tune' ({tune.tuner}): trial {best.trial_id}, "
        f"{tune.objective} = {best.score:.4f}\n# Train it with: shipyard train {path.name}\n"
    )
    path.write_text(header + yaml.safe_dump(best_config.training_dump(), sort_keys=False))


def plot_objective(rows: list[TrialRow], params: list[SearchParam], objective: str, path: Path) -> None:
    """One panel per hyperparameter: the objective of each finished trial against its value; best marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.score is not None and not math.isnan(r.score)]
    n = len(params)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, p in zip(axes.flat, params, strict=False):
        xs: list[Any] = []
        ys = [r.score for r in done if p.key in r.values]
        if p.numeric:
            xs = [float(p.decode(r.values[p.key])) for r in done if p.key in r.values]
            if p.spec.log:
                ax.set_xscale("log")
        else:
            ticks = [p.display(raw) for raw in p.choices()]
            index = {tick: i for i, tick in enumerate(ticks)}
            xs = [index.get(r.display[p.key], 0) for r in done if p.key in r.values]
            ax.set_xticks(range(len(ticks)))
            ax.set_xticklabels(ticks, rotation=30, ha="right", fontsize=8)
        ax.scatter(xs, ys, s=28, alpha=0.75)
        if done and p.key in done[0].values:
            ax.scatter(xs[:1], ys[:1], s=140, marker="*", color="tab:red", label="best", zorder=3)
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(p.key, fontsize=9)
        ax.set_ylabel(objective, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{objective} of {len(done)} trials", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
