"""``train.distribution``: the ``tf.distribute`` strategy, and who writes what in a multi-worker run.

Multi-worker training follows the TensorFlow guide (Multi-worker training with Keras): every worker runs
the same ``shipyard train`` with the same config (``train.version`` fixed, so that all agree on the run
directory) and its own ``TF_CONFIG``; the chief (the task of type ``chief``, else worker 0) writes the run
directory, its checkpoints, logs and in the end the package; the other workers write what Keras makes them
write (checkpoints, logs) into a temporary folder of their own, removed at the end. BackupAndRestore keeps
its state in the shared run directory (Keras writes the non-chief copies into temporary subfolders itself),
so ``--resume`` on every worker continues from the last finished epoch after any of them died.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.config import ConfigError
from training._tf import tf


def make_strategy(distribution: str):
    """The ``tf.distribute`` strategy for ``train.distribution``; multi_worker reads ``TF_CONFIG``."""
    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribution == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "train.distribution = 'multi_worker' needs the TF_CONFIG environment variable "
                "(cluster and task) on every worker; see the tf.distribute MultiWorkerMirroredStrategy docs"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def task_of_tf_config() -> tuple[str, int, bool]:
    """``(task type, index, is chief)`` from ``TF_CONFIG`` (``("chief", 0, True)`` without one)."""
    raw = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = raw.get("task") or {}, raw.get("cluster") or {}
    kind, index = str(task.get("type", "chief")), int(task.get("index", 0))
    chief = kind == "chief" or ("chief" not in cluster and kind == "worker" and index == 0)
    return kind, index, chief


@dataclass
class Writer:
    """Where this process writes: the run directory (the chief, and any single-process run) or a temporary
    folder (a non-chief worker). ``chief`` says which."""

    run_dir: Path
    write_dir: Path
    chief: bool

    @classmethod
    def for_run(cls, run_dir: Path, distribution: str) -> Writer:
        """The writer of this process for ``run_dir``."""
        if distribution != "multi_worker":
            return cls(run_dir, run_dir, True)
        kind, index, chief = task_of_tf_config()
        if chief:
            return cls(run_dir, run_dir, True)
        return cls(run_dir, Path(tempfile.mkdtemp(prefix=f"shipyard-{kind}{index}-")), False)

    def close(self) -> None:
        """Remove a non-chief worker's temporary folder."""
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
