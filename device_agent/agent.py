"""The agent's core, independent of gRPC transport: store, queue, workers, meters and device facts.

Works on the protocol messages directly (they are the agent's own wire types); ``service.py`` only adapts
errors to status codes, and ``sculpt-agent bench`` uses this class without any network.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np

from device_agent import __version__, sysinfo
from device_agent.artifact import PTE, TFLITE
from device_agent.bench import Policy
from device_agent.config import AgentConfig
from device_agent.energy import detect_meter
from device_agent.energy.sampler import Sampler, Window, measure_idle
from device_agent.errors import AgentError, invalid, precondition, shorten
from device_agent.queue import BenchQueue
from device_agent.runtimes import RUNTIMES, all_statuses, resolve
from device_agent.store import ArtifactStore
from device_agent.workers import WorkerPool
from protos.agent.v1 import PROTOCOL_VERSION
from protos.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

KIND_TO_PROTO = {PTE: pb.ARTIFACT_KIND_PTE, TFLITE: pb.ARTIFACT_KIND_TFLITE}
PROTO_TO_KIND = {v: k for k, v in KIND_TO_PROTO.items()}
DTYPES = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_FLOAT16: "float16", pb.DTYPE_INT8: "int8",
          pb.DTYPE_UINT8: "uint8", pb.DTYPE_INT32: "int32", pb.DTYPE_INT64: "int64", pb.DTYPE_BOOL: "bool"}
DTYPE_TO_PROTO = {v: k for k, v in DTYPES.items()}
# Client strings are short by nature; a cap keeps a hostile client from making the daemon hold (in kept
# results, logs and errors) megabytes per request.
MAX_JOB_ID_CHARS = 128
MAX_RUNTIME_CHARS = 32
MAX_NAME_CHARS = 256
MAX_INPUTS = 64
MAX_GENERATED_INPUT_BYTES = 1 << 30  # inputs the worker fills with random values (no data sent), in total
RUNTIME_KINDS = {name: spec.kind for name, spec in RUNTIMES.items()}


class Agent:
    """Everything the daemon does, callable in-process."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = ArtifactStore(config.store_dir, config.store_capacity_bytes, config.max_artifact_bytes,
                                   ephemeral=config.ephemeral_store)
        self.queue = BenchQueue(config.queue_capacity, config.results_kept, config.results_kept_bytes,
                                size_of=lambda result: result.ByteSize())
        # Set by close(): every wait (queue, cool-down, worker) ends promptly so the daemon can exit.
        self.stopping = threading.Event()
        self.workers = WorkerPool(config.worker_start_timeout_s, config.programs_cached, config.worker_cpus)
        self.meter, self.meter_reason = detect_meter(config.energy)
        self.platform = sysinfo.platform_info(config.sysfs_root)
        # Raspberry Pi firmware throttle flags, read with the same vcgencmd the PMIC meter uses.
        self._vcgencmd = shlex.split(config.energy.vcgencmd)
        self._is_pi = sysinfo.pi_throttled_flags(self._vcgencmd) is not None
        runtimes = {s.name: s.version for s in all_statuses() if s.available}
        self.fingerprint = sysinfo.fingerprint(self.platform, runtimes, __version__)
        if self.meter is not None:
            log.info("energy meter: %s (%s)", self.meter.name, self.meter.method)
        else:
            log.info("energy unavailable: %s", self.meter_reason)

    def preload(self) -> None:
        """Start the configured runtime workers in the background so the first benchmark does not wait."""
        import threading

        def start(name: str) -> None:
            try:
                resolve(name, RUNTIME_KINDS[name])
                self.workers.get(name).start()
            except Exception as exc:  # noqa: BLE001 - the first benchmark will report it properly
                log.warning("could not preload the %s worker: %s", name, exc)

        for name in self.config.preload_runtimes:
            threading.Thread(target=start, args=(name,), name=f"preload-{name}", daemon=True).start()

    def close(self) -> None:
        """End every wait, stop the worker processes, and delete an ephemeral store."""
        self.stopping.set()
        self.workers.stop_all()
        if self.config.ephemeral_store:
            self.store.destroy()

    # -- GetInfo -------------------------------------------------------------------------------------------
    def info(self) -> pb.DeviceInfo:
        """The device fingerprint and live state."""
        root = self.config.sysfs_root
        freqs, fmin, fmax = sysinfo.cpu_frequencies(root)
        total, available = sysinfo.memory()
        plat = self.platform
        return pb.DeviceInfo(
            agent_version=__version__, protocol_version=PROTOCOL_VERSION, fingerprint=self.fingerprint,
            hostname=plat.hostname, machine=plat.machine, os=plat.os, board=plat.board, cpu_model=plat.cpu_model,
            cpu_count=plat.cpu_count, governor=sysinfo.governor(root), cpu_freq_mhz=freqs, cpu_freq_min_mhz=fmin,
            cpu_freq_max_mhz=fmax, memory_total_bytes=total, memory_available_bytes=available,
            temperatures=_temps(sysinfo.temperatures(root)),
            runtimes=[pb.RuntimeInfo(name=s.name, version=s.version, available=s.available,
                                     artifact_kind=KIND_TO_PROTO[s.kind], unavailable_reason=s.unavailable_reason)
                      for s in all_statuses()],
            energy_meters=[self.meter.name] if self.meter is not None else [],
            energy_unavailable_reason=self.meter_reason,
            max_artifact_bytes=self.config.max_artifact_bytes, store_bytes_used=self.store.bytes_used,
            store_capacity_bytes=self.config.store_capacity_bytes, queue_depth=self.queue.depth,
            queue_capacity=self.config.queue_capacity,
        )

    # -- artifacts -----------------------------------------------------------------------------------------
    def has_artifact(self, sha256: str) -> pb.HasArtifactResponse:
        """Whether the store holds this artifact."""
        art = self.store.get(sha256)
        return pb.HasArtifactResponse(present=art is not None, size_bytes=art.size_bytes if art else 0)

    def upload(self, chunks: Iterator[pb.ArtifactChunk]) -> pb.UploadArtifactResponse:
        """Store an uploaded artifact: first chunk is the header, the rest is data."""
        first = next(chunks, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise invalid("an upload must start with an ArtifactHeader message")
        header = first.header
        _check_length("header.name", header.name, MAX_NAME_CHARS)

        def data() -> Iterator[bytes]:
            for chunk in chunks:
                if chunk.WhichOneof("payload") != "data":
                    raise invalid("only the first upload message may carry a header")
                yield chunk.data

        art, present = self.store.put(header.sha256, header.size_bytes, data())
        if header.kind and PROTO_TO_KIND.get(header.kind) not in (None, art.kind):
            log.warning("upload %s declared kind %d but is a .%s", art.sha256[:12], header.kind, art.kind)
        return pb.UploadArtifactResponse(sha256=art.sha256, size_bytes=art.size_bytes, already_present=present)

    def store_file(self, data: bytes) -> str:
        """Put bytes into the store directly (``sculpt-agent bench``); returns the SHA-256."""
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        self.store.put(sha, len(data), iter([data]))
        return sha

    # -- Benchmark -----------------------------------------------------------------------------------------
    def benchmark(self, req: pb.BenchmarkRequest, is_active=lambda: True) -> pb.BenchmarkResult:
        """Validate, queue and run one benchmark; see the protocol for the semantics of every field.

        ``is_active`` says whether the caller still waits (the RPC is alive): a caller that leaves takes its
        job out of the queue, and a running job stops once no caller waits for it.
        """
        _check_length("job_id", req.job_id, MAX_JOB_ID_CHARS)
        _check_length("runtime", req.runtime, MAX_RUNTIME_CHARS)
        done = self.queue.finished(req.job_id)
        if done is not None:  # a retry of a finished job: its result, even if the artifact was evicted since
            return done
        art = self.store.get(req.artifact_sha256)
        if art is None:
            raise precondition(f"artifact {req.artifact_sha256} is not on this agent: upload it first")
        spec = resolve(req.runtime, art.kind)
        timeout = req.timeout_seconds or self.config.default_timeout_s
        if not (math.isfinite(timeout) and 0 < timeout <= self.config.max_timeout_s):
            raise invalid(f"timeout_seconds = {timeout:g} must be in (0, {self.config.max_timeout_s:g}] "
                          "(max_timeout_s in the agent config)")
        policy = _policy(req, timeout, self.config.max_cooldown_s)
        if len(req.inputs) > MAX_INPUTS:
            raise invalid(f"{len(req.inputs)} inputs: at most {MAX_INPUTS} are accepted")
        inputs = [_tensor_in(i, t) for i, t in enumerate(req.inputs)]
        generated = sum(_nbytes(shape, dtype) for shape, dtype, data in inputs if not data)
        if generated > MAX_GENERATED_INPUT_BYTES:
            raise invalid(f"the inputs to fill with random values need {generated} bytes, over "
                          f"{MAX_GENERATED_INPUT_BYTES} (1 GiB)")
        if req.threads > 1024:
            raise invalid(f"threads={req.threads} is not sensible; use 0 for the runtime default")
        job_id = req.job_id or uuid.uuid4().hex
        request = {"sha256": art.sha256, "path": str(art.path), "threads": req.threads, "inputs": inputs,
                   "seed": req.input_seed, "policy": policy.__dict__, "return_outputs": req.return_outputs}

        def run(queued_s: float, wanted) -> pb.BenchmarkResult:
            def live() -> bool:
                return wanted() and not self.stopping.is_set()

            return self._run(job_id, spec.name, request, req, policy, timeout, queued_s, live)

        if self.stopping.is_set():
            raise AgentError("UNAVAILABLE", "the agent is shutting down; retry on a running agent")
        self.store.pin(art.sha256)  # from now on, not even a long wait in the queue lets it be evicted
        try:
            return self.queue.submit(job_id, run, lambda: is_active() and not self.stopping.is_set())
        except AgentError as exc:
            if exc.code == "CANCELLED" and self.stopping.is_set():
                raise AgentError("UNAVAILABLE", "the agent is shutting down; retry on a running agent") from None
            raise
        finally:
            self.store.unpin(art.sha256)

    def _run(self, job_id, runtime, request, req, policy: Policy, timeout, queued_s, live) -> pb.BenchmarkResult:
        root = self.config.sysfs_root
        # One deadline for the whole job: cool-down, idle power and the worker's runs all count against it.
        deadline = time.monotonic() + timeout
        gate_note = self._cool_down(policy, deadline, timeout, live)
        temps_before = sysinfo.temperatures(root)
        throttles_before = sysinfo.throttle_count(root)
        pi_before = sysinfo.pi_throttled_flags(self._vcgencmd) if self._is_pi else None
        energy_on = req.measure_energy and self.meter is not None
        idle: Window | None = None
        meter_error = ""
        if energy_on:
            try:
                idle = measure_idle(self.meter, self.config.energy.idle_seconds,
                                    self.config.energy.sample_interval_s)
            except Exception as exc:  # noqa: BLE001 - a failing meter must not fail the benchmark
                meter_error, energy_on = f"reading {self.meter.name} failed: {exc}", False
        sampler = Sampler(self.meter, self.config.energy.sample_interval_s) if energy_on else None

        def on_phase(phase: str) -> None:
            nonlocal meter_error
            if phase == "timed" and sampler is not None:
                try:
                    sampler.start()
                except Exception as exc:  # noqa: BLE001
                    meter_error = f"reading {self.meter.name} failed: {exc}"

        worker = self.workers.get(runtime)
        window: Window | None = None
        try:
            out = worker.run(request, timeout, on_phase, live, deadline=deadline)
        finally:
            if sampler is not None and sampler.started:
                try:
                    window = sampler.stop()
                except Exception as exc:  # noqa: BLE001
                    meter_error = f"reading {self.meter.name} failed: {exc}"
        temps_after = sysinfo.temperatures(root)
        throttles_after = sysinfo.throttle_count(root)
        pi_after = sysinfo.pi_throttled_flags(self._vcgencmd) if self._is_pi else None
        reasons = [gate_note] if gate_note else []
        pi_note = sysinfo.describe_pi_throttling(pi_before, pi_after)
        if pi_note:
            reasons.append(pi_note)
        if throttles_before is not None and throttles_after is not None and throttles_after > throttles_before:
            reasons.append(f"CPU thermal throttle counters rose by {throttles_after - throttles_before}")
        if policy.max_temperature_c and temps_after and max(temps_after.values()) > policy.max_temperature_c:
            reasons.append(f"temperature reached {max(temps_after.values()):.1f} C, over the gate of "
                           f"{policy.max_temperature_c:.1f} C")
        result = pb.BenchmarkResult(
            job_id=job_id, artifact_sha256=request["sha256"], runtime=runtime,
            runtime_version=out["runtime_version"], threads=int(out["threads"]), latencies_ms=out["latencies_ms"],
            stats=pb.LatencyStats(**out["stats"]), load_ms=out["load_ms"], first_run_ms=out["first_run_ms"],
            warmup_runs=out["warmup_runs"], warmup_s=out["warmup_s"], timed_window_s=out["timed_window_s"],
            peak_rss_bytes=out["peak_rss_bytes"], output_sha256=out["output_sha256"],
            outputs=[pb.Tensor(shape=s, dtype=DTYPE_TO_PROTO.get(d, pb.DTYPE_UNSPECIFIED), data=b)
                     for s, d, b in out["outputs"]],
            temperatures_before=_temps(temps_before), temperatures_after=_temps(temps_after),
            throttled=bool(reasons), throttle_reason="; ".join(reasons), fingerprint=self.fingerprint,
            queued_s=queued_s, load_cached=out["load_cached"], load_average_1m=_load_average(),
            energy=self._energy(req.measure_energy, idle, window, out, meter_error),
        )
        return result

    def _energy(self, wanted: bool, idle: Window | None, window: Window | None, out: dict,
                meter_error: str) -> pb.Energy:
        if not wanted:
            return pb.Energy(available=False, unavailable_reason="not requested (measure_energy=false)")
        if self.meter is None:
            return pb.Energy(available=False, unavailable_reason=self.meter_reason)
        if meter_error:
            return pb.Energy(available=False, meter=self.meter.name, unavailable_reason=meter_error)
        if window is None or idle is None:
            return pb.Energy(available=False, meter=self.meter.name, unavailable_reason="sampling did not start")
        runs = max(1, len(out["latencies_ms"]))
        busy_s = out["timed_window_s"]
        return pb.Energy(
            available=True, meter=self.meter.name,
            method=self.meter.method + "; idle power measured first, mean power over the timed window",
            sample_count=window.sample_count, mean_power_w=window.mean_power_w, idle_power_w=idle.mean_power_w,
            joules_per_inference=window.mean_power_w * busy_s / runs,
            joules_per_inference_idle_subtracted=(window.mean_power_w - idle.mean_power_w) * busy_s / runs,
        )

    def _cool_down(self, policy: Policy, deadline: float, timeout: float, live) -> str:
        """Wait for the board to cool below the policy's gate; returns a note when it did not in time.

        The wait is bounded by the policy's cool-down timeout (itself capped by the agent's max_cooldown_s)
        and by the job's deadline; it ends early when nobody waits for the job or the agent is stopping.
        """
        if not policy.max_temperature_c:
            return ""
        until = time.monotonic() + policy.cooldown_timeout_seconds
        while True:
            temps = sysinfo.temperatures(self.config.sysfs_root)
            if not temps:
                return ""
            hottest = max(temps.values())
            if hottest <= policy.max_temperature_c:
                return ""
            now = time.monotonic()
            if now >= deadline:
                raise AgentError(
                    "DEADLINE_EXCEEDED",
                    f"the board stayed above {policy.max_temperature_c:.1f} C (now {hottest:.1f} C) for the job's "
                    f"whole timeout of {timeout:g} s; the cool-down counts against it. Raise the request's timeout "
                    "(BenchSpec.timeout_s) or lower the policy's cooldown_timeout_seconds",
                )
            if now >= until:
                return (f"started at {hottest:.1f} C: did not cool below {policy.max_temperature_c:.1f} C within "
                        f"{policy.cooldown_timeout_seconds:g} s")
            if self.stopping.is_set():
                raise AgentError("UNAVAILABLE", "the agent is shutting down; retry on a running agent")
            if not live():
                raise AgentError("CANCELLED", "the caller went away while the agent waited for the board to cool")
            # Event.wait, not sleep: close() wakes it at once.
            self.stopping.wait(min(0.2, until - now, deadline - now))


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return 0.0


def _temps(temps: dict[str, float]) -> list[pb.Temperature]:
    return [pb.Temperature(zone=zone, celsius=c) for zone, c in temps.items()]


def _check_length(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise invalid(f"{field} is {len(value)} characters long, over the limit of {limit}: "
                      f"{shorten(value)}")


def _policy(req: pb.BenchmarkRequest, timeout: float, max_cooldown_s: float) -> Policy:
    """The request's policy (absent = the search-mode defaults), checked against the job's deadline and the
    agent's limits."""
    if not req.HasField("policy"):
        policy = Policy()
    else:
        p = req.policy
        values = {"warmup_runs": p.warmup_runs, "warmup_seconds": p.warmup_seconds, "min_runs": p.min_runs,
                  "min_seconds": p.min_seconds, "max_runs": p.max_runs or Policy.max_runs,
                  "max_seconds": p.max_seconds, "max_temperature_c": p.max_temperature_c,
                  "cooldown_timeout_seconds": p.cooldown_timeout_seconds or Policy.cooldown_timeout_seconds}
        for key, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise invalid(f"policy.{key} = {value} must be a finite number >= 0")
        if values["max_runs"] > 10_000_000:
            raise invalid("policy.max_runs is over 10,000,000; lower it")
        policy = Policy(**values)
    # Times the job could never finish within its deadline are refused up front, not discovered by holding
    # the device until the deadline.
    timed = min(policy.min_seconds, policy.max_seconds) if policy.max_seconds else policy.min_seconds
    if policy.warmup_seconds + timed > timeout:
        raise invalid(f"policy needs at least {policy.warmup_seconds + timed:g} s (warmup_seconds + min_seconds, "
                      f"capped by max_seconds) but the job's timeout is {timeout:g} s; lower them or raise the "
                      "request's timeout_seconds")
    if policy.max_temperature_c and policy.cooldown_timeout_seconds > max_cooldown_s:
        raise invalid(f"policy.cooldown_timeout_seconds = {policy.cooldown_timeout_seconds:g} is over this agent's "
                      f"limit of {max_cooldown_s:g} s (max_cooldown_s in the agent config); lower it")
    return policy


def _nbytes(shape: list[int], dtype: str) -> int:
    # Python integers: np.prod wraps around at 2**63, so [2**62, 4] would count as 0 bytes.
    return math.prod(shape) * np.dtype(dtype).itemsize


def _tensor_in(i: int, t: pb.Tensor) -> tuple[list[int], str, bytes]:
    dtype = DTYPES.get(t.dtype)
    if dtype is None:
        raise invalid(f"input {i} has no dtype (set Tensor.dtype)")
    shape = [int(d) for d in t.shape]
    if len(shape) > 8 or any(d < 0 for d in shape):
        raise invalid(f"input {i} has an invalid shape {shorten(shape)}")
    nbytes = _nbytes(shape, dtype)
    if nbytes > MAX_GENERATED_INPUT_BYTES:
        raise invalid(f"input {i} of shape {shape} is {nbytes} bytes, over 1 GiB")
    if t.data and len(t.data) != nbytes:
        raise invalid(f"input {i}: {len(t.data)} bytes of data do not fill shape {shape} of {dtype} "
                      f"({nbytes} bytes)")
    return shape, dtype, bytes(t.data)
