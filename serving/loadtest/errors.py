"""The load tester's error."""

from __future__ import annotations

from edge.errors import ShipyardError


class LoadTestError(ShipyardError):
    """A load test could not run: the service did not start or answer, or Locust failed."""
