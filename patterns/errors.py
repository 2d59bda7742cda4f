"""The root of AutoSculpt's error hierarchy, and the errors the pattern library raises.

It lives here, at the bottom of the layering, so that ``patterns`` stands on its own; ``host.errors`` re-exports
these classes and adds the host's own. Every error carries a message that says what went wrong and, in
``hint``, what the user should do; the CLI prints both and exits with ``exit_code``.
"""

from __future__ import annotations


class SculptError(Exception):
    """Base class of every error AutoSculpt raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(SculptError):
    """A bad flag, config file, fleet file or plan file."""


class ModelError(SculptError):
    """A model that cannot be loaded, traced or run (unknown name, bad checkpoint, wrong input shape)."""


class PlanError(SculptError):
    """A pruning plan that names unknown layers or patterns, or would remove a layer entirely."""
