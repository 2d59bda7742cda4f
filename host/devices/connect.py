"""``connect(address, options)``: the one way the search, the CLI and the fleet runner reach any device.

A :class:`DeviceHandle` owns whatever the connection needs (a private local agent, an SSH session with its
tunnel, or just a gRPC channel) and closes it on exit. Calls go through :meth:`DeviceHandle.call`, which
re-establishes a dropped connection and retries with backoff, but only calls that are safe to repeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from device_agent import __version__ as HOST_VERSION
from host.devices.address import DeviceAddress
from host.devices.bootstrap import AgentLaunch, ensure_agent, stop_agent
from host.devices.retry import RetryPolicy, call_with_retry
from host.devices.ssh import SSHOptions, open_ssh
from host.devices.tunnel import Tunnel
from host.errors import ConfigError, DeviceUnreachableError, ProtocolMismatchError

if TYPE_CHECKING:
    from host.devices.client import AgentClient
    from host.devices.results import BenchSpec, Measurement

log = logging.getLogger(__name__)
T = TypeVar("T")

@dataclass(frozen=True)
class ConnectOptions:
    """How to reach devices. Per-device credentials (fleet files) are set with ``dataclasses.replace``."""

    ssh: SSHOptions = field(default_factory=SSHOptions)
    agent: AgentLaunch = field(default_factory=AgentLaunch)
    token_file: Path | None = None  # bearer token for grpc(s):// agents
    ca_cert: Path | None = None  # CA that signed a grpcs:// agent's certificate (None = system roots)
    timeout: float = 30.0  # deadline of ordinary calls, seconds
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}", hint="pass --token-file FILE") from None
    try:
        # UTF-8 whatever the locale says, as the agent reads its own copy of the token
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the token file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint="pass the file holding the agent's token (the one its token_file names), saved as UTF-8",
        ) from None


def _read_bytes(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from None


class _Endpoint:
    """Opens an AgentClient for one kind of address; ``close`` releases what ``open`` created."""

    def open(self) -> AgentClient:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self) -> None:
        """Raise DeviceUnreachableError when the transport under the client is known to be dead."""

    def close(self) -> None:
        pass

    def upgrade_hint(self) -> str:
        return "pip install --upgrade 'autosculpt[agent]' on the board, then restart sculpt-agent"


class _DirectEndpoint(_Endpoint):
    def __init__(self, address: DeviceAddress, options: ConnectOptions) -> None:
        self.address, self.options = address, options

    def open(self) -> AgentClient:
        import grpc

        from host.devices.client import MAX_MESSAGE_BYTES, AgentClient

        token = _read_token(self.options.token_file)
        if self.address.kind == "grpc":
            return AgentClient(self.address.target, token=token, timeout=self.options.timeout)
        if token is None:
            raise ConfigError(
                f"{self.address} needs the agent's bearer token",
                hint="pass --token-file FILE (or token_file in the fleet file)",
            )
        # root_certificates=None means the system's trusted roots, for agents with a public certificate.
        root = _read_bytes(self.options.ca_cert, "CA certificate")
        channel = grpc.secure_channel(
            self.address.target,
            grpc.ssl_channel_credentials(root_certificates=root),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
        )
        return AgentClient.from_channel(channel, token=token, timeout=self.options.timeout,
                                        target=self.address.target)


class _LocalEndpoint(_Endpoint):
    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self._agent = None

    def open(self) -> AgentClient:
        from host.devices.local import LocalAgent

        if self._agent is None:
            self._agent = LocalAgent()
            self._agent.start()
        return self._agent.client(timeout=self.options.timeout)

    def close(self) -> None:
        if self._agent is not None:
            self._agent.stop()
            self._agent = None

    def upgrade_hint(self) -> str:
        return "reinstall this checkout: pip install -e '.[host]'"


class _SSHEndpoint(_Endpoint):
    def __init__(self, address: DeviceAddress, options: ConnectOptions) -> None:
        self.address, self.options = address, options
        self._ssh = None
        self._tunnel: Tunnel | None = None
        self.remote = None

    def open(self) -> AgentClient:
        from host.devices.client import AgentClient

        self.close()
        self._ssh = open_ssh(self.address, self.options.ssh)
        try:
            self.remote = ensure_agent(self._ssh, self.options.agent, str(self.address))
            if self.remote.version != HOST_VERSION:
                # The protocol version decides compatibility (checked on GetInfo); this is only a nudge.
                log.warning("%s runs sculpt-agent %s, this host is %s; to align: %s", self.address,
                            self.remote.version, HOST_VERSION, self.upgrade_hint())
            self._tunnel = Tunnel(self._ssh.get_transport(), "127.0.0.1", self.remote.port)
            client = AgentClient(self._tunnel.target, timeout=self.options.timeout)
            if not self.remote.started and not _healthy(client):
                # A pid that is alive but does not answer (or was reused by another process): restart once.
                log.warning("agent on %s does not answer on port %d; restarting it", self.address, self.remote.port)
                client.close()
                self._tunnel.close()
                stop_agent(self._ssh, self.options.agent)
                self.remote = ensure_agent(self._ssh, self.options.agent, str(self.address))
                self._tunnel = Tunnel(self._ssh.get_transport(), "127.0.0.1", self.remote.port)
                client = AgentClient(self._tunnel.target, timeout=self.options.timeout)
            return client
        except BaseException:
            self.close()
            raise

    def check(self) -> None:
        if self._tunnel is None:
            raise DeviceUnreachableError(f"no SSH tunnel to {self.address}")
        self._tunnel.check()

    def stop_remote_agent(self) -> bool:
        """Stop the detached agent on the board (used by `devices stop` and tests)."""
        if self._ssh is None:
            self._ssh = open_ssh(self.address, self.options.ssh)
        return stop_agent(self._ssh, self.options.agent)

    def close(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None

    def upgrade_hint(self) -> str:
        return f"sculpt-host devices install {self.address}"


def _healthy(client: AgentClient) -> bool:
    try:
        return bool(client.health())
    except Exception as exc:
        log.debug("health check failed: %s", exc)
        return False


class DeviceHandle:
    """A connected device. Use as a context manager; ``client`` is the live AgentClient.

    Thread-safe for ``call``: the fleet runner and the device pool share one handle per device.
    """

    def __init__(self, address: DeviceAddress, options: ConnectOptions) -> None:
        self.address = address
        self.options = options
        if address.kind == "local":
            self._endpoint: _Endpoint = _LocalEndpoint(options)
        elif address.kind == "ssh":
            self._endpoint = _SSHEndpoint(address, options)
        elif address.kind in ("grpc", "grpcs"):
            self._endpoint = _DirectEndpoint(address, options)
        else:
            raise ConfigError(f"unknown device kind {address.kind!r}")
        self._client: AgentClient | None = None
        self._lock = threading.RLock()
        self.info = None  # DeviceInfo of the last successful connect
        self.reconnects = 0

    @property
    def label(self) -> str:
        """Name shown to users (fleet name or address)."""
        return self.address.label

    @property
    def client(self) -> AgentClient:
        """The live client, connecting (and checking the protocol version) on first use."""
        with self._lock:
            if self._client is not None:
                try:
                    self._endpoint.check()
                except DeviceUnreachableError as exc:
                    log.info("%s: %s; reconnecting", self.label, exc)
                    self.reconnect()
            if self._client is None:
                client = self._endpoint.open()
                try:
                    self.info = client.get_info()
                except ProtocolMismatchError as exc:
                    client.close()
                    self._endpoint.close()
                    raise ProtocolMismatchError(
                        f"{self.label}: {exc.message}", hint=f"upgrade the agent: {self._endpoint.upgrade_hint()}"
                    ) from None
                except BaseException:
                    client.close()
                    self._endpoint.close()
                    raise
                self._client = client
            return self._client

    def _drop(self) -> None:
        with self._lock:
            if self._client is not None:
                # closing a dead channel may fail; it is gone either way
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None
            self._endpoint.close()

    def reconnect(self) -> None:
        """Drop the connection; the next call opens a fresh one."""
        self._drop()
        self.reconnects += 1

    def call(self, fn: Callable[[AgentClient], T], *, idempotent: bool) -> T:
        """Run ``fn(client)``; on a transient failure reconnect and retry with backoff when ``idempotent``."""

        def attempt() -> T:
            return fn(self.client)

        def on_retry(_attempt: int, exc: BaseException, _delay: float) -> None:
            if isinstance(exc, DeviceUnreachableError) or getattr(exc, "code", None) == "UNAVAILABLE":
                log.info("%s: connection lost (%s); reconnecting", self.label, exc)
                self.reconnect()

        return call_with_retry(attempt, self.options.retry, idempotent=idempotent, on_retry=on_retry)

    def get_info(self):
        """Fresh DeviceInfo from the agent."""
        info = self.call(lambda c: c.get_info(), idempotent=True)
        self.info = info
        return info

    def health(self) -> bool:
        """True when the agent's standard health service reports SERVING."""
        return bool(self.call(lambda c: c.health(), idempotent=True))

    def benchmark_file(self, path: Path, spec: BenchSpec | None = None) -> Measurement:
        """Upload ``path`` when the agent lacks it and benchmark it; retried safely (by hash and job id)."""
        from host.devices.results import BenchSpec

        spec = spec or BenchSpec()
        if spec.job_id is None:  # one id for every retry, so the agent runs the job at most once
            spec = dataclasses.replace(spec, job_id=uuid.uuid4().hex)
        return self.call(lambda c: c.ensure_and_benchmark(Path(path), spec), idempotent=True)

    def stop_remote_agent(self) -> bool:
        """Stop a detached agent this host started on an SSH board; False for other kinds."""
        if isinstance(self._endpoint, _SSHEndpoint):
            self._drop()
            return self._endpoint.stop_remote_agent()
        return False

    def close(self) -> None:
        """Close the client and everything under it (tunnel, SSH session, local agent)."""
        self._drop()

    def __enter__(self) -> DeviceHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeviceHandle({self.label})"


def connect(address: DeviceAddress, options: ConnectOptions | None = None, *, eager: bool = True) -> DeviceHandle:
    """Reach the agent at ``address``; with ``eager`` connect now so that errors surface here."""
    handle = DeviceHandle(address, options or ConnectOptions())
    if eager:
        try:
            call_with_retry(lambda: handle.client, handle.options.retry, idempotent=True,
                            on_retry=lambda *_: handle.reconnect())
        except BaseException:
            handle.close()
            raise
    return handle
