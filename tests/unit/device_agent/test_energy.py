"""Energy meters parsed from sysfs trees and command output that the tests write."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from device_agent.config import EnergyConfig
from device_agent.energy import detect_meter
from device_agent.energy.base import counter_delta
from device_agent.energy.jetson import find_jetson_meter
from device_agent.energy.rapl import find_rapl_meter
from device_agent.energy.rpi5 import find_rpi5_meter, parse_pmic_adc
from device_agent.energy.sampler import Sampler

PMIC_OUTPUT = """\
 3V7_WL_SW_A current(0)=0.00000000A
   3V3_SYS_A current(1)=0.06000000A
   1V8_SYS_A current(2)=0.20000000A
  VDD_CORE_A current(7)=2.00000000A
     HDMI_A current(22)=0.00000000A
 3V7_WL_SW_V volt(8)=3.72070000V
   3V3_SYS_V volt(9)=3.30000000V
   1V8_SYS_V volt(10)=1.80000000V
  VDD_CORE_V volt(15)=0.80000000V
     HDMI_V volt(23)=5.15750000V
    EXT5V_V volt(24)=5.15750000V
"""


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_jetson_iio_layout_uses_the_input_rail_only(tmp_path):
    dev = "sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0"
    for n, (name, mw) in enumerate([("POM_5V_IN", 5200), ("POM_5V_GPU", 900), ("POM_5V_CPU", 1100)]):
        write(tmp_path, f"{dev}/rail_name_{n}", name + "\n")
        write(tmp_path, f"{dev}/in_power{n}_input", f"{mw}\n")
    meter, reason = find_jetson_meter(EnergyConfig(root=tmp_path))
    assert reason == "" and meter.name == "jetson-ina3221:POM_5V_IN"
    assert meter.read_watts() == pytest.approx(5.2)  # the total rail alone, not 7.2
    assert "iio" in meter.method and "already the module total" in meter.method


def test_jetson_hwmon_layout_multiplies_volts_and_amps(tmp_path):
    dev = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for n, (label, mv, ma) in enumerate([("VDD_IN", 5000, 1200), ("VDD_CPU_GPU_CV", 5000, 300),
                                         ("VDD_SOC", 5000, 250)], start=1):
        write(tmp_path, f"{dev}/in{n}_label", label)
        write(tmp_path, f"{dev}/in{n}_input", str(mv))
        write(tmp_path, f"{dev}/curr{n}_input", str(ma))
    write(tmp_path, f"{dev}/in7_label", "sum of shunt voltages")  # no current: ignored
    write(tmp_path, f"{dev}/in7_input", "40")
    meter, _ = find_jetson_meter(EnergyConfig(root=tmp_path))
    assert meter.name == "jetson-ina3221:VDD_IN" and meter.read_watts() == pytest.approx(6.0)


def test_jetson_without_a_total_rail_sums_the_rails_and_says_so(tmp_path):
    dev = "sys/class/hwmon/hwmon0"
    write(tmp_path, f"{dev}/name", "ina3221")
    for n, (label, mv, ma) in enumerate([("VDD_GPU", 5000, 100), ("VDD_CPU", 5000, 200)], start=1):
        write(tmp_path, f"{dev}/in{n}_label", label)
        write(tmp_path, f"{dev}/in{n}_input", str(mv))
        write(tmp_path, f"{dev}/curr{n}_input", str(ma))
    meter, _ = find_jetson_meter(EnergyConfig(root=tmp_path))
    assert meter.read_watts() == pytest.approx(1.5) and "sum of the monitored rails" in meter.method


def test_jetson_absent(tmp_path):
    meter, reason = find_jetson_meter(EnergyConfig(root=tmp_path))
    assert meter is None and "no INA3221" in reason


def test_pmic_parser_pairs_volts_and_amps():
    rails = parse_pmic_adc(PMIC_OUTPUT)
    assert set(rails) == {"3V7_WL_SW", "3V3_SYS", "1V8_SYS", "VDD_CORE", "HDMI"}  # EXT5V has no current
    assert rails["VDD_CORE"] == pytest.approx(1.6) and rails["3V3_SYS"] == pytest.approx(0.198)
    assert parse_pmic_adc("garbage\n") == {}


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "vcgencmd"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_rpi5_meter_runs_the_configured_command(tmp_path):
    (tmp_path / "out.txt").write_text(PMIC_OUTPUT)
    script = _script(tmp_path, f'[ "$1" = pmic_read_adc ] || exit 3\ncat {tmp_path / "out.txt"}\n')
    meter, reason = find_rpi5_meter(EnergyConfig(vcgencmd=str(script)))
    assert reason == "" and meter.name == "rpi5-pmic"
    assert meter.read_watts() == pytest.approx(0.198 + 0.36 + 1.6)


def test_rpi5_meter_missing_or_failing(tmp_path):
    meter, reason = find_rpi5_meter(EnergyConfig(vcgencmd=str(tmp_path / "nope")))
    assert meter is None and "not found" in reason
    failing = _script(tmp_path, "echo 'error=1 error_msg=\"Command not registered\"'\nexit 1\n")
    meter, reason = find_rpi5_meter(EnergyConfig(vcgencmd=str(failing)))
    assert meter is None and "failed" in reason


def rapl_tree(root: Path, energy_uj: int, max_uj: int = 1000) -> Path:
    zone = root / "sys/class/powercap/intel-rapl:0"
    write(root, "sys/class/powercap/intel-rapl:0/name", "package-0\n")
    write(root, "sys/class/powercap/intel-rapl:0/max_energy_range_uj", f"{max_uj}\n")
    write(root, "sys/class/powercap/intel-rapl:0/energy_uj", f"{energy_uj}\n")
    write(root, "sys/class/powercap/intel-rapl:0:0/name", "core\n")  # subzone: ignored
    write(root, "sys/class/powercap/intel-rapl:0:0/energy_uj", "5\n")
    return zone


def test_rapl_counter_wrap():
    assert counter_delta(100, 300, 1000) == 200
    assert counter_delta(900, 100, 1000) == 200


def test_rapl_meter_and_sampler_handle_wrap(tmp_path):
    zone = rapl_tree(tmp_path, 900)
    meter, reason = find_rapl_meter(EnergyConfig(root=tmp_path))
    assert reason == "" and meter.name == "rapl:package-0" and meter.max_ranges_uj == [1000]
    sampler = Sampler(meter, interval_s=3600)  # only the start and stop samples
    sampler.start()
    (zone / "energy_uj").write_text("100\n")  # wrapped: 900 -> 1000 -> 100 = 200 uJ
    window = sampler.stop()
    assert window.sample_count == 2
    assert window.mean_power_w == pytest.approx(200e-6 / window.elapsed_s)


def test_rapl_unreadable_or_absent(tmp_path):
    meter, reason = find_rapl_meter(EnergyConfig(root=tmp_path))
    assert meter is None and "no RAPL zones" in reason


def test_power_sampler_averages_samples(tmp_path):
    class Fixed:
        name, method = "fixed", "test meter"

        def __init__(self):
            self.values = iter([1.0, 3.0] + [2.0] * 100000)
            self.reads = 0
            self.third = threading.Event()

        def read_watts(self):
            self.reads += 1
            if self.reads >= 3:
                self.third.set()
            return next(self.values)

    meter = Fixed()
    sampler = Sampler(meter, interval_s=0.001)
    sampler.start()
    assert meter.third.wait(30)  # the background thread sampled twice (not a fixed sleep: the machine is shared)
    window = sampler.stop()
    assert window.sample_count >= 3 and 1.0 < window.mean_power_w <= 2.0 + 1e-9


def test_detect_meter_none_auto_and_unknown(tmp_path):
    meter, reason = detect_meter(EnergyConfig(meter="none"))
    assert meter is None and "disabled" in reason
    meter, reason = detect_meter(EnergyConfig(meter="auto", root=tmp_path, vcgencmd=str(tmp_path / "no")))
    assert meter is None and "jetson" in reason and "rpi5" in reason and "rapl" in reason
    meter, reason = detect_meter(EnergyConfig(meter="watts-up"))
    assert meter is None and "unknown energy meter" in reason
    rapl_tree(tmp_path, 0)
    meter, _ = detect_meter(EnergyConfig(meter="auto", root=tmp_path, vcgencmd=str(tmp_path / "no")))
    assert meter.name.startswith("rapl:")
