"""The errors of optimization."""

from __future__ import annotations

from edge.errors import ShipyardError


class OptimizeError(ShipyardError):
    """Optimization could not run at all (no such variant, a package without its model...)."""


class NotApplicableError(OptimizeError):
    """A technique cannot be applied to this model; the message says why and what would make it apply."""
