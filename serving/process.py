"""Process control of the prediction server: the ``bentoml serve`` command for a :class:`ServeConfig`, the
foreground run behind ``shipyard serve``, and :class:`ServerProcess`, a server in the background for the load
tester, the tests and the benchmarks.

The standard library only (``psutil`` lazily, for :meth:`ServerProcess.pids`): importing this module loads
neither BentoML nor the service. Every child gets the whole config as one ``SHIPYARD_SERVE_CONFIG`` JSON
(:meth:`ServeConfig.child_env`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from edge.errors import ShipyardError
from serving.config import ServeConfig

SERVICE = "serving.service:Shipyard"


class ServerError(ShipyardError):
    """A server process exited before it was ready, or did not become ready in time."""


def service_root() -> Path:
    """The directory that holds the ``serving`` package (found without importing the service).

    Raises:
        ShipyardError: the serving package is not installed.
    """
    spec = importlib.util.find_spec("serving")
    if spec is None or not spec.submodule_search_locations:
        raise ShipyardError("the serving package is not installed; pip install -e '.[serve]'")
    return Path(next(iter(spec.submodule_search_locations))).parent


def serve_command(config: ServeConfig) -> list[str]:
    """The ``python -m bentoml serve serving.service:Shipyard`` command line for ``config``'s host and port."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--working-dir",
        str(service_root()),
    ]


def server_env(config: ServeConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process for ``config``: ``environ`` (default ``os.environ``) with the
    config as one ``SHIPYARD_SERVE_CONFIG`` JSON, stale ``SHIPYARD_<FIELD>`` variables removed, and BentoML's
    usage tracking off unless ``environ`` says otherwise."""
    env = config.child_env(environ)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_foreground(config: ServeConfig, environ: Mapping[str, str] | None = None) -> int:
    """Run the server for ``config`` until it exits; return its exit status.

    SIGTERM and SIGHUP are passed on to it, Ctrl+C waits for it to stop (the terminal sent it SIGINT too),
    and it is never left running behind, whatever ends this function.
    """
    proc = subprocess.Popen(serve_command(config), env=server_env(config, environ))

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the terminal sent SIGINT to the server too; wait for it to stop
                forward(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """``GET url``: the status and body (an HTTP error status is returned, not raised).

    Raises:
        OSError: the server could not be reached.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file (``(no log)`` when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until_ready(
    url: str,
    timeout_s: float,
    *,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    path: str = "/readyz",
    hint: str = "",
) -> float:
    """Poll ``url + path`` until it answers 200; return the seconds waited.

    Args:
        url: the server's base URL.
        timeout_s: how long to wait.
        proc: the server's process: fail at once when it exits.
        log: its log, whose last lines go into the error.
        path: the readiness endpoint.
        hint: appended to the timeout's message (what to change).

    Raises:
        ServerError: the process exited, or ``timeout_s`` passed.
    """
    started = time.monotonic()
    last = "no answer"
    tail = f"; its log ({log}) ends with:\n" if log is not None else ""
    while time.monotonic() - started < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise ServerError(
                f"the server exited with status {proc.returncode} before {url}{path} answered"
                + (tail + log_tail(log) if log is not None else "")
            )
        try:
            status, _ = http_get(f"{url}{path}", timeout_s=2.0)
            if status == 200:
                return time.monotonic() - started
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise ServerError(
        f"{url}{path} did not answer 200 within {timeout_s:.0f}s (last: {last}){hint}"
        + (tail + log_tail(log) if log is not None else "")
    )


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its process group:
    SIGTERM, then SIGKILL after ``grace_s``. Only the group of this process is signalled."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    # The leader may be gone while children of its group still run (a server's workers).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class ServerProcess:
    """A server for one :class:`ServeConfig`, in the background and in its own process group.

    ``with ServerProcess(config, log) as server: server.wait_ready(180); ... server.url ...``: the server
    starts on entering (its output goes to ``log``) and is stopped, with every child, on leaving. By default
    it runs :func:`serve_command`; ``command`` runs another (``shipyard serve``, a baseline server) with the
    same environment.

    Args:
        config: what to serve, and where (``host``, ``port``; see :func:`free_port`).
        log: the file the server's stdout and stderr go to (its folder is created).
        command: the command line (default :func:`serve_command` of ``config``).
        environ: the base environment (default ``os.environ``), see :func:`server_env`.
        cwd: the working directory of the server.
    """

    def __init__(
        self,
        config: ServeConfig,
        log: Path,
        *,
        command: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.config = config
        self.log = Path(log)
        self.command = list(command) if command is not None else serve_command(config)
        self.env = server_env(config, environ)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self.config.port

    def start(self) -> ServerProcess:
        """Start the server (once); return ``self``."""
        if self.proc is None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen(
                    self.command,
                    cwd=self.cwd,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        return self

    def wait_ready(self, timeout: float = 180.0, *, path: str = "/readyz", hint: str = "") -> float:
        """Wait until ``path`` answers 200; return the seconds waited.

        Raises:
            ServerError: the server exited first (the message holds its log's last lines), or ``timeout``
                passed.
        """
        self.start()
        return wait_until_ready(self.url, timeout, proc=self.proc, log=self.log, path=path, hint=hint)

    def output(self) -> str:
        """What the server wrote to its log so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The server and all its descendants (empty once it is gone)."""
        import psutil

        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate the server and its process group; kill them after ``timeout`` seconds."""
        if self.proc is not None:
            stop_process_group(self.proc, grace_s=timeout)

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
