"""SSH sessions to boards with paramiko, behaving like OpenSSH where users expect it to.

Honours ``~/.ssh/config`` (HostName, User, Port, IdentityFile, UserKnownHostsFile, ProxyCommand), keys in
``~/.ssh`` and the ssh-agent, and known_hosts. An unknown host key is refused with the command that trusts
it, unless the caller explicitly accepts new keys (then it is saved to known_hosts, like
``StrictHostKeyChecking=accept-new``). A changed host key is always refused.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

from host.devices.address import DeviceAddress
from host.errors import DeviceAuthError, DeviceUnreachableError, MissingDependencyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SSHOptions:
    """How to open SSH sessions. ``None`` paths mean the OpenSSH defaults under ``~/.ssh``."""

    config_path: Path | None = None
    known_hosts: Path | None = None
    identity_file: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: float = 10.0
    allow_agent: bool = True
    look_for_keys: bool = True


@dataclass(frozen=True)
class SSHTarget:
    """An SSH address resolved through ``~/.ssh/config``."""

    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts: Path
    proxy_command: str | None
    proxy_jump: str | None = None  # first hop of ProxyJump, e.g. "me@bastion:22"

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts spells it (``[host]:port`` for ports other than 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def ssh_command(self) -> str:
        """The OpenSSH command reaching the same target, for hints."""
        port = f" -p {self.port}" if self.port != 22 else ""
        return f"ssh{port} {self.user}@{self.hostname}"

    def keyscan_command(self) -> str:
        """The command that adds this host's key to known_hosts."""
        port = f"-p {self.port} " if self.port != 22 else ""
        return f"ssh-keyscan {port}{self.hostname} >> {shlex.quote(str(self.known_hosts))}"


def _paramiko():
    try:
        import paramiko
    except ImportError as exc:  # the agent-only install has no paramiko
        raise MissingDependencyError("paramiko", "host", "reaching a device over SSH") from exc
    return paramiko


def resolve_target(address: DeviceAddress, options: SSHOptions) -> SSHTarget:
    """Apply ``~/.ssh/config`` to an SSH address; explicit user/port in the address win."""
    paramiko = _paramiko()
    config_path = options.config_path or Path.home() / ".ssh" / "config"
    entry: dict = {}
    if config_path.is_file():
        entry = paramiko.SSHConfig.from_path(str(config_path)).lookup(address.host)
    known = options.known_hosts
    if known is None:
        files = entry.get("userknownhostsfile")
        first = files.split()[0] if isinstance(files, str) else (files or [None])[0]
        known = Path(first).expanduser() if first else Path.home() / ".ssh" / "known_hosts"
    identities = (str(options.identity_file),) if options.identity_file else tuple(entry.get("identityfile", ()))
    return SSHTarget(
        hostname=entry.get("hostname", address.host),
        port=address.port or int(entry.get("port", 22)),
        user=address.user or entry.get("user") or _local_user(),
        identity_files=identities,
        known_hosts=known,
        proxy_command=entry.get("proxycommand"),
        proxy_jump=_first_jump(entry.get("proxyjump")),
    )


def _first_jump(value: str | None) -> str | None:
    """The first hop of a ProxyJump value; later hops are the first hop's own business (its ssh config)."""
    if not value or value.lower() == "none":
        return None
    return value.split(",")[0].strip().removeprefix("ssh://")


def _local_user() -> str:
    import getpass

    return getpass.getuser()


class _UnknownHostKey(Exception):
    def __init__(self, key) -> None:
        super().__init__("unknown host key")
        self.key = key


def _host_key_policy(accept_new: bool, known_hosts: Path):
    paramiko = _paramiko()

    class Policy(paramiko.MissingHostKeyPolicy):
        """Refuse unknown keys, or accept and save them when the user asked for it."""

        def missing_host_key(self, client, hostname, key):
            if not accept_new:
                raise _UnknownHostKey(key)
            log.warning("trusting new host key of %s (%s %s)", hostname, key.get_name(), key.fingerprint)
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with known_hosts.open("a") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


def open_ssh(address: DeviceAddress, options: SSHOptions):
    """Open an authenticated ``paramiko.SSHClient`` to ``address``; map every failure to a DeviceError."""
    paramiko = _paramiko()
    target = resolve_target(address, options)
    client = paramiko.SSHClient()
    if target.known_hosts.is_file():
        client.load_host_keys(str(target.known_hosts))
    client.set_missing_host_key_policy(_host_key_policy(options.accept_new_host_key, target.known_hosts))
    sock, jump = None, None
    if target.proxy_jump:
        # ProxyJump: reach the board through a bastion; the board's SSH runs inside a channel of the jump's.
        from host.devices.address import parse_device

        jump_text = target.proxy_jump if "@" in target.proxy_jump else f"ssh://{target.proxy_jump}"
        jump = open_ssh(parse_device(jump_text), options)
        try:
            sock = jump.get_transport().open_channel(
                "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), timeout=options.connect_timeout
            )
        except Exception as exc:
            jump.close()
            raise DeviceUnreachableError(
                f"the jump host {target.proxy_jump} cannot reach {target.hostname}:{target.port}: {exc}",
                hint=f"check the address from the jump host: ssh -J {target.proxy_jump} {target.user}@{target.hostname}",
            ) from None
    elif target.proxy_command:
        sock = paramiko.ProxyCommand(target.proxy_command)
    if jump is not None:
        _close_with(client, jump)  # every close below (and the caller's) also ends the jump connection
    try:
        client.connect(
            target.hostname,
            port=target.port,
            username=target.user,
            key_filename=[str(Path(p).expanduser()) for p in target.identity_files] or None,
            allow_agent=options.allow_agent,
            look_for_keys=options.look_for_keys and not options.identity_file,
            timeout=options.connect_timeout,
            banner_timeout=options.connect_timeout,
            auth_timeout=options.connect_timeout,
            sock=sock,
        )
    except _UnknownHostKey as exc:
        client.close()
        raise DeviceAuthError(
            f"host key of {target.known_hosts_name} is not in {target.known_hosts} "
            f"({exc.key.get_name()} {exc.key.fingerprint}); refusing to connect",
            hint=f"if you trust this board, run: {target.keyscan_command()}   "
            "(or pass --accept-new-host-key once)",
        ) from None
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise DeviceAuthError(
            f"host key of {target.known_hosts_name} CHANGED ({exc.key.get_name()} {exc.key.fingerprint}); "
            "this can be a reinstalled board or an attack",
            hint=f"if you know why it changed: ssh-keygen -f {shlex.quote(str(target.known_hosts))} "
            f"-R '{target.known_hosts_name}'",
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise DeviceAuthError(
            f"SSH login as {target.user}@{target.hostname}:{target.port} was refused: {exc}",
            hint=f"check the user and key with `{target.ssh_command()}`; install your key with "
            f"`ssh-copy-id -p {target.port} {target.user}@{target.hostname}` or pass --identity KEY",
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        client.close()
        raise DeviceUnreachableError(
            f"cannot reach {target.hostname}:{target.port} over SSH: {exc or type(exc).__name__}",
            hint=f"check that the board is on and sshd runs: `{target.ssh_command()}`",
        ) from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)  # notice dead links instead of hanging on them
    log.info("SSH connected to %s@%s:%d", target.user, target.hostname, target.port)
    return client


def _close_with(client, jump) -> None:
    """Make ``client.close()`` also close the jump host's connection under it."""
    original = client.close

    def close() -> None:
        original()
        jump.close()

    client.close = close


@dataclass(frozen=True)
class CommandResult:
    """Exit status and output of one command run on the board."""

    exit_status: int
    stdout: str
    stderr: str


def run_command(client, command: str, timeout: float = 60.0, stdin_data: bytes | None = None) -> CommandResult:
    """Run ``command`` through the board's login shell and wait for it (at most ``timeout`` seconds)."""
    try:
        stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
        if stdin_data is not None:
            stdin.write(stdin_data)
        stdin.channel.shutdown_write()
        out = stdout.read().decode("utf-8", "replace")
        err = stderr.read().decode("utf-8", "replace")
        status = stdout.channel.recv_exit_status()
    except TimeoutError as exc:
        raise DeviceUnreachableError(
            f"command on the board did not finish within {timeout:.0f}s: {command}",
            hint="check the board's load and network",
        ) from exc
    except (OSError, EOFError, _paramiko().SSHException) as exc:
        raise DeviceUnreachableError(f"SSH connection lost while running {command!r}: {exc}") from exc
    return CommandResult(status, out, err)
