from pathlib import Path

from device_agent import sysinfo


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_reads_a_board_tree(tmp_path):
    write(tmp_path, "proc/cpuinfo", "processor : 0\nModel : Raspberry Pi 5 Model B Rev 1.0\n")
    write(tmp_path, "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    write(tmp_path, "etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    for cpu, khz in enumerate([2400000, 1500000]):
        write(tmp_path, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", f"{khz}\n")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_min_freq", "1500000\n")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "2400000\n")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "performance\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "51350\n")
    plat = sysinfo.platform_info(tmp_path)
    assert plat.board == "Raspberry Pi 5 Model B Rev 1.0" and plat.cpu_model.startswith("Raspberry Pi 5")
    assert "Debian GNU/Linux 12" in plat.os
    assert sysinfo.governor(tmp_path) == "performance"
    assert sysinfo.cpu_frequencies(tmp_path) == ([2400.0, 1500.0], 1500.0, 2400.0)
    assert sysinfo.temperatures(tmp_path) == {"cpu-thermal": 51.35}


def test_hwmon_temperatures_when_no_thermal_zone(tmp_path):
    write(tmp_path, "sys/class/hwmon/hwmon1/name", "k10temp\n")
    write(tmp_path, "sys/class/hwmon/hwmon1/temp1_input", "45125\n")
    write(tmp_path, "sys/class/hwmon/hwmon1/temp1_label", "Tctl\n")
    assert sysinfo.temperatures(tmp_path) == {"k10temp:Tctl": 45.125}


def test_throttle_counters(tmp_path):
    assert sysinfo.throttle_count(tmp_path) is None
    write(tmp_path, "sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count", "3\n")
    write(tmp_path, "sys/devices/system/cpu/cpu1/thermal_throttle/package_throttle_count", "4\n")
    assert sysinfo.throttle_count(tmp_path) == 7


def test_empty_tree_means_unknown_not_invented(tmp_path):
    assert sysinfo.governor(tmp_path) == ""
    assert sysinfo.cpu_frequencies(tmp_path) == ([], 0.0, 0.0)
    assert sysinfo.temperatures(tmp_path) == {}


def test_fingerprint_is_stable_and_sensitive():
    plat = sysinfo.Platform("a", "aarch64", "Linux", "Pi 5", "Cortex-A76", 4)
    same = sysinfo.Platform("b", "aarch64", "Linux", "Pi 5", "Cortex-A76", 4)  # hostname does not matter
    fp = sysinfo.fingerprint(plat, {"litert": "2.3.0"}, "0.1.0")
    assert fp == sysinfo.fingerprint(same, {"litert": "2.3.0"}, "0.1.0") and len(fp) == 16
    assert fp != sysinfo.fingerprint(plat, {"litert": "2.4.0"}, "0.1.0")


def test_pi_throttle_flags_from_the_configured_command(tmp_path):
    script = tmp_path / "vcgencmd"
    script.write_text('#!/bin/sh\n[ "$1" = get_throttled ] && echo "throttled=$(cat ' + str(tmp_path / "flags") + ')"\n')
    script.chmod(0o755)
    (tmp_path / "flags").write_text("0x0")
    assert sysinfo.pi_throttled_flags([str(script)]) == 0
    (tmp_path / "flags").write_text("0x50005")
    assert sysinfo.pi_throttled_flags([str(script)]) == 0x50005
    assert sysinfo.pi_throttled_flags([str(tmp_path / "missing")]) is None


def test_pi_throttle_description():
    assert sysinfo.describe_pi_throttling(0, 0) == ""
    assert sysinfo.describe_pi_throttling(None, None) == ""
    now = sysinfo.describe_pi_throttling(0, 0x4)
    assert "throttled" in now
    sticky = sysinfo.describe_pi_throttling(0x0, 0x80000)  # soft temperature limit occurred meanwhile
    assert "soft temperature limit occurred" in sticky
    assert sysinfo.describe_pi_throttling(0x80000, 0x80000) == ""  # happened before the window: not ours
