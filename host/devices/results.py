"""Typed results of the device agent, converted from its protocol messages, and the benchmark request spec.

Everything here is a frozen dataclass; no protobuf object leaves ``host.devices``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from device_agent.bench import Stats
from host.devices.policy import BenchPolicy
from protos.agent.v1 import agent_pb2 as pb

_DTYPES = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_FLOAT16: np.float16, pb.DTYPE_INT8: np.int8,
           pb.DTYPE_UINT8: np.uint8, pb.DTYPE_INT32: np.int32, pb.DTYPE_INT64: np.int64, pb.DTYPE_BOOL: np.bool_}
_TO_PROTO = {np.dtype(v).name: k for k, v in _DTYPES.items()}
_KIND = {pb.ARTIFACT_KIND_PTE: "pte", pb.ARTIFACT_KIND_TFLITE: "tflite", pb.ARTIFACT_KIND_UNSPECIFIED: ""}


def tensor_from_proto(t: pb.Tensor) -> np.ndarray:
    """A numpy array (a copy) from a protocol tensor."""
    dtype = np.dtype(_DTYPES.get(t.dtype, np.uint8))
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape)).copy()


def tensor_to_proto(arr: np.ndarray) -> pb.Tensor:
    """A protocol tensor holding ``arr``'s data (C order, little-endian)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.name not in _TO_PROTO:
        raise ValueError(f"dtype {arr.dtype} cannot be sent to the agent; use one of {sorted(_TO_PROTO)}")
    return pb.Tensor(shape=list(arr.shape), dtype=_TO_PROTO[arr.dtype.name],
                     data=arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


@dataclass(frozen=True)
class InputSpec:
    """An input given by shape and dtype only; the agent fills it with seeded uniform random values."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_proto(self) -> pb.Tensor:
        """A data-less protocol tensor: the agent fills it with seeded random values."""
        if np.dtype(self.dtype).name not in _TO_PROTO:
            raise ValueError(f"dtype {self.dtype} is not supported; use one of {sorted(_TO_PROTO)}")
        return pb.Tensor(shape=list(self.shape), dtype=_TO_PROTO[np.dtype(self.dtype).name])


@dataclass(frozen=True)
class BenchSpec:
    """What to benchmark and how. ``inputs``: arrays (used as given) or :class:`InputSpec` (random fill);
    empty means the model's declared inputs. ``timeout_s`` is the agent-side worker deadline."""

    inputs: tuple[np.ndarray | InputSpec, ...] = ()
    input_seed: int = 0
    threads: int = 0  # 0 = runtime default
    policy: BenchPolicy = field(default_factory=BenchPolicy)  # the agent's default; see host.devices.policy
    return_outputs: bool = False
    job_id: str | None = None  # idempotency key; a fresh one is chosen per call when None
    timeout_s: float = 120.0
    measure_energy: bool = False
    runtime: str = ""  # "" = by artifact kind; "executorch" | "litert"

    def rpc_deadline_s(self, client_timeout: float) -> float:
        """Deadline of the Benchmark call: worker timeout + cool-down wait + idle-power window + slack."""
        return self.timeout_s + self.policy.gate_wait_s() + (5.0 if self.measure_energy else 0.0) + client_timeout

    def to_proto(self, sha256: str) -> pb.BenchmarkRequest:
        """The request message for artifact ``sha256``."""
        tensors = [i.to_proto() if isinstance(i, InputSpec) else tensor_to_proto(np.asarray(i)) for i in self.inputs]
        return pb.BenchmarkRequest(
            artifact_sha256=sha256, runtime=self.runtime, inputs=tensors, input_seed=self.input_seed,
            threads=self.threads, policy=self.policy.to_proto(), return_outputs=self.return_outputs,
            job_id=self.job_id or uuid.uuid4().hex, timeout_seconds=self.timeout_s,
            measure_energy=self.measure_energy,
        )


@dataclass(frozen=True)
class RuntimeInfo:
    """One runtime on the device."""

    name: str
    version: str
    available: bool
    artifact_kind: str  # "pte" | "tflite"
    unavailable_reason: str = ""


@dataclass(frozen=True)
class DeviceInfo:
    """The device fingerprint and live state reported by ``GetInfo``."""

    agent_version: str
    protocol_version: int
    fingerprint: str
    hostname: str
    machine: str
    os: str
    board: str
    cpu_model: str
    cpu_count: int
    governor: str
    cpu_freq_mhz: tuple[float, ...]
    cpu_freq_min_mhz: float
    cpu_freq_max_mhz: float
    memory_total_bytes: int
    memory_available_bytes: int
    temperatures: dict[str, float]
    runtimes: tuple[RuntimeInfo, ...]
    energy_meters: tuple[str, ...]
    energy_unavailable_reason: str
    max_artifact_bytes: int
    store_bytes_used: int
    store_capacity_bytes: int
    queue_depth: int
    queue_capacity: int

    def runtime(self, name: str) -> RuntimeInfo | None:
        """The runtime called ``name``, or None."""
        return next((r for r in self.runtimes if r.name == name), None)

    @classmethod
    def from_proto(cls, m: pb.DeviceInfo) -> DeviceInfo:
        """Convert the agent's ``DeviceInfo`` message."""
        return cls(
            agent_version=m.agent_version, protocol_version=m.protocol_version, fingerprint=m.fingerprint,
            hostname=m.hostname, machine=m.machine, os=m.os, board=m.board, cpu_model=m.cpu_model,
            cpu_count=m.cpu_count, governor=m.governor, cpu_freq_mhz=tuple(m.cpu_freq_mhz),
            cpu_freq_min_mhz=m.cpu_freq_min_mhz, cpu_freq_max_mhz=m.cpu_freq_max_mhz,
            memory_total_bytes=m.memory_total_bytes, memory_available_bytes=m.memory_available_bytes,
            temperatures={t.zone: t.celsius for t in m.temperatures},
            runtimes=tuple(RuntimeInfo(r.name, r.version, r.available, _KIND[r.artifact_kind], r.unavailable_reason)
                           for r in m.runtimes),
            energy_meters=tuple(m.energy_meters), energy_unavailable_reason=m.energy_unavailable_reason,
            max_artifact_bytes=m.max_artifact_bytes, store_bytes_used=m.store_bytes_used,
            store_capacity_bytes=m.store_capacity_bytes, queue_depth=m.queue_depth, queue_capacity=m.queue_capacity,
        )


@dataclass(frozen=True)
class LatencyStats(Stats):
    """Summary of the timed runs, in milliseconds: the agent's :class:`device_agent.bench.Stats`, read back
    from the protocol."""

    @classmethod
    def from_proto(cls, m: pb.LatencyStats) -> LatencyStats:
        """Convert the agent's ``LatencyStats`` message."""
        return cls(m.count, m.mean_ms, m.std_ms, m.cv, m.min_ms, m.p50_ms, m.p90_ms, m.p99_ms, m.max_ms)


@dataclass(frozen=True)
class Energy:
    """Energy of one benchmark; when ``available`` is False the numbers are None, never zero."""

    available: bool
    meter: str = ""
    method: str = ""
    unavailable_reason: str = ""
    sample_count: int = 0
    mean_power_w: float | None = None
    idle_power_w: float | None = None
    joules_per_inference: float | None = None
    joules_per_inference_idle_subtracted: float | None = None

    @classmethod
    def from_proto(cls, m: pb.Energy) -> Energy:
        """Convert the agent's ``Energy`` message."""
        if not m.available:
            return cls(False, meter=m.meter, unavailable_reason=m.unavailable_reason or "not reported")
        return cls(True, m.meter, m.method, "", m.sample_count, m.mean_power_w, m.idle_power_w,
                   m.joules_per_inference, m.joules_per_inference_idle_subtracted)


@dataclass(frozen=True)
class Measurement:
    """Everything one benchmark measured on the device."""

    job_id: str
    artifact_sha256: str
    runtime: str
    runtime_version: str
    threads: int
    latencies_ms: tuple[float, ...]
    stats: LatencyStats
    load_ms: float
    first_run_ms: float
    load_cached: bool
    warmup_runs: int
    timed_window_s: float
    peak_rss_bytes: int
    outputs: tuple[np.ndarray, ...]
    output_sha256: tuple[str, ...]
    temperatures_before: dict[str, float]
    temperatures_after: dict[str, float]
    throttled: bool
    throttle_reason: str
    energy: Energy
    fingerprint: str
    queued_s: float
    load_average_1m: float = 0.0  # the device's load when the window ended: high values mean noisy numbers
    warmup_s: float = 0.0  # wall time of the warm-up runs on the device

    @property
    def p50_ms(self) -> float:
        """Median latency."""
        return self.stats.p50_ms

    @property
    def mean_ms(self) -> float:
        """Mean latency."""
        return self.stats.mean_ms

    @property
    def joules_per_inference(self) -> float | None:
        """Energy per inference, or None when the device has no meter."""
        return self.energy.joules_per_inference

    @classmethod
    def from_proto(cls, m: pb.BenchmarkResult) -> Measurement:
        """Convert the agent's ``BenchmarkResult`` message."""
        return cls(
            job_id=m.job_id, artifact_sha256=m.artifact_sha256, runtime=m.runtime,
            runtime_version=m.runtime_version, threads=m.threads, latencies_ms=tuple(m.latencies_ms),
            stats=LatencyStats.from_proto(m.stats), load_ms=m.load_ms, first_run_ms=m.first_run_ms,
            load_cached=m.load_cached, warmup_runs=m.warmup_runs, timed_window_s=m.timed_window_s,
            peak_rss_bytes=m.peak_rss_bytes, outputs=tuple(tensor_from_proto(t) for t in m.outputs),
            output_sha256=tuple(m.output_sha256),
            temperatures_before={t.zone: t.celsius for t in m.temperatures_before},
            temperatures_after={t.zone: t.celsius for t in m.temperatures_after},
            throttled=m.throttled, throttle_reason=m.throttle_reason, energy=Energy.from_proto(m.energy),
            fingerprint=m.fingerprint, queued_s=m.queued_s, load_average_1m=m.load_average_1m,
            warmup_s=m.warmup_s,
        )

    def to_dict(self, with_samples: bool = True) -> dict:
        """Plain JSON-friendly data (outputs as shapes only)."""
        return {
            "job_id": self.job_id, "artifact_sha256": self.artifact_sha256, "runtime": self.runtime,
            "runtime_version": self.runtime_version, "threads": self.threads,
            "latencies_ms": list(self.latencies_ms) if with_samples else None,
            "stats": self.stats.__dict__, "load_ms": self.load_ms, "first_run_ms": self.first_run_ms,
            "load_cached": self.load_cached, "warmup_runs": self.warmup_runs,
            "timed_window_s": self.timed_window_s, "peak_rss_bytes": self.peak_rss_bytes,
            "output_shapes": [list(o.shape) for o in self.outputs], "output_sha256": list(self.output_sha256),
            "temperatures_before": self.temperatures_before, "temperatures_after": self.temperatures_after,
            "throttled": self.throttled, "throttle_reason": self.throttle_reason,
            "energy": dict(self.energy.__dict__),
            "fingerprint": self.fingerprint, "queued_s": self.queued_s, "load_average_1m": self.load_average_1m,
            "warmup_s": self.warmup_s,
        }


@dataclass(frozen=True)
class UploadResult:
    """Outcome of an upload: ``bytes_sent`` is 0 when the agent already had the artifact."""

    sha256: str
    bytes_sent: int
    already_present: bool
