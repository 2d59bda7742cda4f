"""Raspberry Pi 5 PMIC power through ``vcgencmd pmic_read_adc`` (voltage x current per rail, summed)."""

from __future__ import annotations

import re
import shlex
import subprocess

from device_agent.config import EnergyConfig

_LINE = re.compile(r"^\s*(?P<rail>\S+?)_(?P<unit>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-0-9.eE+]+)[AV]\s*$")


def parse_pmic_adc(text: str) -> dict[str, float]:
    """Watts per rail from ``vcgencmd pmic_read_adc`` output; rails lacking a voltage or current are skipped."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            target = amps if match["unit"] == "A" else volts
            target[match["rail"]] = float(match["value"])
    return {rail: amps[rail] * volts[rail] for rail in amps if rail in volts}


class Rpi5Meter:
    """Sum of the PMIC rails' power."""

    name = "rpi5-pmic"

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.method = (f"sum of voltage x current over the PMIC rails from `{shlex.join(command)}`; excludes "
                       "USB/peripheral 5 V loads and PMIC conversion losses")

    def read_watts(self) -> float:
        """Instantaneous power in watts."""
        proc = subprocess.run(self.command, capture_output=True, text=True, timeout=5, check=True)
        rails = parse_pmic_adc(proc.stdout)
        if not rails:
            raise ValueError("vcgencmd pmic_read_adc printed no rail with both voltage and current")
        return sum(rails.values())


def find_rpi5_meter(config: EnergyConfig) -> tuple[Rpi5Meter | None, str]:
    """A meter when the configured ``vcgencmd`` runs and reports PMIC rails."""
    meter = Rpi5Meter(shlex.split(config.vcgencmd) + ["pmic_read_adc"])
    try:
        meter.read_watts()
    except FileNotFoundError:
        return None, f"{meter.command[0]!r} not found (not a Raspberry Pi, or the firmware tools are missing)"
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return None, f"`{shlex.join(meter.command)}` failed: {exc}"
    return meter, ""
