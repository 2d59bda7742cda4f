"""The agent's configuration: small frozen dataclasses, read from TOML only at the CLI edge."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.errors import AgentConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 boards only
    import tomli as tomllib

MIB = 1024 * 1024


def default_store_dir() -> Path:
    """Where artifacts live when no store is configured: ``$XDG_CACHE_HOME/sculpt-agent/store``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sculpt-agent" / "store"


@dataclass(frozen=True)
class EnergyConfig:
    """Which power meter to use and how to sample it."""

    meter: str = "auto"  # auto | none | rapl | jetson | rpi5
    root: Path = Path("/")  # sysfs root; tests point it at a tree they write
    vcgencmd: str = "vcgencmd"  # command prefix for the Raspberry Pi 5 PMIC meter
    sample_interval_s: float = 0.05
    idle_seconds: float = 0.5  # idle power is measured for this long before the timed window


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key; with ``client_ca`` the agent also requires client certificates (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``create_server`` needs. Build with :func:`load_config` or directly in tests."""

    host: str = "127.0.0.1"
    port: int = 50051
    store_dir: Path = field(default_factory=default_store_dir)
    max_artifact_bytes: int = 512 * MIB
    store_capacity_bytes: int = 4096 * MIB
    queue_capacity: int = 8  # benchmarks waiting or running; past this RESOURCE_EXHAUSTED
    default_timeout_s: float = 300.0  # job deadline (cool-down + idle power + worker) when the request sets none
    max_timeout_s: float = 3600.0  # the longest job deadline (and policy time) a client may ask for
    max_cooldown_s: float = 300.0  # the longest cool-down wait a client may ask for (it holds the board)
    max_request_bytes: int = 64 * MIB  # largest message the server receives (input tensors, upload chunks)
    worker_start_timeout_s: float = 120.0  # importing a runtime (torch for ExecuTorch) can be slow on a Pi
    programs_cached: int = 4  # loaded programs a worker keeps, by sha256 and threads
    results_kept: int = 256  # finished job results kept for idempotent repeats ...
    results_kept_bytes: int = 64 * MIB  # ... and at most this many bytes of them (outputs can be large)
    ephemeral_store: bool = False  # the store is new or empty and is deleted when the agent stops
    sysfs_root: Path = Path("/")  # thermal zones, cpufreq, throttle counters
    preload_runtimes: tuple[str, ...] = ()  # start these workers at launch, not on the first benchmark
    worker_cpus: tuple[int, ...] = ()  # pin runtime workers to these CPUs (e.g. the big cores); () = any
    token: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None
    energy: EnergyConfig = field(default_factory=EnergyConfig)

    @property
    def is_loopback(self) -> bool:
        """True when the bind address is only reachable from this machine."""
        return is_loopback_host(self.host)

    def validate(self) -> None:
        """Refuse unsafe or meaningless settings, saying which flag or key fixes them."""
        if not 0 <= self.port <= 65535:
            raise AgentConfigError(f"port {self.port} is out of range 0..65535")
        unknown = set(self.preload_runtimes) - {"executorch", "litert"}
        if unknown:
            raise AgentConfigError(f"unknown runtime(s) to preload: {', '.join(sorted(unknown))}; "
                                   "use executorch and/or litert")
        if self.worker_cpus and not set(self.worker_cpus) <= set(range(os.cpu_count() or 1)):
            raise AgentConfigError(f"worker_cpus {list(self.worker_cpus)} names CPUs this machine lacks "
                                   f"(it has 0..{(os.cpu_count() or 1) - 1})")
        if not 0 < self.default_timeout_s <= self.max_timeout_s:
            raise AgentConfigError(f"default_timeout_s {self.default_timeout_s:g} must be in (0, max_timeout_s = "
                                   f"{self.max_timeout_s:g}]; lower it or raise max_timeout_s")
        if self.max_cooldown_s < 0:
            raise AgentConfigError("max_cooldown_s must be >= 0")
        if self.max_request_bytes < MIB:
            raise AgentConfigError("max_request_mib must be at least 1 (upload chunks are 1 MiB)")
        if self.queue_capacity < 1:
            raise AgentConfigError("queue_capacity must be at least 1")
        if self.max_artifact_bytes <= 0 or self.store_capacity_bytes < self.max_artifact_bytes:
            raise AgentConfigError(
                "store_capacity_bytes must be at least max_artifact_bytes (both > 0); raise store_capacity_mib"
            )
        if not self.is_loopback:
            missing = []
            if self.tls is None:
                missing.append("--tls-cert/--tls-key (or [tls] cert/key in the config)")
            if not self.token:
                missing.append("--token-file (or token_file in the config)")
            if missing:
                raise AgentConfigError(
                    f"refusing to listen on non-loopback address {self.host!r} without TLS and a bearer token; "
                    f"pass {' and '.join(missing)}, or bind 127.0.0.1 and reach the agent through an SSH tunnel"
                )
        if self.tls is not None:
            for label, path in (("TLS certificate", self.tls.cert), ("TLS key", self.tls.key),
                                ("client CA", self.tls.client_ca)):
                if path is not None and not Path(path).is_file():
                    raise AgentConfigError(f"{label} file {path} does not exist")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token_file(path: Path) -> str:
    """Read a bearer token (first line, stripped); refuse an empty file."""
    token = _read_text(path, "token file").strip().splitlines()
    if not token or not token[0].strip():
        raise AgentConfigError(f"token file {path} is empty; put a long random token on its first line")
    return token[0].strip()


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; any failure is an AgentConfigError naming the file (never a traceback)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AgentConfigError(f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                               f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise AgentConfigError(f"cannot read {what} {path}: {exc}") from exc


_TOP_KEYS = {"host", "port", "store_dir", "max_artifact_mib", "store_capacity_mib", "queue_capacity",
             "default_timeout_s", "worker_start_timeout_s", "programs_cached", "results_kept", "sysfs_root",
             "token_file", "tls", "energy", "preload_runtimes", "worker_cpus", "max_timeout_s", "max_cooldown_s",
             "max_request_mib", "results_kept_mib"}


def load_config(path: Path | None = None, **overrides: Any) -> AgentConfig:
    """Build an :class:`AgentConfig` from an optional TOML file, then apply non-None ``overrides``.

    Overrides use the dataclass field names (``host``, ``port``, ``store_dir``, ``token``, ``tls`` ...).
    """
    values: dict[str, Any] = {}
    if path is not None:
        text = _read_text(path, "agent config")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AgentConfigError(f"cannot read agent config {path}: {exc}") from exc
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise AgentConfigError(f"unknown keys in {path}: {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_TOP_KEYS))})")
        values = _from_toml(data, Path(path).parent)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AgentConfig(**values)
    except TypeError as exc:
        raise AgentConfigError(f"bad agent config: {exc}") from exc


def _from_toml(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def path_of(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    out: dict[str, Any] = {}
    for key in ("host", "port", "queue_capacity", "default_timeout_s", "worker_start_timeout_s",
                "programs_cached", "results_kept", "max_timeout_s", "max_cooldown_s"):
        if key in data:
            out[key] = data[key]
    if "store_dir" in data:
        out["store_dir"] = path_of(data["store_dir"])
    if "worker_cpus" in data:
        out["worker_cpus"] = tuple(int(c) for c in data["worker_cpus"])
    if "preload_runtimes" in data:
        out["preload_runtimes"] = tuple(data["preload_runtimes"])
    if "sysfs_root" in data:
        out["sysfs_root"] = path_of(data["sysfs_root"])
    if "max_artifact_mib" in data:
        out["max_artifact_bytes"] = int(data["max_artifact_mib"] * MIB)
    if "max_request_mib" in data:
        out["max_request_bytes"] = int(data["max_request_mib"] * MIB)
    if "results_kept_mib" in data:
        out["results_kept_bytes"] = int(data["results_kept_mib"] * MIB)
    if "store_capacity_mib" in data:
        out["store_capacity_bytes"] = int(data["store_capacity_mib"] * MIB)
    if "token_file" in data:
        out["token"] = read_token_file(path_of(data["token_file"]))
    if "tls" in data:
        tls = data["tls"]
        try:
            out["tls"] = TlsConfig(cert=path_of(tls["cert"]), key=path_of(tls["key"]),
                                   client_ca=path_of(tls["client_ca"]) if tls.get("client_ca") else None)
        except KeyError as exc:
            raise AgentConfigError(f"[tls] needs both cert and key (missing {exc})") from exc
    if "energy" in data:
        energy = dict(data["energy"])
        if "root" in energy:
            energy["root"] = path_of(energy["root"])
        allowed = {f.name for f in dataclasses.fields(EnergyConfig)}
        unknown = set(energy) - allowed
        if unknown:
            raise AgentConfigError(f"unknown keys in [energy]: {', '.join(sorted(unknown))}")
        out["energy"] = EnergyConfig(**energy)
    return out
