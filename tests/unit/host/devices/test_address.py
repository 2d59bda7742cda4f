"""Device address parsing: every accepted form and clear errors for the rest."""

from __future__ import annotations

import pytest

from host.devices.address import DeviceAddress, parse_device
from host.errors import ConfigError
from host.fleet.file import parse_fleet


@pytest.mark.parametrize(
    "text,expected",
    [
        ("local", DeviceAddress("local")),
        ("  local ", DeviceAddress("local")),
        ("pi@10.0.0.5", DeviceAddress("ssh", "10.0.0.5", None, "pi")),
        ("pi@raspberrypi.local:2222", DeviceAddress("ssh", "raspberrypi.local", 2222, "pi")),
        ("root@[::1]:2200", DeviceAddress("ssh", "::1", 2200, "root")),
        ("ssh://jetson-nano", DeviceAddress("ssh", "jetson-nano", None, None)),
        ("ssh://ubuntu@jetson:22", DeviceAddress("ssh", "jetson", 22, "ubuntu")),
        ("grpc://127.0.0.1:50051", DeviceAddress("grpc", "127.0.0.1", 50051)),
        ("grpc://board", DeviceAddress("grpc", "board", 50051)),
        ("GRPCS://10.0.0.7:6000", DeviceAddress("grpcs", "10.0.0.7", 6000)),
        ("grpcs://[fe80::1]:7000", DeviceAddress("grpcs", "fe80::1", 7000)),
    ],
)
def test_valid_addresses(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize(
    "address,text",
    [
        (DeviceAddress("ssh", "10.0.0.5", None, "pi"), "pi@10.0.0.5"),
        (DeviceAddress("ssh", "h", 2222, "pi"), "pi@h:2222"),
        (DeviceAddress("ssh", "alias"), "ssh://alias"),
        (DeviceAddress("grpcs", "::1", 1), "grpcs://[::1]:1"),
        (DeviceAddress("local"), "local"),
    ],
)
def test_str_round_trips(address, text):
    assert str(address) == text
    assert parse_device(text) == address


@pytest.mark.parametrize(
    "text,why",
    [
        ("", "empty"),
        ("raspberrypi", "need a user"),
        ("@host", "user before '@' is empty"),
        ("pi@", "host is empty"),
        ("pi@host:0", "port"),
        ("pi@host:70000", "port"),
        ("pi@host:abc", "port"),
        ("pi@bad_host!", "not a valid host"),
        ("pi@300.1.1.1", "not a valid host"),
        ("grpc://host:1/path", "without a path"),
        ("grpc://u@host:1", "take no user"),
        ("http://host:80", "unknown scheme"),
        ("grpc://::1:50051", "brackets"),
        ("grpc://[::1:50051", "unclosed"),
        ("grpc://[nothex]:1", "not an IPv6"),
        ("bad user@host", "not a valid user"),
    ],
)
def test_invalid_addresses_say_why_and_show_examples(text, why):
    with pytest.raises(ConfigError) as err:
        parse_device(text)
    assert why in err.value.message
    assert "pi@10.0.0.5" in err.value.hint and "grpcs://" in err.value.hint


def test_fleet_names_resolve_before_addresses(tmp_path):
    fleet = parse_fleet(
        '[[device]]\nname = "pi5-a"\naddress = "pi@10.0.0.5:2222"\ntags = ["pi5"]\n', tmp_path / "f.toml"
    )
    address = parse_device("pi5-a", fleet)
    assert (address.kind, address.user, address.host, address.port) == ("ssh", "pi", "10.0.0.5", 2222)
    assert address.label == "pi5-a"
    with pytest.raises(ConfigError) as err:
        parse_device("pi5-b", fleet)
    assert "pi5-a" in err.value.message and "f.toml" in err.value.message


def test_target_only_for_direct_addresses():
    assert parse_device("grpc://[::1]:5").target == "[::1]:5"
    with pytest.raises(ValueError):
        _ = parse_device("pi@h").target
