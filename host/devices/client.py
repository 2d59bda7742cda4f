"""The host's client of the device agent: the ONE place where gRPC status codes become host.errors.

Every call carries a deadline; results come back as the typed dataclasses of ``host.devices.results``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_agent import __version__ as HOST_VERSION  # the protocol package version this host speaks
from host.devices.results import BenchSpec, DeviceInfo, Measurement, UploadResult
from host.errors import (
    BenchmarkError,
    ConfigError,
    DeviceAuthError,
    DeviceUnreachableError,
    ProtocolMismatchError,
)
from protos.agent.v1 import PROTOCOL_VERSION, agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
CHUNK_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
UPGRADE_HINT = ("upgrade the agent on the device to match this host: pip install -U "
                f"'autosculpt[agent]=={HOST_VERSION}' and restart sculpt-agent")
_KINDS = {b"TFL3": agent_pb2.ARTIFACT_KIND_TFLITE}


def _kind(head: bytes) -> int:
    ident = head[4:8]
    if ident[:2] == b"ET":
        return agent_pb2.ARTIFACT_KIND_PTE
    return _KINDS.get(ident, agent_pb2.ARTIFACT_KIND_UNSPECIFIED)


class AgentClient:
    """A connection to one agent. ``target`` is ``host:port``; TLS when ``root_cert`` is given
    (``tls_server_name`` checks the certificate against that name instead of the dialled address).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, target: str, *, token: str | None = None, root_cert: bytes | Path | None = None,
                 client_cert: bytes | Path | None = None, client_key: bytes | Path | None = None,
                 timeout: float = 30.0, tls_server_name: str | None = None) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if tls_server_name:  # the certificate names the board (pi5.local) but we dial its IP address
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if (client_cert is None) != (client_key is None):
            raise ConfigError("client_cert and client_key go together (mutual TLS)")
        if root_cert is not None or client_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_cert), private_key=_pem(client_key), certificate_chain=_pem(client_cert))
            channel = grpc.secure_channel(target, creds, options=options)
        else:
            if token is not None:
                log.warning("sending a bearer token to %s without TLS; use root_cert off loopback", target)
            channel = grpc.insecure_channel(target, options=options)
        self._init(channel, token, timeout, target)

    @classmethod
    def from_channel(cls, channel: grpc.Channel, token: str | None = None, timeout: float = 30.0,
                     target: str = "channel") -> AgentClient:
        """Wrap an existing channel (e.g. through an SSH tunnel). :meth:`close` closes it."""
        self = cls.__new__(cls)
        self._init(channel, token, timeout, target)
        return self

    def _init(self, channel: grpc.Channel, token: str | None, timeout: float, target: str) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = channel
        self._stub = agent_pb2_grpc.AgentStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    # -- calls ---------------------------------------------------------------------------------------------
    def get_info(self) -> DeviceInfo:
        """The device fingerprint; raises ProtocolMismatchError when the agent speaks another protocol."""
        reply = self._call("GetInfo", self._stub.GetInfo, agent_pb2.GetInfoRequest(), self.timeout)
        if reply.protocol_version != PROTOCOL_VERSION:
            raise ProtocolMismatchError(
                f"agent at {self.target} speaks protocol v{reply.protocol_version} (agent "
                f"{reply.agent_version}); this host speaks v{PROTOCOL_VERSION}", hint=UPGRADE_HINT)
        return DeviceInfo.from_proto(reply)

    def health(self) -> bool:
        """True when the agent's health service answers SERVING."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=min(self.timeout, 5.0))
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def has_artifact(self, sha256: str) -> bool:
        """Whether the agent already stores the artifact with this SHA-256."""
        reply = self._call("HasArtifact", self._stub.HasArtifact, agent_pb2.HasArtifactRequest(sha256=sha256),
                           self.timeout)
        return reply.present

    def upload(self, artifact: Path | str | bytes) -> UploadResult:
        """Upload an artifact unless the agent has it already (then 0 bytes are sent)."""
        data = artifact if isinstance(artifact, bytes) else _read(Path(artifact))
        name = "" if isinstance(artifact, bytes) else Path(artifact).name
        sha = hashlib.sha256(data).hexdigest()
        if self.has_artifact(sha):
            return UploadResult(sha, 0, True)
        sent = [0]

        def chunks() -> Iterator[agent_pb2.ArtifactChunk]:
            yield agent_pb2.ArtifactChunk(header=agent_pb2.ArtifactHeader(
                sha256=sha, size_bytes=len(data), kind=_kind(data[:8]), name=name))
            for offset in range(0, len(data), CHUNK_BYTES):
                piece = data[offset: offset + CHUNK_BYTES]
                sent[0] += len(piece)
                yield agent_pb2.ArtifactChunk(data=piece)

        # Deadline scales with size: at least 1 MiB/s on a slow Wi-Fi link.
        deadline = self.timeout + len(data) / CHUNK_BYTES
        reply = self._call("UploadArtifact", self._stub.UploadArtifact, chunks(), deadline)
        return UploadResult(reply.sha256, sent[0], reply.already_present)

    def benchmark(self, sha256: str, spec: BenchSpec | None = None) -> Measurement:
        """Benchmark a stored artifact. The RPC deadline is ``spec.rpc_deadline_s(client timeout)``: the worker
        timeout plus cool-down and idle-power time plus the client timeout (queueing counts against it)."""
        spec = spec or BenchSpec()
        request = spec.to_proto(sha256)
        reply = self._call("Benchmark", self._stub.Benchmark, request, spec.rpc_deadline_s(self.timeout))
        return Measurement.from_proto(reply)

    def ensure_and_benchmark(self, artifact: Path | str | bytes, spec: BenchSpec | None = None) -> Measurement:
        """Upload if needed, then benchmark; re-uploads once if the agent evicted it in between."""
        data = artifact if isinstance(artifact, bytes) else _read(Path(artifact))
        sha = self.upload(data).sha256
        try:
            return self.benchmark(sha, spec)
        except BenchmarkError as exc:
            if exc.code != "FAILED_PRECONDITION" or "upload it first" not in exc.message:
                raise
            log.info("artifact %s was evicted before its benchmark; uploading it again", sha[:12])
            self.upload(data)
            return self.benchmark(sha, spec)

    # -- plumbing ------------------------------------------------------------------------------------------
    def _call(self, name: str, method, request, deadline: float):
        try:
            return method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._translate(name, exc) from None

    def _translate(self, name: str, exc: grpc.RpcError) -> Exception:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        detail = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
        where = f"agent at {self.target}"
        if code == grpc.StatusCode.UNAVAILABLE:
            return DeviceUnreachableError(f"cannot reach the {where}: {detail}",
                                          hint="start it with `sculpt-agent serve` on the device, check the "
                                               "address/port, the SSH tunnel and (for TLS) the certificate")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return DeviceAuthError(f"the {where} refused us: {detail}",
                                   hint="pass the agent's bearer token (the content of its --token-file) and, "
                                        "for mTLS, a client certificate signed by its client CA")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return ProtocolMismatchError(f"the {where} does not implement {name}: {detail}", hint=UPGRADE_HINT)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and name != "Benchmark":
            return DeviceUnreachableError(f"the {where} did not answer {name} in time: {detail}",
                                          hint="check the link to the device; raise the client timeout")
        hint = {
            "DEADLINE_EXCEEDED": "raise BenchSpec.timeout_s (agent side) or the client timeout",
            "RESOURCE_EXHAUSTED": "the agent is busy or the artifact is too big: retry later or raise its limits",
            "FAILED_PRECONDITION": "install the missing runtime on the device, or upload the artifact first",
            "INVALID_ARGUMENT": "check the artifact (re-export it) and the input shapes",
        }.get(code.name)
        return BenchmarkError(f"{name} on the {where} failed ({code.name}): {detail}", hint=hint, code=code.name)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pem(value: bytes | Path | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return _read(Path(value))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
