"""Device addresses: the one syntax used wherever a device is named.

``local``                  a private agent on this machine (loopback)
``user@host[:sshport]``    a board reached over SSH; the agent runs on its loopback, we tunnel to it
``ssh://[user@]host[:port]`` the same, also for bare ``~/.ssh/config`` aliases without a user
``grpc://host:port``       an agent reached directly (loopback or a trusted network only)
``grpcs://host:port``      an agent reached directly with TLS and a bearer token
``NAME``                   a device of the fleet file
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from host.errors import ConfigError

KINDS = ("local", "ssh", "grpc", "grpcs")
DEFAULT_AGENT_PORT = 50051

EXAMPLES = (
    "local",
    "pi@10.0.0.5",
    "pi@raspberrypi.local:2222",
    "ssh://jetson-nano",
    "grpc://127.0.0.1:50051",
    "grpcs://10.0.0.7:50051",
    "a device name from the fleet file (--fleet)",
)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DeviceAddress:
    """Where a device agent lives and how to reach it. ``name`` is what progress and reports show."""

    kind: str
    host: str = ""
    port: int | None = None
    user: str | None = None
    name: str = ""

    def __str__(self) -> str:
        if self.kind == "local":
            return "local"
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.kind == "ssh":
            user = f"{self.user}@" if self.user else ""
            port = f":{self.port}" if self.port else ""
            return f"{user}{host}{port}" if self.user else f"ssh://{host}{port}"
        return f"{self.kind}://{host}:{self.port}"

    @property
    def label(self) -> str:
        """Name shown to users: the fleet name when there is one, else the address."""
        return self.name or str(self)

    @property
    def target(self) -> str:
        """gRPC target ``host:port`` of a direct (grpc/grpcs) address."""
        if self.kind not in ("grpc", "grpcs"):
            raise ValueError(f"{self.kind} address has no direct gRPC target")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(
        f"bad device address {text!r}: {why}",
        hint="use one of: " + ", ".join(EXAMPLES),
    )


def _split_host_port(text: str, hostport: str) -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _bad(text, "unclosed '[' around an IPv6 address")
        host, rest = hostport[1:end], hostport[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text, f"{host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise _bad(text, f"unexpected {rest!r} after ']'")
        port_text = rest[1:] if rest else None
    elif hostport.count(":") > 1:
        raise _bad(text, "write IPv6 addresses in brackets, e.g. grpc://[::1]:50051")
    else:
        host, _, port_text = hostport.partition(":")
        port_text = port_text if ":" in hostport else None
        if not host:
            raise _bad(text, "the host is empty")
        if not _valid_host(host):
            raise _bad(text, f"{host!r} is not a valid host name or IP address")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _bad(text, f"port {port_text!r} must be a number from 1 to 65535")
        port = int(port_text)
    return host, port


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()


class NamedDevice(Protocol):
    address: DeviceAddress


class DeviceNames(Protocol):
    """Where device names resolve (a fleet file, :class:`host.fleet.Fleet`): the transport layer needs only
    this, so it does not depend on the fleet feature."""

    path: Path

    def find(self, name: str) -> NamedDevice | None: ...

    def names(self) -> list[str]: ...


def parse_device(text: str, fleet: DeviceNames | None = None) -> DeviceAddress:
    """Parse a device address (see the module docstring); names are looked up in ``fleet`` first.

    Raises ConfigError, with examples of valid addresses, for anything else.
    """
    raw = text
    text = text.strip()
    if not text:
        raise _bad(raw, "it is empty")
    if fleet is not None:
        device = fleet.find(text)
        if device is not None:
            return device.address
    if text == "local":
        return DeviceAddress(kind="local")
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in ("ssh", "grpc", "grpcs"):
            raise _bad(raw, f"unknown scheme {scheme!r}")
        if not rest or "/" in rest:
            raise _bad(raw, "expected HOST:PORT after the scheme, without a path")
        if scheme == "ssh":
            return _parse_ssh(raw, rest)
        if "@" in rest:
            raise _bad(raw, f"{scheme}:// addresses take no user; SSH addresses are user@host")
        host, port = _split_host_port(raw, rest)
        return DeviceAddress(kind=scheme, host=host, port=port or DEFAULT_AGENT_PORT)
    if "@" in text:
        return _parse_ssh(raw, text)
    if fleet is not None:
        names = ", ".join(fleet.names()) or "none"
        raise _bad(raw, f"not a device of the fleet file {fleet.path} (its devices: {names}) nor an address")
    raise _bad(raw, "not an address (SSH addresses need a user: user@host, or ssh://host for an ssh config alias)")


def _parse_ssh(raw: str, text: str) -> DeviceAddress:
    user, sep, hostport = text.rpartition("@")
    if sep and not user:
        raise _bad(raw, "the user before '@' is empty")
    if user and not _USER.match(user):
        raise _bad(raw, f"{user!r} is not a valid user name")
    host, port = _split_host_port(raw, hostport)
    return DeviceAddress(kind="ssh", host=host, port=port, user=user or None)
