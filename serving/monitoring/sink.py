"""The request log: every request's features and prediction, one ``bentoml.monitor`` record per batch that the
monitor's thread processes (``serve.monitor.sink_enabled``; the sink class and options from ``MonitorConfig`` or
BentoML's ``monitoring`` config)."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any

from serving.config import MonitorConfig
from serving.monitoring.signals import FEATURES, Observation


def request_log_dir(config: MonitorConfig) -> Path:
    """Where the default ``bentoml.monitor`` sink writes the request logs: ``serve.monitor.log_dir``, else
    ``monitoring/`` in the BentoML home (``$BENTOML_HOME``, default ``~/bentoml``); never the working directory
    that ``bentoml serve`` runs in (the checkout, or site-packages)."""
    if config.log_dir is not None:
        return Path(config.log_dir).expanduser().absolute()
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().absolute() / "monitoring"


def sink_kwargs(config: MonitorConfig) -> dict[str, Any]:
    """``bentoml.monitor``'s ``monitor_class``/``monitor_options`` for ``config``: the default sink writes under
    :func:`request_log_dir`; another class gets its options as configured."""
    cls = config.sink_class or "default"
    options = dict(config.sink_options or {})
    if cls == "default":
        options.setdefault("log_path", str(request_log_dir(config)))
    return {"monitor_class": cls, "monitor_options": options}


class RequestLog:
    """Writes batches of observations through one ``bentoml.monitor`` instance, made on the first batch.

    Args:
        config: the monitor's settings (``sink``, ``sink_class``, ``sink_options``, ``log_dir``).
        labels: the model's labels, by index (a record names the predicted label).
    """

    def __init__(self, config: MonitorConfig, labels: list[str]) -> None:
        self.config = config
        self.labels = labels
        self.sink: Any = None

    def write(self, items: list[Observation]) -> None:
        """One ``bentoml.monitor`` record per request (written as one batch).

        The monitor instance is created once through ``bentoml.monitor`` (so BentoML's ``monitoring``
        config picks the class and options unless the MonitorConfig names them) and then driven
        directly, in a fresh context each time, with BentoML's per-record variables cleared: a sink
        that failed half-way cannot leave them set and break the next record.
        """
        columns: list[tuple[str, str, str, list[Any]]] = [
            ("request", "feature", "categorical", [obs.request_id for obs in items]),
            ("received", "feature", "numerical", [round(obs.received, 3) for obs in items]),
            ("variant", "feature", "categorical", [obs.variant for obs in items]),
        ]
        for j, name in enumerate(FEATURES):
            values = [obs.features[j] for obs in items]
            if name in ("width", "height"):
                columns.append((name, "feature", "numerical", [int(v) if v == v else None for v in values]))
            else:
                columns.append((name, "feature", "numerical", [round(float(v), 4) for v in values]))
        columns.append(("prediction", "prediction", "categorical", [self.labels[o.prediction] for o in items]))
        columns.append(("confidence", "prediction", "numerical", [round(o.confidence, 6) for o in items]))
        contextvars.Context().run(self._write, columns)

    def _write(self, columns: list[tuple[str, str, str, list[Any]]]) -> None:
        try:
            from bentoml._internal.monitoring.base import MON_COLUMN_VAR, MON_DATAS_VAR
        except ImportError:  # pragma: no cover - another BentoML layout
            MON_COLUMN_VAR = MON_DATAS_VAR = None
        if self.sink is None:
            import bentoml

            kwargs = sink_kwargs(self.config)
            # The first record defines the schema: log it row by row (log_batch would repeat columns).
            manager = bentoml.monitor(self.config.sink, **kwargs)
            mon = manager.__enter__()
            for name, role, kind, values in columns:
                mon.log(values[0], name, role, kind)
            manager.__exit__(None, None, None)
            self.sink = mon
            columns = [(name, role, kind, values[1:]) for name, role, kind, values in columns]
            if not columns[0][3]:
                return
        if MON_COLUMN_VAR is not None and MON_DATAS_VAR is not None:
            MON_COLUMN_VAR.set(None)
            MON_DATAS_VAR.set(None)
        self.sink.start_record()
        for name, role, kind, values in columns:
            self.sink.log_batch(values, name, role, kind)
        self.sink.stop_record()
