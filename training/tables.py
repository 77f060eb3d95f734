"""Tables live in :mod:`edge.tables` (every package may use them); re-exported for training's modules."""

from edge.tables import format_table, markdown_table

__all__ = ["format_table", "markdown_table"]
