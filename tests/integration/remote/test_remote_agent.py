"""The agent on an SSH board: bootstrap, tunnel, benchmark, reconnect, clear errors, and the CLI.

The "board" is this machine behind a real OpenSSH server on 127.0.0.1; the agent it runs is this checkout's
``sculpt-agent`` (the install test builds and installs a fresh one through ``devices install``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host.devices.address import parse_device
from host.devices.bootstrap import AgentLaunch, AgentNotInstalledError
from host.devices.connect import ConnectOptions, connect
from host.devices.results import BenchPolicy, BenchSpec
from host.devices.retry import RetryPolicy
from host.devices.ssh import SSHOptions
from host.errors import DeviceAuthError

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

QUICK = BenchSpec(policy=BenchPolicy(warmup_runs=2, warmup_seconds=0.0, min_runs=10, min_seconds=0.05))


def _stop(state_dir) -> None:
    pid_file = state_dir / "agent.pid"
    if pid_file.exists():
        subprocess.run(["kill", pid_file.read_text().strip()], check=False, capture_output=True)


def agents_using(marker: str) -> list[int]:
    """PIDs of `sculpt-agent serve` processes whose command line contains ``marker`` (our store path)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "serve" in cmdline and "sculpt-agent" in cmdline and marker in cmdline:
                pids.append(int(entry))
    return pids


@pytest.fixture()
def board(sshd, venv_bin, tmp_path):
    """Connection options for the sshd 'board' running this checkout's agent; stops the agent afterwards."""
    state = tmp_path / "agent-state"
    options = ConnectOptions(
        ssh=SSHOptions(config_path=sshd.config, known_hosts=sshd.known_hosts, identity_file=sshd.key,
                       allow_agent=False, look_for_keys=False),
        agent=AgentLaunch(command=str(venv_bin / "sculpt-agent"), state_dir=str(state),
                          extra_args=("--store", str(tmp_path / "store"))),
        retry=RetryPolicy(attempts=4, base_delay=0.2),
    )
    yield parse_device(sshd.address), options
    _stop(state)
    for pid in agents_using(str(tmp_path / "store")):  # anything that escaped the pid file
        subprocess.run(["kill", str(pid)], check=False, capture_output=True)


def _cli(venv_bin, sshd, *args, state=None, timeout=300):
    cmd = [str(venv_bin / "sculpt-host"), *args, "--ssh-config", str(sshd.config), "--identity", str(sshd.key)]
    if state is not None:
        cmd += ["--agent-state-dir", str(state)]
    if "--known-hosts" not in args:
        cmd += ["--known-hosts", str(sshd.known_hosts)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.executorch
@pytest.mark.slow
def test_benchmark_tiny_pte_through_the_tunnel_and_reconnect(board, tiny_pte):
    address, options = board
    with connect(address, options) as handle:
        assert handle.info.protocol_version == 1
        first = handle.benchmark_file(tiny_pte, QUICK)
        assert first.runtime == "executorch" and first.stats.count >= 10 and first.stats.p50_ms > 0
        # The SSH connection drops under the tunnel: the next call reconnects on its own.
        handle._endpoint._ssh.close()
        second = handle.benchmark_file(tiny_pte, QUICK)
        assert second.stats.count >= 10 and handle.reconnects >= 1
        assert second.output_sha256 == first.output_sha256  # same input seed, same program, same output


@pytest.mark.litert
def test_agent_that_died_on_the_board_is_restarted(board, tiny_tflite):
    address, options = board
    with connect(address, options) as handle:
        first = handle.benchmark_file(tiny_tflite, QUICK)
        assert handle.stop_remote_agent() is True  # the agent dies on the board
        again = handle.benchmark_file(tiny_tflite, QUICK)  # reconnect; the bootstrap starts a new agent
        assert handle._endpoint.remote.started and handle._endpoint.remote.how == "detached"
        assert again.output_sha256 == first.output_sha256


def test_agent_left_running_is_reused(board):
    address, options = board
    with connect(address, options) as handle:
        port = handle._endpoint.remote.port
        assert handle._endpoint.remote.started
    with connect(address, options) as handle:
        assert handle._endpoint.remote.port == port and not handle._endpoint.remote.started
        assert handle.health()


def test_concurrent_connects_start_one_agent(board):
    from concurrent.futures import ThreadPoolExecutor

    address, options = board

    def port_of(_):
        with connect(address, options) as handle:
            return handle._endpoint.remote.port

    with ThreadPoolExecutor(max_workers=3) as ex:
        ports = list(ex.map(port_of, range(3)))
    assert len(set(ports)) == 1, ports
    store = next(a for a in options.agent.extra_args if a.endswith("store"))
    assert len(agents_using(store)) == 1


def test_wrong_key_is_refused_with_device_auth_error(board, sshd):
    address, options = board
    import dataclasses

    bad = dataclasses.replace(options, ssh=dataclasses.replace(options.ssh, identity_file=sshd.other_key))
    with pytest.raises(DeviceAuthError) as err:
        connect(address, bad)
    assert "refused" in str(err.value)


def test_agent_not_installed_says_how_to_install(board, tmp_path):
    address, options = board
    import dataclasses

    missing = dataclasses.replace(options, agent=dataclasses.replace(options.agent, command=str(tmp_path / "nope")))
    with pytest.raises(AgentNotInstalledError) as err:
        connect(address, missing)
    assert f"sculpt-host devices install {address}" in err.value.hint


def test_cli_info_ping_and_refusals(sshd, venv_bin, tmp_path):
    state = tmp_path / "state"
    agent = ["--agent-command", str(venv_bin / "sculpt-agent"), "--agent-arg=--store", f"--agent-arg={tmp_path / 's'}"]
    try:
        info = _cli(venv_bin, sshd, "devices", "info", sshd.address, "--json", *agent, state=state)
        assert info.returncode == 0, info.stderr
        data = json.loads(info.stdout)
        assert data["info"]["protocol_version"] == 1 and data["info"]["fingerprint"]
        assert {r["name"] for r in data["info"]["runtimes"]} >= {"executorch", "litert"}
        ping = _cli(venv_bin, sshd, "devices", "ping", sshd.address, "-c", "3", "--json", *agent, state=state)
        assert ping.returncode == 0, ping.stderr
        assert json.loads(ping.stdout)["healthy"] is True and len(json.loads(ping.stdout)["rtt_ms"]) == 3
        text = _cli(venv_bin, sshd, "devices", "info", sshd.address, *agent, state=state)
        assert "fingerprint    " + data["info"]["fingerprint"] in text.stdout
    finally:
        _stop(state)
    unknown = _cli(venv_bin, sshd, "devices", "ping", sshd.address, "--known-hosts", str(sshd.empty_known_hosts))
    assert unknown.returncode == 3
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >>" in unknown.stderr
    wrong = subprocess.run(
        [str(venv_bin / "sculpt-host"), "devices", "ping", sshd.address, "--identity", str(sshd.other_key),
         "--ssh-config", str(sshd.config), "--known-hosts", str(sshd.known_hosts)],
        capture_output=True, text=True, timeout=60,
    )
    assert wrong.returncode == 3 and "refused" in wrong.stderr


@pytest.mark.litert
@pytest.mark.slow
def test_devices_install_from_this_checkout_then_benchmark(sshd, venv_bin, tmp_path, tiny_tflite):
    """The real install: wheel of this checkout -> SFTP -> venv -> pip install [agent,litert] -> GetInfo.

    Dependencies come from the board's package index (here: this machine's pip configuration); ~15 s here.
    """
    state, venv = tmp_path / "state", tmp_path / "board-venv"
    args = ["--agent-arg=--store", f"--agent-arg={tmp_path / 'store'}"]
    try:
        proc = _cli(venv_bin, sshd, "devices", "install", sshd.address, "--runtime", "litert", "--venv", str(venv),
                    "--python", _base_python(), "--json",
                    *args, state=state, timeout=900)
        if proc.returncode != 0 and "pip install on the board failed" in proc.stderr and "No matching" in proc.stderr:
            pytest.skip(f"no package index reachable for the board's pip: {proc.stderr[-300:]}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        assert report["agent_command"] == f"{venv}/bin/sculpt-agent"
        litert = next(r for r in report["info"]["runtimes"] if r["name"] == "litert")
        assert litert["available"], litert
        # The installed agent (not the checkout's) is the one answering, and it benchmarks.
        assert (venv / "bin" / "sculpt-agent").exists()
        options = ConnectOptions(
            ssh=SSHOptions(config_path=sshd.config, known_hosts=sshd.known_hosts, identity_file=sshd.key,
                           allow_agent=False, look_for_keys=False),
            agent=AgentLaunch(command=str(venv / "bin" / "sculpt-agent"), state_dir=str(state)),
        )
        with connect(parse_device(sshd.address), options) as handle:
            assert not handle._endpoint.remote.started  # the one install started is reused
            result = handle.benchmark_file(tiny_tflite, QUICK)
        assert result.runtime == "litert" and result.stats.count >= 10
        pid = int((state / "agent.pid").read_text())
        exe = subprocess.run(["cat", f"/proc/{pid}/cmdline"], capture_output=True).stdout.replace(b"\0", b" ")
        assert str(venv).encode() in exe
    finally:
        _stop(state)


def _base_python() -> str:
    """The interpreter this venv was made from: what a board's python3 would be."""
    return getattr(sys, "_base_executable", None) or "python3"


@pytest.fixture()
def full_disk(tmp_path):
    """A 1 MiB tmpfs filled to the last byte: the board's disk is full."""
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=64k"], capture_output=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_on_the_board_gives_clear_errors(board, full_disk):
    import dataclasses

    from host.devices.bootstrap import AgentStartError
    from host.devices.install import InstallError, InstallOptions, install_agent

    address, options = board
    # Starting the agent: its state directory lives on the full disk.
    no_room = dataclasses.replace(options, agent=dataclasses.replace(options.agent, state_dir=str(full_disk / "st")))
    with pytest.raises(AgentStartError) as err:
        connect(address, dataclasses.replace(no_room, retry=RetryPolicy(attempts=1)))
    assert "free disk space" in err.value.hint
    # Installing: the pre-flight check refuses before copying anything.
    with pytest.raises(InstallError) as err:
        install_agent(address, options, InstallOptions(venv=str(full_disk / "venv"), python=_base_python()))
    assert "MB free on the board" in err.value.message and "free disk space" in err.value.hint
