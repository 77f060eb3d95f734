"""Fixtures for the operations tests; they live in ``ops_support`` so test modules can import its helpers by
a unique name (every test folder has a ``conftest.py``, so ``import conftest`` is ambiguous)."""

from ops_support import *  # noqa: F403 - re-exports the fixtures for pytest
