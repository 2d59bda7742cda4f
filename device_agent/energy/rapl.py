"""x86 RAPL through ``/sys/class/powercap``: per-package energy counters in microjoules that wrap."""

from __future__ import annotations

from pathlib import Path

from device_agent.config import EnergyConfig


class RaplMeter:
    """Sum of the package zones' ``energy_uj`` counters."""

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        names = [(z / "name").read_text().strip() for z in zones]
        self.name = "rapl:" + "+".join(names)
        self.method = ("RAPL energy counters (" + ", ".join(names) + ") read from /sys/class/powercap; "
                       "covers the CPU package(s) only, not DRAM or the board")
        self.max_ranges_uj = [int((z / "max_energy_range_uj").read_text()) for z in zones]

    def read_counters_uj(self) -> list[int]:
        """Current value of every zone's counter."""
        return [int((z / "energy_uj").read_text()) for z in self.zones]


def find_rapl_meter(config: EnergyConfig) -> tuple[RaplMeter | None, str]:
    """The RAPL package zones under ``root``, if present and readable."""
    base = Path(config.root) / "sys/class/powercap"
    zones = sorted(p for p in base.glob("*-rapl:*") if p.name.count(":") == 1 and (p / "energy_uj").exists())
    if not zones:
        return None, f"no RAPL zones under {base}"
    packages = [z for z in zones if (z / "name").read_text().strip().startswith("package")] or zones
    try:
        meter = RaplMeter(packages)
        meter.read_counters_uj()
    except PermissionError:
        return None, "RAPL energy_uj is readable only by root: run the agent as root or grant read access"
    except (OSError, ValueError) as exc:
        return None, f"cannot read RAPL counters: {exc}"
    return meter, ""
