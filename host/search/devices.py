"""The devices a search measures on: open them all up front (fail fast), measure artifacts, close them.

This is the one place the search touches the device layer, so the rest of the search sees only
:class:`SearchDevice` and :class:`host.search.measurement.MeasurementSummary`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import statistics
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from host.devices.address import parse_device
from host.devices.connect import ConnectOptions, DeviceHandle, connect
from host.errors import BenchmarkError, ConfigError, DeviceError, DeviceUnreachableError
from host.fleet.file import Fleet, load_fleet
from host.search.measurement import MeasurementSummary

if TYPE_CHECKING:
    from host.devices.pool import DevicePool
    from host.devices.results import BenchSpec, Measurement

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSpec:
    """A ``--device-pool NAME=ADDR,ADDR,...``: identical boards that count as one device. An entry
    ``tag:T`` (or ``tag:T1+T2``) stands for every device of the ``--fleet`` file carrying those tags."""

    name: str
    addresses: tuple[str, ...]

    def boards(self, fleet: Fleet | None) -> list[str]:
        """The boards' addresses or fleet names, ``tag:`` entries expanded (in fleet file order)."""
        out: list[str] = []
        for entry in self.addresses:
            if not entry.startswith("tag:"):
                out.append(entry)
                continue
            if fleet is None:
                raise ConfigError(f"--device-pool {self.name}: {entry!r} selects fleet devices by tag, but no "
                                  "fleet file was given", hint="add --fleet FILE (its [[device]] entries carry tags)")
            tags = [t for t in entry[len("tag:"):].split("+") if t]
            out.extend(d.name for d in fleet.select(tags=tags))
        if len(set(out)) != len(out):
            raise ConfigError(f"--device-pool {self.name}: a board is listed twice ({', '.join(out)})",
                              hint="list every board once")
        return out

    @classmethod
    def parse(cls, text: str) -> PoolSpec:
        name, sep, rest = text.partition("=")
        addresses = tuple(a.strip() for a in rest.split(",") if a.strip())
        if not sep or not name.strip() or not addresses:
            raise ConfigError(f"--device-pool {text!r} is not NAME=ADDRESS,ADDRESS,...",
                              hint="e.g. --device-pool pis=pi@10.0.0.5,pi@10.0.0.6,pi@10.0.0.7")
        if len(set(addresses)) != len(addresses):
            raise ConfigError(f"--device-pool {name}: a board is listed twice", hint="list every board once")
        return cls(name.strip(), addresses)


class BoardPool:
    """The boards of a pool as one device's connection: a benchmark runs on whichever board is idle, or,
    inside :meth:`pinned`, on the board this thread holds (a candidate and its dense pair on one board). A
    board that fails at transport level (twice) leaves the pool and the benchmark moves to another
    (:class:`host.devices.pool.DevicePool`); the pool fails only when no board is left."""

    def __init__(self, pool: DevicePool) -> None:
        self.pool = pool
        self._held = threading.local()
        self._lock = threading.Lock()
        self.taken: list[tuple[str, str, float]] = []  # (board, artifact file name, p50 ms) of every benchmark

    @property
    def size(self) -> int:
        """Boards still in the pool."""
        return len(self.pool.online())

    @contextlib.contextmanager
    def pinned(self) -> Iterator[DeviceHandle]:
        """Hold one idle board for this thread's benchmarks inside the block (moved to another board when it
        fails at transport level before the block's work is done: the block must be safe to repeat)."""
        with self.pool.acquire() as handle:
            self._held.handle = handle
            try:
                yield handle
            finally:
                self._held.handle = None

    def benchmark_file(self, path: Path, spec: BenchSpec) -> Measurement:
        held = getattr(self._held, "handle", None)
        if held is not None:
            result = held.benchmark_file(path, spec)
            board = held.label
        else:
            board, result = self.pool.run(lambda h: (h.label, h.benchmark_file(path, spec)))
        with self._lock:
            self.taken.append((board, Path(path).name, float(result.stats.p50_ms)))
        return result

    def get_info(self):
        return self.pool.run(lambda h: h.get_info())

    def spread(self, dense_name: str | None) -> dict[str, tuple[int, float | None]]:
        """Per board: benchmarks run, and the median p50 (ms) of the artifact file ``dense_name`` (the dense
        reference of the pairs) measured there: the boards' spread, identical boards agree within their noise."""
        out = {}
        for handle in self.pool.handles:
            mine = [(f, p) for b, f, p in self.taken if b == handle.label]
            dense = [p for f, p in mine if f == dense_name]
            out[handle.label] = (len(mine), statistics.median(dense) if dense else None)
        return out


@dataclass
class SearchDevice:
    """A device the search measures on: its connection (a :class:`host.devices.connect.DeviceHandle`, or a
    :class:`BoardPool` for ``--device-pool``) plus what the search keeps of its GetInfo: the name as the user
    typed it, fingerprint and energy meters."""

    name: str
    fingerprint: str
    client: DeviceHandle | BoardPool  # the open connection
    energy_meters: tuple[str, ...] = ()
    energy_unavailable_reason: str = ""  # the agent's words for why it has no meter (empty when it has one)

    @property
    def has_energy(self) -> bool:
        return bool(self.energy_meters)

    @property
    def boards(self) -> int:
        """How many benchmarks can run at once (the boards of a pool; 1 for a device)."""
        return self.client.size if isinstance(self.client, BoardPool) else 1

    def one_board(self) -> contextlib.AbstractContextManager:
        """A block whose benchmarks all run on one board (a pool's board held by this thread)."""
        return self.client.pinned() if isinstance(self.client, BoardPool) else contextlib.nullcontext()


@contextlib.contextmanager
def open_devices(addresses: Sequence[str], fleet: str | Path | None = None,
                 pools: Sequence[PoolSpec] = ()) -> Iterator[list[SearchDevice]]:
    """Connect to every device and read its info before any long work; close them all on exit.

    ``fleet`` (a fleet file) lets ``addresses`` name its devices; their token, CA certificate and agent
    command come from the file. Each of ``pools`` becomes one device whose benchmarks run on any of its
    boards; its fingerprint (the measurement cache's key) is the pool's, made of its boards' fingerprints."""
    loaded = load_fleet(fleet) if fleet is not None else None
    with contextlib.ExitStack() as stack:
        pooled = [stack.enter_context(_open_pool(spec, loaded)) for spec in pools]
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
        yield handles + pooled


@contextlib.contextmanager
def _open_pool(spec: PoolSpec, fleet: Fleet | None) -> Iterator[SearchDevice]:
    """Every board of a pool connected and asked for its info (all must answer at the start)."""
    from host.devices.pool import DevicePool

    texts = spec.boards(fleet)
    addresses = [parse_device(text, fleet) for text in texts]  # a bad entry fails before any connection
    handles: list[DeviceHandle] = []
    try:
        for text, address in zip(texts, addresses, strict=True):
            handles.append(connect(address, _options(text, fleet)))
        pool = DevicePool(handles)
        infos = [handle.get_info() for handle in handles]
    except BaseException:
        for handle in handles:
            handle.close()
        raise
    prints = sorted({str(i.fingerprint) for i in infos})
    if len(prints) > 1:
        logger.warning("the boards of pool %s are not identical (fingerprints %s): a measurement on any of them "
                       "counts for the pool", spec.name, ", ".join(prints))
    fingerprint = "pool-" + hashlib.sha256("|".join(prints).encode()).hexdigest()[:16]
    meters = set(infos[0].energy_meters)
    for info in infos[1:]:
        meters &= set(info.energy_meters)
    reason = "" if meters else next((i.energy_unavailable_reason for i in infos if i.energy_unavailable_reason),
                                    "not every board of the pool has a meter")
    logger.info("device pool %s: %d boards, fingerprint %s", spec.name, len(pool.handles), fingerprint)
    try:
        yield SearchDevice(spec.name, fingerprint, BoardPool(pool), tuple(sorted(meters)), reason)
    finally:
        pool.close()


def _options(text: str, fleet: Fleet | None) -> ConnectOptions:
    """How to connect to ``text``: a fleet name with the credentials its fleet file gives, else the defaults."""
    options = ConnectOptions()
    device = fleet.find(text) if fleet is not None else None
    if device is not None:
        options = replace(options, token_file=device.token_file, ca_cert=device.ca_cert,
                          agent=replace(options.agent, command=device.agent_command))
    return options


@contextlib.contextmanager
def _connect(text: str, fleet: Fleet | None = None) -> Iterator[DeviceHandle]:
    """A connected device handle for ``text`` (``local`` starts a private agent on loopback; a fleet name
    connects with the credentials its fleet file gives)."""
    with connect(parse_device(text, fleet), _options(text, fleet)) as handle:
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
