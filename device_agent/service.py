"""gRPC adapter of :class:`device_agent.agent.Agent`: calls through, turning AgentError into status codes."""

from __future__ import annotations

import functools
import logging

import grpc

from device_agent.agent import Agent
from device_agent.errors import MAX_MESSAGE_CHARS, AgentError
from protos.agent.v1 import agent_pb2_grpc

log = logging.getLogger(__name__)


def _status(fn):
    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except AgentError as exc:
            log.info("%s -> %s: %s", fn.__name__, exc.code, exc.message)
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)
        except grpc.RpcError:
            raise
        except Exception as exc:
            if not context.is_active():  # the client went away mid-stream; nothing to answer
                raise
            # Cut: an unexpected error may quote client input, and a status message over gRPC's metadata
            # limit would reach the client as RESOURCE_EXHAUSTED instead.
            text = f"agent error: {type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS]
            log.error("%s failed: %s", fn.__name__, text, exc_info=len(str(exc)) <= MAX_MESSAGE_CHARS)
            context.abort(grpc.StatusCode.INTERNAL, text)

    return wrapper


class AgentService(agent_pb2_grpc.AgentServicer):
    """The ``sculpt.agent.v1.Agent`` service."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @_status
    def GetInfo(self, request, context):  # noqa: N802 - gRPC method name
        return self.agent.info()

    @_status
    def HasArtifact(self, request, context):  # noqa: N802
        return self.agent.has_artifact(request.sha256)

    @_status
    def UploadArtifact(self, request_iterator, context):  # noqa: N802
        return self.agent.upload(iter(request_iterator))

    @_status
    def Benchmark(self, request, context):  # noqa: N802
        return self.agent.benchmark(request, is_active=context.is_active)
