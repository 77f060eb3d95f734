"""CLI verbs: each module defines ``register(subparsers)`` and sets ``handler`` on its parsers."""
