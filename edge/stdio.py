"""Silencing what native runtimes print straight to file descriptor 2 (LiteRT, TensorFlow)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null inside the block (C++ runtimes print INFO lines there).

    Python exceptions are unaffected: their text still reaches the caller. Does nothing when ``enabled``
    is false or the process has no real fd 2 (an embedded interpreter, captured output).
    """
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
