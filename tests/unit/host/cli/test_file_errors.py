"""Files given on the command line that are not UTF-8 get an error naming the file, not a traceback."""

from __future__ import annotations

import pytest

from host.cli.main import main

LATIN1 = "# Fleet für das Labor\n".encode("latin-1")  # 0xfc: a typical file saved by a latin-1 editor


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "m.pte"
    path.write_bytes(b"not run: the fleet file is refused first")
    return path


def test_fleet_bench_with_a_non_utf8_fleet_file(tmp_path, capsys, artifact):
    fleet = tmp_path / "fleet.toml"
    fleet.write_bytes(b'[[device]]\nname = "pi"\n' + LATIN1 + b'address = "pi@10.0.0.5"\n')
    code = main(["fleet", "bench", "--fleet", str(fleet), str(artifact), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {fleet}:3: the fleet file is not UTF-8 text (byte 0xfc")
    assert "hint: save it as UTF-8" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_fleet_bench_refuses_a_local_address_naming_the_entry(tmp_path, capsys, artifact):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[device]]\nname = "pi"\naddress = "pi@10.0.0.5"\n\n[[device]]\nname = "here"\n'
                     'address = "local"\n', encoding="utf-8")
    code = main(["fleet", "bench", "--fleet", str(fleet), str(artifact), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{fleet}:7: device 'here': address 'local' is not allowed in a fleet file" in err
    assert "--device local" in err


def test_export_with_a_non_utf8_plan_file(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_bytes(b'{"schema_version": 1,\n "layers": {"conv1": {"family": "kernel", "pattern": "row1"}}}\n'
                     + LATIN1)
    code = main(["export", "--model", "resnet20", "--plan", str(plan), "--out", str(tmp_path / "m.pte"),
                 "--json"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: plan file {plan} is not UTF-8 text (byte 0xfc on line 3)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.pte").exists()


def test_export_with_a_plan_file_that_is_not_json_names_the_file(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text("layers: {}\n", encoding="utf-8")
    assert main(["export", "--model", "resnet20", "--plan", str(plan), "--out", str(tmp_path / "m.pte")]) == 2
    assert f"error: plan file {plan}: plan is not valid JSON" in capsys.readouterr().err
