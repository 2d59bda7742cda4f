"""The devices a search measures on: open them all up front (fail fast), measure artifacts, close them.

This is the one place the search touches the device layer, so the rest of the search sees only
:class:`SearchDevice` and :class:`host.search.measurement.MeasurementSummary`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from host.devices.address import parse_device
from host.devices.connect import ConnectOptions, DeviceHandle, connect
from host.errors import BenchmarkError, DeviceError, DeviceUnreachableError
from host.fleet.file import Fleet, load_fleet
from host.search.measurement import MeasurementSummary

if TYPE_CHECKING:
    from host.devices.results import BenchSpec, Measurement

logger = logging.getLogger(__name__)


@dataclass
class SearchDevice:
    """A device the search measures on: its connection (a :class:`host.devices.connect.DeviceHandle`) plus
    what the search keeps of its GetInfo: the name as the user typed it, fingerprint and energy meters."""

    name: str
    fingerprint: str
    client: DeviceHandle  # the open connection
    energy_meters: tuple[str, ...] = ()
    energy_unavailable_reason: str = ""  # the agent's words for why it has no meter (empty when it has one)

    @property
    def has_energy(self) -> bool:
        return bool(self.energy_meters)


@contextlib.contextmanager
def open_devices(addresses: Sequence[str], fleet: str | Path | None = None) -> Iterator[list[SearchDevice]]:
    """Connect to every device and read its info before any long work; close them all on exit.

    ``fleet`` (a fleet file) lets ``addresses`` name its devices; their token, CA certificate and agent
    command come from the file."""
    loaded = load_fleet(fleet) if fleet is not None else None
    with contextlib.ExitStack() as stack:
        handles = []
        for text in addresses:
            client = stack.enter_context(_connect(text, loaded))
            try:
                info = client.get_info()
            except DeviceError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure here means the device is not usable
                raise DeviceUnreachableError(
                    f"device {text!r} did not answer GetInfo: {exc}", hint="check that its agent is running"
                ) from exc
            meters = tuple(info.energy_meters)
            reason = "" if meters else info.energy_unavailable_reason
            handles.append(SearchDevice(text, str(info.fingerprint), client, meters, reason))
            logger.info("device %s: fingerprint %s, meters %s", text, info.fingerprint, meters or "none")
        yield handles


@contextlib.contextmanager
def _connect(text: str, fleet: Fleet | None = None) -> Iterator[DeviceHandle]:
    """A connected device handle for ``text`` (``local`` starts a private agent on loopback; a fleet name
    connects with the credentials its fleet file gives)."""
    options = ConnectOptions()
    device = fleet.find(text) if fleet is not None else None
    if device is not None:
        options = replace(options, token_file=device.token_file, ca_cert=device.ca_cert,
                          agent=replace(options.agent, command=device.agent_command))
    with connect(parse_device(text, fleet), options) as handle:
        yield handle


# idle-subtracted energy <= 0 means the background load changed between the idle and the timed windows;
# measuring again once usually lands in a quieter moment
ENERGY_ATTEMPTS = 2


def measure(handle: SearchDevice, artifact_path: Path, spec: BenchSpec) -> MeasurementSummary:
    """Benchmark an artifact (uploaded only if the device lacks it); return what the search keeps of it.

    With ``spec.measure_energy`` on a metered device, the policy's run cap is lifted
    (:meth:`BenchPolicy.for_energy`) and the summary's ``energy_mj`` is always a positive number: a meter
    that fails, or an idle-subtracted energy that stays <= 0, raises :class:`BenchmarkError` rather than
    letting the search compare a missing or meaningless figure. Without a meter, energy is not asked for.
    """
    energy = spec.measure_energy and handle.has_energy
    spec = replace(spec, measure_energy=energy, policy=spec.policy.for_energy() if energy else spec.policy)
    for attempt in range(1, ENERGY_ATTEMPTS + 1):
        summary = summarize(handle.client.benchmark_file(Path(artifact_path), spec))
        if not energy:
            return summary
        if summary.energy_mj is None:
            raise BenchmarkError(
                f"{handle.name} measured {Path(artifact_path).name} but not its energy: {summary.energy_error}",
                hint="check the device's meter (sculpt-agent info), or use --objective latency",
            )
        if summary.energy_mj > 0:
            return summary
        logger.warning("%s: energy above idle of %s was %.4f mJ (attempt %d of %d): the background load changed "
                       "during the measurement", handle.name, Path(artifact_path).name, summary.energy_mj,
                       attempt, ENERGY_ATTEMPTS)
    raise BenchmarkError(
        f"{handle.name}: the energy of {Path(artifact_path).name} above idle was not positive in "
        f"{ENERGY_ATTEMPTS} measurements ({summary.energy_mj:.4f} mJ): the device's background power "
        "varies more than the model adds",
        hint="stop other work on the device, or lengthen the timed window (EvalConfig.bench.min_seconds)",
    )


def summarize(result: Measurement) -> MeasurementSummary:
    """The fields of an agent's Measurement the search keeps (p50 decides; the rest is for the report).

    ``energy_mj`` is the idle-subtracted energy per inference (what the model adds to the board's idle
    draw), never the total: mixing the two across candidates would compare different quantities. The total
    and the idle power are kept for the report; ``energy_error`` says why there is no energy figure.
    """
    stats = result.stats
    if not (stats.count > 0 and math.isfinite(stats.p50_ms)):
        raise BenchmarkError(f"the device returned no usable latency ({stats.count} timed runs, p50 {stats.p50_ms})",
                             hint="check the agent's log (sculpt-agent serve) and its benchmark policy")
    figures: dict[str, float | str] = {}
    energy = result.energy
    if energy.available:
        figures = dict(energy_mj=float(energy.joules_per_inference_idle_subtracted) * 1000.0,
                       energy_total_mj=float(energy.joules_per_inference) * 1000.0,
                       idle_power_w=float(energy.idle_power_w), meter=energy.meter)
    else:
        figures = dict(energy_error=energy.unavailable_reason or "no reason given")
    return MeasurementSummary(p50_ms=float(stats.p50_ms), p90_ms=float(stats.p90_ms), mean_ms=float(stats.mean_ms),
                              cv=float(stats.cv), count=int(stats.count), **figures)
