"""Run every artifact on every selected device: devices in parallel, one benchmark per device at a time.

Each finished job (a result or a classified error) is appended to ``results.jsonl`` at once, so nothing
completed is lost when the run, a device or the host dies; a rerun with the same output directory skips the
jobs that already succeeded. A device whose failures keep being transport-level is marked offline and its
remaining jobs end with the ``offline`` error while the other devices finish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host.devices.address import DeviceAddress
from host.devices.connect import ConnectOptions, connect
from host.devices.retry import classify
from host.errors import SculptError

log = logging.getLogger(__name__)

ARTIFACT_RUNTIME = {".pte": "executorch", ".tflite": "litert"}


def artifact_precision(path: Path, sha256: str) -> str | None:
    """"int8" or "fp32" as the sidecar next to ``path`` (``m.pte`` -> ``m.json``, written by ``sculpt-host
    export`` and by a search) records it for this very file (same digest); None without one. Read here
    rather than through ``host.export.sidecar``: importing ``host.export`` loads torch, which fleet bench
    does not need."""
    import json

    try:
        entry = json.loads(path.with_suffix(".json").read_text())["artifacts"][path.name]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(entry, dict) or entry.get("sha256") != sha256:
        return None  # the file changed since the sidecar was written
    return "int8" if entry.get("int8") else "fp32"


@dataclass(frozen=True)
class FleetTarget:
    """A device to run on and how to reach it."""

    name: str
    address: DeviceAddress
    options: ConnectOptions = field(default_factory=ConnectOptions)
    runtime: str | None = None  # only artifacts of this runtime run here; None = any
    threads: int | None = None


@dataclass(frozen=True)
class BenchArtifact:
    """A model file to benchmark, identified by content."""

    path: Path
    sha256: str
    precision: str | None = None  # "int8" / "fp32" from the sidecar the exporter wrote next to it; None: unknown

    @property
    def name(self) -> str:
        """File name, as reports show it."""
        return self.path.name

    @property
    def runtime(self) -> str | None:
        """Runtime the artifact kind needs (by suffix), or None when unknown."""
        return ARTIFACT_RUNTIME.get(self.path.suffix.lower())

    @classmethod
    def from_path(cls, path: str | Path) -> BenchArtifact:
        """Hash the file (streamed) and describe it."""
        path = Path(path)
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return cls(path=path, sha256=digest.hexdigest(), precision=artifact_precision(path, digest.hexdigest()))


@dataclass(frozen=True)
class JobRecord:
    """How one (device, artifact) job ended. ``status`` is ok | error | skipped."""

    device: str
    address: str
    artifact: str
    artifact_sha256: str
    status: str
    error_kind: str | None = None  # transient | failed | fatal | offline (see host.devices.retry.classify)
    error_type: str | None = None
    error_code: str | None = None
    message: str = ""
    runtime: str | None = None
    threads: int | None = None
    runs: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    cv: float | None = None
    load_ms: float | None = None
    joules_per_inference: float | None = None
    fingerprint: str | None = None
    duration_s: float = 0.0
    finished_at: float = 0.0
    precision: str | None = None  # the artifact's (int8 / fp32), when its sidecar says

    def to_json(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of every field."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FleetRunConfig:
    """Policy of a fleet run. Retries of a single call live in each target's ``ConnectOptions.retry``."""

    offline_after: int = 2  # consecutive device-level failures before a device is marked offline
    resume: bool = True  # skip jobs already recorded as ok in results.jsonl


class ResultLog:
    """Append-only JSON-lines file of JobRecords, flushed and fsynced per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: JobRecord) -> None:
        """Append one record durably (flush + fsync), safe from several threads."""
        line = json.dumps(record.to_json(), sort_keys=True)
        with self._lock, self.path.open("a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[JobRecord]:
        """Every record written so far; a torn last line (crash mid-write) is ignored."""
        if not self.path.exists():
            return []
        names = {f.name for f in dataclasses.fields(JobRecord)}
        records = []
        for raw in self.path.read_bytes().splitlines():
            # a line with a damaged (non-UTF-8) byte is skipped like a torn one, not read with a replaced
            # character (that would report a device or artifact under a wrong name) nor ending the run
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                log.warning("%s: skipping a line that is not UTF-8 (damaged file): %r", self.path, raw[:80])
                continue
            except json.JSONDecodeError:  # torn by a crash mid-write: expected, nothing to say
                continue
            records.append(JobRecord(**{k: v for k, v in data.items() if k in names}))
        return records


def latest_records(records: list[JobRecord]) -> list[JobRecord]:
    """The last record per (device, artifact sha), in first-seen order: what a resumed run reports."""
    latest: dict[tuple[str, str, str], JobRecord] = {}
    for r in records:
        latest[(r.device, r.artifact, r.artifact_sha256)] = r
    return list(latest.values())


Event = Callable[[str, str, Any], None]  # (device, what, payload): start | retry | done | offline | connect


class FleetRunner:
    """Runs the jobs; ``make_spec(target, artifact, job_id)`` builds the client's BenchSpec."""

    def __init__(
        self,
        targets: list[FleetTarget],
        artifacts: list[BenchArtifact],
        make_spec: Callable[[FleetTarget, BenchArtifact, str], Any],
        out_dir: Path,
        config: FleetRunConfig | None = None,
        on_event: Event | None = None,
    ) -> None:
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate device names: {names}")
        self.targets = targets
        self.artifacts = artifacts
        self.make_spec = make_spec
        self.config = config or FleetRunConfig()
        self.log = ResultLog(Path(out_dir) / "results.jsonl")
        self.on_event = on_event or (lambda *_: None)
        self.run_id = uuid.uuid4().hex[:12]
        self.offline: set[str] = set()
        self._lock = threading.Lock()

    def jobs_for(self, target: FleetTarget) -> list[BenchArtifact]:
        """Artifacts to run on ``target``, in order."""
        return list(self.artifacts)

    def run(self) -> list[JobRecord]:
        """Run all jobs and return the latest record of every job (including ones from earlier runs)."""
        done = set()
        if self.config.resume:
            done = {(r.device, r.artifact_sha256) for r in self.log.read() if r.status == "ok"}
        threads = [
            threading.Thread(target=self._device_loop, args=(t, done), name=f"fleet-{t.name}", daemon=True)
            for t in self.targets
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wanted = {(t.name, a.sha256) for t in self.targets for a in self.artifacts}
        return [r for r in latest_records(self.log.read()) if (r.device, r.artifact_sha256) in wanted]

    def _record(self, target: FleetTarget, artifact: BenchArtifact, **fields) -> JobRecord:
        record = JobRecord(
            device=target.name, address=str(target.address), artifact=artifact.name, precision=artifact.precision,
            artifact_sha256=artifact.sha256, finished_at=time.time(), **fields,
        )
        self.log.append(record)
        self.on_event(target.name, "done", record)
        return record

    def _device_loop(self, target: FleetTarget, done: set) -> None:
        handle = None
        failures = 0
        try:
            for artifact in self.jobs_for(target):
                if (target.name, artifact.sha256) in done:
                    self.on_event(target.name, "skip-done", artifact)
                    continue
                if target.name in self.offline:
                    self._record(target, artifact, status="error", error_kind="offline", error_type="DeviceOffline",
                                 message=f"{target.name} was marked offline after {failures} failures in a row")
                    continue
                if target.runtime and artifact.runtime and target.runtime != artifact.runtime:
                    self._record(target, artifact, status="skipped",
                                 message=f"{target.name} runs {target.runtime} only; {artifact.name} needs {artifact.runtime}")
                    continue
                self.on_event(target.name, "start", artifact)
                started = time.monotonic()
                try:
                    if handle is None:
                        self.on_event(target.name, "connect", None)
                        handle = connect(target.address, target.options)
                    spec = self.make_spec(target, artifact, self._job_id(target, artifact))
                    result = handle.benchmark_file(artifact.path, spec)
                except Exception as exc:  # one device's failure must never abort the fleet run
                    kind = classify(exc)
                    self._record(
                        target, artifact, status="error", error_kind=kind, error_type=type(exc).__name__,
                        error_code=getattr(exc, "code", None),
                        message=exc.message if isinstance(exc, SculptError) else str(exc),
                        duration_s=time.monotonic() - started,
                    )
                    if kind == "failed":  # the device worked; the artifact did not
                        failures = 0
                        continue
                    failures += 1
                    if handle is not None:
                        handle.close()
                        handle = None
                    if kind == "fatal" or failures >= self.config.offline_after:
                        with self._lock:
                            self.offline.add(target.name)
                        log.warning("%s marked offline: %s", target.name, exc)
                        self.on_event(target.name, "offline", exc)
                    continue
                failures = 0
                self._record(target, artifact, status="ok", duration_s=time.monotonic() - started,
                             **summarize(result))
        finally:
            if handle is not None:
                handle.close()

    def _job_id(self, target: FleetTarget, artifact: BenchArtifact) -> str:
        # Stable within a run, so a retried Benchmark returns the agent's stored result instead of re-running.
        return hashlib.sha256(f"{self.run_id}/{target.name}/{artifact.sha256}".encode()).hexdigest()[:32]


def summarize(result: Any) -> dict[str, Any]:
    """Flatten a client BenchmarkResult into JobRecord fields."""
    stats = getattr(result, "stats", None)
    energy = getattr(result, "energy", None)
    joules = None
    if energy is not None and getattr(energy, "available", False):
        joules = getattr(energy, "joules_per_inference", None)
    return {
        "runtime": getattr(result, "runtime", None),
        "threads": getattr(result, "threads", None),
        "runs": getattr(stats, "count", None),
        "p50_ms": getattr(stats, "p50_ms", None),
        "p90_ms": getattr(stats, "p90_ms", None),
        "mean_ms": getattr(stats, "mean_ms", None),
        "std_ms": getattr(stats, "std_ms", None),
        "cv": getattr(stats, "cv", None),
        "load_ms": getattr(result, "load_ms", None),
        "joules_per_inference": joules,
        "fingerprint": getattr(result, "fingerprint", None),
    }
