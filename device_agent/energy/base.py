"""The two kinds of meter: instantaneous power (W) and cumulative energy counters that wrap."""

from __future__ import annotations

from typing import Protocol


class PowerMeter(Protocol):
    """Reads instantaneous power in watts (Jetson INA3221, Raspberry Pi 5 PMIC)."""

    name: str  # e.g. "jetson-ina3221:VDD_IN"
    method: str  # how it measures, in words

    def read_watts(self) -> float: ...


class EnergyMeter(Protocol):
    """Reads cumulative energy counters in microjoules that wrap at ``max_ranges_uj`` (RAPL)."""

    name: str
    method: str
    max_ranges_uj: list[int]

    def read_counters_uj(self) -> list[int]: ...


def counter_delta(before: int, after: int, max_range: int) -> int:
    """Increase of a wrapping counter between two reads (assumes at most one wrap in between)."""
    return after - before if after >= before else after + max_range - before
