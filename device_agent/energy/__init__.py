"""Pluggable energy meters: Jetson INA3221, Raspberry Pi 5 PMIC, x86 RAPL. None found -> unavailable."""

from __future__ import annotations

import logging

from device_agent.config import EnergyConfig
from device_agent.energy.base import EnergyMeter, PowerMeter
from device_agent.energy.jetson import find_jetson_meter
from device_agent.energy.rapl import find_rapl_meter
from device_agent.energy.rpi5 import find_rpi5_meter

log = logging.getLogger(__name__)
Meter = PowerMeter | EnergyMeter
_FINDERS = {"jetson": find_jetson_meter, "rpi5": find_rpi5_meter, "rapl": find_rapl_meter}


def detect_meter(config: EnergyConfig) -> tuple[Meter | None, str]:
    """The configured (or first detected) meter, or ``(None, reason)`` saying why there is none."""
    if config.meter == "none":
        return None, "energy measurement is disabled in the agent config ([energy] meter = \"none\")"
    if config.meter != "auto" and config.meter not in _FINDERS:
        return None, f"unknown energy meter {config.meter!r}; use auto, none, {', '.join(_FINDERS)}"
    names = list(_FINDERS) if config.meter == "auto" else [config.meter]
    reasons = []
    for name in names:
        meter, reason = _FINDERS[name](config)
        if meter is not None:
            return meter, ""
        reasons.append(f"{name}: {reason}")
    return None, "no energy meter on this device (" + "; ".join(reasons) + ")"
