"""Errors of the device agent. Each carries the gRPC status code name the service answers with.

The agent does not import ``host``; the host's client turns these codes back into ``host.errors`` classes.
"""

from __future__ import annotations

# Client strings are echoed into errors and logs only this long: a 10 MiB hash must not become a 10 MiB log
# line, nor a status message over gRPC's metadata limit (which turns the answer into RESOURCE_EXHAUSTED).
ECHO_CHARS = 80
# Longest status message the service sends; the default gRPC metadata limit is 8 KiB.
MAX_MESSAGE_CHARS = 2000


def shorten(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said, for echoing client input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, (str, bytes)) else ""
    return f"{text[:limit]}...{length}"


class AgentError(Exception):
    """A failure the agent reports to its caller with a status code name and a message saying what to do."""

    def __init__(self, code: str, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:  # a safety net; callers already shorten what they echo
            message = message[:MAX_MESSAGE_CHARS] + "... (message cut)"
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
