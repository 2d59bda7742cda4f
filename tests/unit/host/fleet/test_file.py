"""Fleet files: valid files load; every error names the file and the right line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from host.errors import ConfigError
from host.fleet.file import load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[4]


def _err(text: str, tmp_path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_fleet(textwrap.dedent(text), tmp_path / "fleet.toml")
    return err.value


def test_example_fleet_file_loads():
    fleet = load_fleet(REPO / "deploy" / "fleet.example.toml")
    assert len(fleet.devices) >= 3
    kinds = {d.address.kind for d in fleet.devices}
    assert {"ssh", "grpcs"} <= kinds
    for device in fleet.devices:
        assert device.address.label == device.name
        assert device.line > 0


def test_defaults_apply_and_devices_override(tmp_path):
    fleet = parse_fleet(
        textwrap.dedent(
            """\
            [defaults]
            runtime = "executorch"
            threads = 2
            tags = ["lab"]

            [[device]]
            name = "a"
            address = "pi@10.0.0.5"

            [[device]]
            name = "b"
            address = "grpcs://10.0.0.6:50051"
            runtime = "litert"
            threads = 4
            tags = ["lab", "jetson"]
            token_file = "tokens/b.token"
            ca_cert = "/etc/ca.pem"
            """
        ),
        tmp_path / "fleet.toml",
    )
    a, b = fleet.devices
    assert (a.runtime, a.threads, a.tags, a.line) == ("executorch", 2, ("lab",), 6)
    assert (b.runtime, b.threads, b.tags, b.line) == ("litert", 4, ("lab", "jetson"), 10)
    assert b.token_file == tmp_path / "tokens" / "b.token"  # relative to the fleet file
    assert str(b.ca_cert) == "/etc/ca.pem"
    assert [d.name for d in fleet.select(["jetson"])] == ["b"]
    assert [d.name for d in fleet.select(["lab"], ["a"])] == ["a"]
    with pytest.raises(ConfigError) as err:
        fleet.select(["pi4"])
    assert "jetson, lab" in err.value.hint


def test_toml_syntax_error_has_the_line(tmp_path):
    err = _err('[[device]]\nname = "a"\naddress = pi@host\n', tmp_path)
    assert err.message.startswith(f"{tmp_path / 'fleet.toml'}:3:")


@pytest.mark.parametrize(
    "text,line,words",
    [
        ('[[device]]\nname = "a"\n', 1, "no 'address'"),
        ('[[device]]\nname = "a"\naddress = "pi@h"\n\n[[device]]\nname = "b"\naddress = "nouser"\n', 7, "need a user"),
        ('[[device]]\nname = "a"\naddress = "pi@h"\nthreads = 0\n', 4, "positive integer"),
        ('[[device]]\nname = "a"\naddress = "pi@h"\n# c\nruntime = "tvm"\n', 5, "unknown runtime 'tvm'"),
        ('[[device]]\nname = "a"\naddress = "pi@h"\ncolour = "red"\n', 4, "unknown key 'colour'"),
        ('[[device]]\nname = "a"\naddress = "pi@h"\n[[device]]\nname = "a"\naddress = "pi@k"\n', 5, "duplicate device name 'a' (first defined on line 1)"),
        ('[[device]]\nname = "a b"\naddress = "pi@h"\n', 2, "bad device name"),
        ('[[device]]\nname = "a"\naddress = "pi@h"\ntags = "lab"\n', 4, "list of non-empty strings"),
        ('[[device]]\nname = "a"\naddress = "grpcs://h:1"\n', 3, "need token_file"),
        ('[defaults]\nthreads = 1\nspeed = 3\n[[device]]\nname = "a"\naddress = "pi@h"\n', 3, "unknown key 'speed' in [defaults]"),
        ('[defaults]\nruntime = "onnx"\n[[device]]\nname = "a"\naddress = "pi@h"\n', 2, "unknown runtime"),
        ('[[device]]\nname = 5\naddress = "pi@h"\n', 2, "'name' must be a string"),
        ('[[devices]]\nname = "a"\naddress = "pi@h"\n', 1, "unknown section or key 'devices'"),
        ('[[device]]\nname = "a"\naddress = "pi@h"\n[[device]]\nname = "b"\naddress = "local"\n', 6,
         "device 'b': address 'local' is not allowed in a fleet file"),
    ],
)
def test_semantic_errors_point_at_the_line(tmp_path, text, line, words):
    err = _err(text, tmp_path)
    assert err.message.startswith(f"{tmp_path / 'fleet.toml'}:{line}: "), err.message
    assert words in err.message
    assert err.hint


def test_empty_and_missing_files(tmp_path):
    assert "no devices" in _err("", tmp_path).message
    with pytest.raises(ConfigError) as err:
        load_fleet(tmp_path / "missing.toml")
    assert "cannot read the fleet file" in err.value.message
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[[device]]\nname = "a"\n# Gerät\naddress = "pi@h"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_fleet(latin1)
    assert err.value.message.startswith(f"{latin1}:3: the fleet file is not UTF-8 text (byte 0xe4 at column 6)")
