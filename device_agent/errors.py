"""Errors of the device agent. Each carries the gRPC status code name the service answers with.

The agent does not import ``host``; the host's client turns these codes back into ``host.errors`` classes.
"""

from __future__ import annotations


class AgentError(Exception):
    """A failure the agent reports to its caller with a status code name and a message saying what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # a grpc.StatusCode name, e.g. "INVALID_ARGUMENT"
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def invalid(message: str) -> AgentError:
    """Bad input from the caller (malformed artifact, wrong shape, unknown runtime)."""
    return AgentError("INVALID_ARGUMENT", message)


def precondition(message: str) -> AgentError:
    """The request is fine but this device cannot serve it yet (missing runtime, artifact not uploaded)."""
    return AgentError("FAILED_PRECONDITION", message)


class AgentConfigError(ValueError):
    """A configuration the daemon refuses to start with (e.g. a public address without TLS and a token)."""
