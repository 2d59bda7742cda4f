"""The devices a search measures on: open them all up front (fail fast), measure artifacts, close them.

This is the one place the search touches the device layer, so the rest of the search sees only
:class:`DeviceHandle` and JSON-able measurement summaries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.errors import DeviceError, DeviceUnreachableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSettings:
    """The benchmark policy used for search candidates (short) or final models (longer)."""

    warmup_runs: int = 5
    min_runs: int = 20
    min_time_s: float = 0.2
    threads: int = 1
    measure_energy: bool = False


@dataclass
class DeviceHandle:
    """An open device: its name (as the user typed it), fingerprint, energy meters and client."""

    name: str
    fingerprint: str
    client: Any  # host.devices.connect.DeviceHandle
    energy_meters: tuple[str, ...] = ()

    @property
    def has_energy(self) -> bool:
        return bool(self.energy_meters)


@contextlib.contextmanager
def open_devices(addresses: Sequence[str]) -> Iterator[list[DeviceHandle]]:
    """Connect to every device and read its info before any long work; close them all on exit."""
    with contextlib.ExitStack() as stack:
        handles = []
        for text in addresses:
            client = stack.enter_context(_connect(text))
            try:
                info = client.get_info()
            except DeviceError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure here means the device is not usable
                raise DeviceUnreachableError(
                    f"device {text!r} did not answer GetInfo: {exc}", hint="check that its agent is running"
                ) from exc
            meters = tuple(getattr(info, "energy_meters", ()) or ())
            handles.append(DeviceHandle(text, str(info.fingerprint), client, meters))
            logger.info("device %s: fingerprint %s, meters %s", text, info.fingerprint, meters or "none")
        yield handles


@contextlib.contextmanager
def _connect(text: str) -> Iterator[Any]:
    """A connected device handle for ``text`` (``local`` starts a private agent on loopback)."""
    from host.devices.address import parse_device
    from host.devices.connect import connect

    with connect(parse_device(text)) as handle:
        yield handle


def measure(handle: DeviceHandle, artifact_path: Path, settings: BenchSettings) -> dict[str, Any]:
    """Benchmark an artifact (uploaded only if the device lacks it); return a JSON-able summary."""
    from host.devices.results import BenchPolicy, BenchSpec

    policy = BenchPolicy(
        warmup_runs=settings.warmup_runs,
        warmup_seconds=min(0.2, settings.min_time_s),
        min_runs=settings.min_runs,
        min_seconds=settings.min_time_s,
        max_runs=max(settings.min_runs * 20, 200),
        max_seconds=max(10.0, settings.min_time_s * 4),
    )
    spec = BenchSpec(
        threads=settings.threads, policy=policy, measure_energy=settings.measure_energy and handle.has_energy
    )
    return summarize(handle.client.benchmark_file(Path(artifact_path), spec))


def summarize(result: Any) -> dict[str, Any]:
    """The fields of a Measurement the search keeps (p50 decides; the rest is for the report)."""
    stats = result.stats
    summary: dict[str, Any] = {
        "p50_ms": float(stats.p50_ms),
        "p90_ms": float(stats.p90_ms),
        "mean_ms": float(stats.mean_ms),
        "cv": float(stats.cv),
        "count": int(stats.count),
        "energy_mj": None,
        "meter": None,
    }
    energy = getattr(result, "energy", None)
    if energy is not None and getattr(energy, "available", False):
        joules = energy.joules_per_inference_idle_subtracted or energy.joules_per_inference
        summary["energy_mj"] = float(joules) * 1000.0
        summary["meter"] = str(energy.meter)
    return summary
