import subprocess

import pytest

from device_agent import __version__


@pytest.mark.parametrize("script", ["sculpt-host", "sculpt-agent"])
def test_console_script_help_and_version(venv_bin, script):
    help_out = subprocess.run([venv_bin / script, "--help"], capture_output=True, text=True, check=True)
    assert f"usage: {script}" in help_out.stdout
    version_out = subprocess.run([venv_bin / script, "--version"], capture_output=True, text=True, check=True)
    assert version_out.stdout.strip() == f"{script} {__version__}"


def test_unknown_subcommand_is_an_error(venv_bin):
    proc = subprocess.run([venv_bin / "sculpt-host", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
