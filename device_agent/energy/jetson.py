"""NVIDIA Jetson INA3221 power monitors: iio layout (JetPack <= 4) and hwmon layout (JetPack >= 5 / Orin).

The board input rail (``VDD_IN`` or ``POM_5V_IN``) already measures the whole module, so it is used alone;
summing it with the other rails would count them twice. Without such a rail the listed rails are summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from device_agent.config import EnergyConfig

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel: either a power file (mW) or a voltage (mV) and current (mA) pair."""

    label: str
    power_mw: Path | None = None
    voltage_mv: Path | None = None
    current_ma: Path | None = None

    def watts(self) -> float:
        if self.power_mw is not None:
            return int(self.power_mw.read_text()) / 1000.0
        return int(self.voltage_mv.read_text()) * int(self.current_ma.read_text()) / 1e6


def _read(path: Path) -> str:
    return path.read_text().strip()


def iio_rails(root: Path) -> list[Rail]:
    """Rails of the JetPack <= 4 driver: ``iio:device*/rail_name_N`` + ``in_power{N}_input`` (mW)."""
    rails = []
    for dev in sorted((root / "sys/bus/i2c/drivers/ina3221x").glob("*/iio:device*")):
        for name_file in sorted(dev.glob("rail_name_*")):
            n = name_file.name.rsplit("_", 1)[1]
            power = dev / f"in_power{n}_input"
            if power.exists():
                rails.append(Rail(_read(name_file), power_mw=power))
    return rails


def hwmon_rails(root: Path) -> list[Rail]:
    """Rails of the JetPack >= 5 driver: ``hwmon*/in{N}_label`` + ``in{N}_input`` (mV) + ``curr{N}_input`` (mA)."""
    dirs = sorted((root / "sys/bus/i2c/drivers/ina3221").glob("*/hwmon/hwmon*"))
    dirs += [d for d in sorted((root / "sys/class/hwmon").glob("hwmon*"))
             if (d / "name").exists() and _read(d / "name") == "ina3221" and d not in dirs]
    rails = []
    for dev in dirs:
        for label_file in sorted(dev.glob("in*_label")):
            n = label_file.name[2:].split("_", 1)[0]
            volt, curr = dev / f"in{n}_input", dev / f"curr{n}_input"
            if volt.exists() and curr.exists():
                rails.append(Rail(_read(label_file), voltage_mv=volt, current_ma=curr))
    return rails


class JetsonMeter:
    """Board power from the INA3221 total rail (or the sum of rails when no total rail exists)."""

    def __init__(self, rails: list[Rail], layout: str) -> None:
        total = [r for r in rails if r.label in TOTAL_RAILS]
        self.rails = total[:1] or rails
        labels = "+".join(r.label for r in self.rails)
        self.name = f"jetson-ina3221:{labels}"
        how = "power file in mW" if layout == "iio" else "voltage (mV) x current (mA)"
        what = ("board input rail, already the module total" if total else
                "sum of the monitored rails (no VDD_IN / POM_5V_IN rail found; excludes unmonitored loads)")
        self.method = f"INA3221 {layout} sysfs, {how}: {labels} ({what})"

    def read_watts(self) -> float:
        """Instantaneous power in watts."""
        return sum(r.watts() for r in self.rails)


def find_jetson_meter(config: EnergyConfig) -> tuple[JetsonMeter | None, str]:
    """A Jetson meter from whichever INA3221 layout exists under ``root``."""
    root = Path(config.root)
    for layout, rails in (("iio", iio_rails(root)), ("hwmon", hwmon_rails(root))):
        if rails:
            meter = JetsonMeter(rails, layout)
            try:
                meter.read_watts()
            except (OSError, ValueError) as exc:
                return None, f"cannot read INA3221 rails: {exc}"
            return meter, ""
    return None, "no INA3221 power monitor in sysfs"
