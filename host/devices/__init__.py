"""Transport to device agents: addresses, connections (local, direct gRPC[S], SSH tunnel), the typed client,
benchmark policies and results, agent install. The fleet feature (fleet files, fleet runs and their reports)
is :mod:`host.fleet`, built on this package.

Public face (loaded on first use, so that ``host.devices.policy``, which the search config holds, loads
neither gRPC nor protobuf):

- :func:`parse_device` / :class:`DeviceAddress` — the one address syntax (``local``, ``user@host``, ...).
- ``host.devices.connect.connect(address, ConnectOptions)`` -> :class:`DeviceHandle` — an open connection
  (a context manager). The function is not re-exported here: once the submodule ``host.devices.connect`` is
  imported, the package attribute of that name is the module.
- :class:`DevicePool` — several connected devices handing out idle ones (identical boards).
- :class:`BenchPolicy`, :class:`BenchSpec`, :class:`InputSpec` — what to run and how;
  :class:`Measurement`, :class:`DeviceInfo` — what comes back.
- :func:`install_agent` / :class:`InstallOptions` — put the agent on a board over SSH.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DeviceAddress": "address", "parse_device": "address",
    "ConnectOptions": "connect", "DeviceHandle": "connect",
    "DevicePool": "pool",
    "BenchPolicy": "policy",
    "BenchSpec": "results", "DeviceInfo": "results", "InputSpec": "results", "Measurement": "results",
    "InstallOptions": "install", "install_agent": "install",
}

__all__ = [
    "BenchPolicy", "BenchSpec", "ConnectOptions", "DeviceAddress", "DeviceHandle", "DeviceInfo", "DevicePool",
    "InputSpec", "InstallOptions", "Measurement", "install_agent", "parse_device",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'host.devices' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"host.devices.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from host.devices.address import DeviceAddress, parse_device
    from host.devices.connect import ConnectOptions, DeviceHandle
    from host.devices.install import InstallOptions, install_agent
    from host.devices.policy import BenchPolicy
    from host.devices.pool import DevicePool
    from host.devices.results import BenchSpec, DeviceInfo, InputSpec, Measurement
