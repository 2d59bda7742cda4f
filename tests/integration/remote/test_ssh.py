"""SSH sessions, host-key checking and the port-forwarding tunnel against a real OpenSSH server."""

from __future__ import annotations

import socket
import threading

import pytest

from host.devices.address import parse_device
from host.devices.ssh import SSHOptions, open_ssh, run_command
from host.devices.tunnel import Tunnel
from host.errors import DeviceAuthError, DeviceUnreachableError
from tests.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]


def _options(sshd, **kw) -> SSHOptions:
    base = dict(config_path=sshd.config, known_hosts=sshd.known_hosts, identity_file=sshd.key,
                allow_agent=False, look_for_keys=False, connect_timeout=10)
    base.update(kw)
    return SSHOptions(**base)


@pytest.fixture()
def echo_server():
    """A TCP server on the loopback that upper-cases what it receives (the 'agent' behind the tunnel)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def test_command_runs_on_the_board(sshd):
    client = open_ssh(parse_device(sshd.address), _options(sshd))
    try:
        result = run_command(client, "echo hello; echo oops >&2; exit 3")
    finally:
        client.close()
    assert (result.exit_status, result.stdout, result.stderr) == (3, "hello\n", "oops\n")


def test_tunnel_forwards_many_connections_and_big_payloads(sshd, echo_server):
    client = open_ssh(parse_device(sshd.address), _options(sshd))
    tunnel = Tunnel(client.get_transport(), "127.0.0.1", echo_server)
    try:
        payload = bytes(range(97, 123)) * 40000  # ~1 MB, several SSH window sizes
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=10) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                received = b"".join(iter(lambda: s.recv(65536), b""))
            assert received == payload.upper()
        assert tunnel.alive
    finally:
        tunnel.close()
        client.close()
    assert not tunnel.alive
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=2)


def test_tunnel_reports_a_dead_transport(sshd, echo_server):
    client = open_ssh(parse_device(sshd.address), _options(sshd))
    tunnel = Tunnel(client.get_transport(), "127.0.0.1", echo_server)
    client.close()  # the SSH link drops under the tunnel
    with pytest.raises(DeviceUnreachableError):
        tunnel.check()
    tunnel.close()


def test_wrong_key_is_refused(sshd):
    with pytest.raises(DeviceAuthError) as err:
        open_ssh(parse_device(sshd.address), _options(sshd, identity_file=sshd.other_key))
    assert "refused" in err.value.message
    assert "ssh-copy-id" in err.value.hint


def test_wrong_user_is_refused(sshd):
    address = parse_device(f"nosuchuser@{sshd.host}:{sshd.port}")
    with pytest.raises(DeviceAuthError):
        open_ssh(address, _options(sshd))


def test_unknown_host_key_is_refused_with_the_command_to_trust_it(sshd):
    with pytest.raises(DeviceAuthError) as err:
        open_ssh(parse_device(sshd.address), _options(sshd, known_hosts=sshd.empty_known_hosts))
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> " in err.value.hint
    assert "--accept-new-host-key" in err.value.hint
    assert sshd.empty_known_hosts.read_text() == ""


def test_accept_new_host_key_saves_it(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    client = open_ssh(parse_device(sshd.address), _options(sshd, known_hosts=known, accept_new_host_key=True))
    client.close()
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    # Now known: a strict second connection succeeds without the flag.
    open_ssh(parse_device(sshd.address), _options(sshd, known_hosts=known)).close()


def test_changed_host_key_is_refused(sshd, tmp_path):
    other = (sshd.other_key.parent / "other_key.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(DeviceAuthError) as err:
        open_ssh(parse_device(sshd.address), _options(sshd, known_hosts=known, accept_new_host_key=True))
    assert "CHANGED" in err.value.message
    assert "ssh-keygen" in err.value.hint


def test_ssh_config_alias_is_honoured(sshd, tmp_path):
    config = tmp_path / "config"
    config.write_text(f"Host myboard\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
                      f"  IdentityFile {sshd.key}\n")
    client = open_ssh(parse_device("ssh://myboard"), _options(sshd, config_path=config, identity_file=None))
    try:
        assert run_command(client, "echo ok").stdout == "ok\n"
    finally:
        client.close()


def test_closed_port_is_unreachable(sshd):
    with pytest.raises(DeviceUnreachableError) as err:
        open_ssh(parse_device(f"root@127.0.0.1:{free_port()}"), _options(sshd, connect_timeout=3))
    assert "ssh -p" in err.value.hint


def test_proxy_jump_from_ssh_config(sshd, tmp_path, echo_server):
    """A board behind a bastion: ProxyJump in ~/.ssh/config (here the bastion is the same sshd)."""
    config = tmp_path / "config"
    config.write_text(
        f"Host board-behind-nat\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  ProxyJump {sshd.user}@127.0.0.1:{sshd.port}\n"
    )
    logins_before = sshd.log.read_text().count("Accepted publickey")
    client = open_ssh(parse_device("ssh://board-behind-nat"), _options(sshd, config_path=config))
    tunnel = Tunnel(client.get_transport(), "127.0.0.1", echo_server)
    try:
        assert run_command(client, "echo $SSH_CONNECTION").stdout.startswith("127.0.0.1 ")
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=10) as s:
            s.sendall(b"through two hops")
            s.shutdown(socket.SHUT_WR)
            assert b"".join(iter(lambda: s.recv(1024), b"")) == b"THROUGH TWO HOPS"
    finally:
        tunnel.close()
        client.close()
    # Two logins: the jump host's and, through it, the board's.
    assert sshd.log.read_text().count("Accepted publickey") - logins_before == 2
