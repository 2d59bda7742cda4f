"""Build and run the gRPC server: agent service, standard health service, token check, TLS."""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from device_agent.agent import Agent
from device_agent.auth import TokenInterceptor, server_credentials
from device_agent.config import AgentConfig
from device_agent.service import AgentService
from protos.agent.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
MAX_SEND_BYTES = 256 * 1024 * 1024  # output tensors of large models travel in one message
EXIT_GUARD_S = 10.0  # after shutdown, a thread that still blocks the interpreter's exit gets this long


def create_server(config: AgentConfig) -> tuple[grpc.Server, int]:
    """A configured, not yet started server and the port it bound (port 0 picks a free one).

    The agent behind it is ``server.agent``; stop both with :func:`stop_server`. Health reports SERVING for
    the empty service name and ``sculpt.agent.v1.Agent`` as soon as the server is started.
    """
    config.validate()
    agent = Agent(config)
    interceptors = [TokenInterceptor(config.token)] if config.token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.queue_capacity + 8, thread_name_prefix="agent-rpc"),
        interceptors=interceptors,
        # Receiving is capped by config: nothing a client sends (input tensors, 1 MiB upload chunks, strings
        # capped at a few hundred characters) needs more, and every byte received is held while parsed.
        options=[("grpc.max_receive_message_length", config.max_request_bytes),
                 ("grpc.max_send_message_length", MAX_SEND_BYTES),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=config.queue_capacity + 32,
    )
    agent_pb2_grpc.add_AgentServicer_to_server(AgentService(agent), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{_bracket(config.host)}:{config.port}"
    try:
        if config.tls is not None:
            port = server.add_secure_port(address, server_credentials(config.tls))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises when the bind fails
        agent.close()
        raise OSError(f"cannot bind {address}: {exc}; pick another --port or --host") from exc
    if port == 0:
        agent.close()
        raise OSError(f"cannot bind {address}: address in use or not available; pick another --port or --host")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.agent = agent
    server.health = health_servicer
    return server, port


def stop_server(server: grpc.Server, grace: float | None = 2.0) -> None:
    """Stop serving (health goes NOT_SERVING first), then stop the worker processes."""
    server.health.enter_graceful_shutdown()
    # First end the agent's waits (queue, cool-down, a running benchmark), so in-flight calls answer
    # UNAVAILABLE within the grace period instead of being cut off after it.
    server.agent.stopping.set()
    server.stop(grace).wait()
    server.agent.close()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(config: AgentConfig, announce=print, exit_with_parent: bool = False) -> None:
    """Run until SIGINT/SIGTERM; prints ``listening on HOST:PORT`` (flushed) once serving.

    With ``exit_with_parent`` it also stops when the parent process dies (see :mod:`device_agent.parent`).
    """
    done = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: shutting down", signum)
        done.set()

    # Before anything is created, so a signal during start-up still cleans up (an ephemeral store).
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if exit_with_parent:
        from device_agent.parent import watch_parent

        watch_parent(lambda _reason: done.set())
    server, port = create_server(config)
    try:
        server.start()
        server.agent.preload()
        announce(f"listening on {config.host}:{port}", flush=True)
        log.info("agent serving on %s:%d (store %s, tls=%s, token=%s)", config.host, port, config.store_dir,
                 config.tls is not None, bool(config.token))
        done.wait()
    finally:
        stop_server(server)
    # Every wait in the agent ends on close(); should some thread still block the interpreter's exit (which
    # joins the RPC threads), end the process anyway rather than hang on after SIGTERM.
    guard = threading.Timer(EXIT_GUARD_S, lambda: os._exit(0))
    guard.daemon = True
    guard.start()
