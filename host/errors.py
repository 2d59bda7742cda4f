"""One error hierarchy for the host side (its root, :class:`SculptError`, is in :mod:`patterns.errors`).

Every error carries a message that says what went wrong and, in ``hint``, what the user should do. The CLI
prints both and exits with ``exit_code``; libraries raise these instead of asserting on user input.
"""

from __future__ import annotations

from patterns.errors import ConfigError, ModelError, PlanError, SculptError

__all__ = ["BenchmarkError", "ConfigError", "DataError", "DeviceAuthError", "DeviceError", "DeviceUnreachableError",
           "ExportError", "MissingDependencyError", "ModelError", "PlanError", "ProtocolMismatchError",
           "SculptError", "SearchError"]


class MissingDependencyError(SculptError):
    """An optional dependency is needed for the feature that was asked for."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the Python package '{package}', which is not installed",
            hint=f"pip install 'autosculpt[{extra}]'",
        )
        self.package = package
        self.extra = extra


class DataError(SculptError):
    """A dataset that cannot be found or read."""


class ExportError(SculptError):
    """Export to .pte / .tflite failed or its outputs disagree with eager PyTorch."""


class DeviceError(SculptError):
    """Base for anything that goes wrong while talking to a device agent."""

    exit_code = 3


class DeviceUnreachableError(DeviceError):
    """The device or its agent cannot be reached (network, SSH, agent not running)."""


class DeviceAuthError(DeviceError):
    """The device refused us: wrong SSH key or user, unknown host key, bad agent token or certificate."""


class ProtocolMismatchError(DeviceError):
    """The agent speaks a different protocol version."""


class BenchmarkError(DeviceError):
    """The agent ran the benchmark and it failed (bad artifact, wrong shape, timeout, busy)."""

    def __init__(self, message: str, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code  # gRPC status code name, e.g. "DEADLINE_EXCEEDED"


class SearchError(SculptError):
    """The search cannot start or continue (unreachable target, corrupt journal)."""
