"""What the agent knows about the board it runs on: CPU, memory, frequencies, temperatures, throttling.

Every reader takes a ``root`` so tests can point it at a sysfs tree they write; missing files mean "unknown".
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Platform:
    """Static facts about the board."""

    hostname: str
    machine: str
    os: str
    board: str
    cpu_model: str
    cpu_count: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00 \n\t")
    except OSError:
        return None


def _sys(root: Path, rel: str) -> Path:
    return Path(root) / rel.lstrip("/")


def platform_info(root: Path = Path("/")) -> Platform:
    """Hostname, architecture, OS, board name and CPU model."""
    return Platform(
        hostname=socket.gethostname(),
        machine=platform.machine(),
        os=_os_name(root),
        board=_board(root),
        cpu_model=_cpu_model(root),
        cpu_count=os.cpu_count() or 1,
    )


def _os_name(root: Path) -> str:
    name = f"{platform.system()} {platform.release()}"
    release = _read(_sys(root, "etc/os-release")) or ""
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', release, re.M)
    return f"{name} ({match.group(1)})" if match else name


def _board(root: Path) -> str:
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model",
                "sys/devices/virtual/dmi/id/product_name"):
        value = _read(_sys(root, rel))
        if value:
            return value
    return ""


def _cpu_model(root: Path) -> str:
    text = _read(_sys(root, "proc/cpuinfo")) or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if match:
            return match.group(1).strip()
    return platform.processor() or "unknown"


def governor(root: Path = Path("/")) -> str:
    """The cpufreq governor of cpu0 ("" when the kernel exposes none, e.g. in a VM)."""
    return _read(_sys(root, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")) or ""


def cpu_frequencies(root: Path = Path("/")) -> tuple[list[float], float, float]:
    """Current per-core frequency and the min/max of cpu0, in MHz (empty / 0 when unknown)."""
    base = _sys(root, "sys/devices/system/cpu")
    current: list[float] = []
    for cpu in sorted(base.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        khz = _read(cpu / "cpufreq" / "scaling_cur_freq")
        if khz and khz.isdigit():
            current.append(int(khz) / 1000.0)
    lo = _read(base / "cpu0" / "cpufreq" / "cpuinfo_min_freq")
    hi = _read(base / "cpu0" / "cpufreq" / "cpuinfo_max_freq")
    return (current, int(lo) / 1000.0 if lo and lo.isdigit() else 0.0,
            int(hi) / 1000.0 if hi and hi.isdigit() else 0.0)


def temperatures(root: Path = Path("/")) -> dict[str, float]:
    """Temperatures in degrees C from thermal zones (and hwmon sensors when there are no zones)."""
    temps: dict[str, float] = {}
    for zone in sorted(_sys(root, "sys/class/thermal").glob("thermal_zone*")):
        value = _read(zone / "temp")
        if value and value.lstrip("-").isdigit():
            label = _read(zone / "type") or zone.name
            temps[f"{label}" if label not in temps else f"{label}:{zone.name}"] = int(value) / 1000.0
    if temps:
        return temps
    for hwmon in sorted(_sys(root, "sys/class/hwmon").glob("hwmon*")):
        chip = _read(hwmon / "name") or hwmon.name
        for sensor in sorted(hwmon.glob("temp*_input")):
            value = _read(sensor)
            if value and value.lstrip("-").isdigit():
                label = _read(sensor.with_name(sensor.name.replace("_input", "_label"))) or sensor.name[:-6]
                temps[f"{chip}:{label}"] = int(value) / 1000.0
    return temps


def throttle_count(root: Path = Path("/")) -> int | None:
    """Sum of the x86 thermal throttle counters, or None when the kernel exposes none."""
    total = None
    for counter in _sys(root, "sys/devices/system/cpu").glob("cpu[0-9]*/thermal_throttle/*_throttle_count"):
        value = _read(counter)
        if value and value.isdigit():
            total = (total or 0) + int(value)
    return total


def memory() -> tuple[int, int]:
    """Total and available memory in bytes."""
    vm = psutil.virtual_memory()
    return vm.total, vm.available


def fingerprint(plat: Platform, runtime_versions: dict[str, str], agent_version: str) -> str:
    """A stable hash of the hardware, OS and runtime versions: equal fingerprints mean comparable numbers."""
    parts = [plat.machine, plat.os, plat.board, plat.cpu_model, str(plat.cpu_count), agent_version]
    parts += [f"{name}={version}" for name, version in sorted(runtime_versions.items())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# Raspberry Pi firmware throttle flags (`vcgencmd get_throttled`): bits 0-3 are "now", bits 16-19 "since boot".
_PI_FLAGS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit"}


def pi_throttled_flags(vcgencmd: list[str]) -> int | None:
    """The firmware's throttle bitmask on a Raspberry Pi, or None when the command is missing or fails."""
    import subprocess

    try:
        proc = subprocess.run([*vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", proc.stdout)
    if proc.returncode != 0 or not match:
        return None
    return int(match.group(1), 0)


def describe_pi_throttling(before: int | None, after: int | None) -> str:
    """Why a window counts as throttled on a Pi: a 'now' flag set after it, or a sticky flag that appeared."""
    if after is None:
        return ""
    reasons = [name for bit, name in _PI_FLAGS.items() if after & (1 << bit)]
    if before is not None:
        new_sticky = (after & ~before) >> 16
        reasons += [f"{name} occurred" for bit, name in _PI_FLAGS.items()
                    if new_sticky & (1 << bit) and name not in reasons]
    return ("Raspberry Pi firmware reports " + ", ".join(reasons)) if reasons else ""
