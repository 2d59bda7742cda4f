"""``sculpt-host devices install user@host``: put the agent of this checkout on a board over SSH.

Builds a wheel of this checkout, copies it with SFTP, creates a virtualenv on the board, installs
``autosculpt[agent,<runtime>]`` from that wheel (its dependencies come from the board's package index),
optionally installs a user systemd unit, then starts the agent and verifies it with GetInfo.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from host.devices.address import DeviceAddress
from host.devices.bootstrap import DEFAULT_VENV, SYSTEMD_PORT, SYSTEMD_UNIT, sh_path, stop_agent
from host.devices.connect import ConnectOptions, connect
from host.devices.ssh import open_ssh, run_command
from host.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("host", "device_agent", "patterns", "protos")
RUNTIME_EXTRAS = ("litert", "executorch", "none")


class InstallError(DeviceError):
    """Installing the agent on the board failed (no Python/venv, disk full, pip failure)."""


@dataclass(frozen=True)
class InstallOptions:
    """What to install where on the board."""

    runtime: str = "litert"  # litert | executorch | none
    python: str = "python3"  # interpreter on the board that creates the venv
    venv: str = DEFAULT_VENV
    systemd: bool = False  # also install and start a user systemd unit
    pip_args: tuple[str, ...] = ()  # extra pip arguments, e.g. ("--index-url", "http://mirror/simple")
    min_free_mb: int = 400  # refuse early below this much free space in the venv's filesystem
    pip_timeout: float = 1800.0


@dataclass(frozen=True)
class InstallReport:
    """What was installed, and the DeviceInfo the freshly installed agent answered with."""

    wheel: str
    venv: str
    agent_command: str
    runtime: str
    systemd: bool
    info: object


def build_wheel(out_dir: Path, repo_root: Path = REPO_ROOT) -> Path:
    """Build the wheel of this checkout in a scratch copy (the shared tree gets no build/ litter)."""
    if not (repo_root / "pyproject.toml").is_file():
        raise ConfigError(f"{repo_root} is not an AutoSculpt checkout (no pyproject.toml)",
                          hint="run devices install from a source checkout, or use deploy/install-agent.sh")
    with tempfile.TemporaryDirectory(prefix="sculpt-wheel-src-") as tmp:
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (repo_root / name).is_file():
                shutil.copy2(repo_root / name, src / name)
        for pkg in PACKAGES:
            if (repo_root / pkg).is_dir():
                shutil.copytree(repo_root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir),
             str(src)],
            capture_output=True, text=True, timeout=600,
        )
    if proc.returncode != 0:
        raise InstallError(f"building the wheel failed: {proc.stderr[-2000:]}",
                           hint="pip install setuptools wheel (the build backend) into this environment")
    wheels = sorted(out_dir.glob("autosculpt-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise InstallError(f"pip wheel produced no autosculpt wheel in {out_dir}")
    return wheels[-1]


def _check(result, what: str, hint: str | None = None) -> str:
    if result.exit_status != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        if "No space left on device" in detail:
            raise InstallError(f"{what} failed: the board's disk is full", hint="free space on the board (df -h ~)")
        raise InstallError(f"{what} failed (exit {result.exit_status}): {detail}", hint=hint)
    return result.stdout


def _preflight(ssh, options: InstallOptions) -> None:
    py = shlex.quote(options.python)
    out = _check(
        run_command(ssh, f"{py} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'"),
        f"running {options.python} on the board",
        hint="install Python 3.10+ on the board (sudo apt install python3 python3-venv) or pass --python",
    ).strip()
    major, minor = (int(x) for x in out.splitlines()[-1].split("."))
    if (major, minor) < (3, 10):
        raise InstallError(f"the board's {options.python} is {out}; AutoSculpt needs 3.10+",
                           hint="install a newer Python and pass --python PATH")
    _check(run_command(ssh, f"{py} -c 'import venv, ensurepip'"), "checking the venv module",
           hint="sudo apt install python3-venv   (Debian / Raspberry Pi OS / JetPack)")
    parent = sh_path(options.venv.rsplit("/", 1)[0] or "/")
    free_kb = _check(
        run_command(ssh, f"mkdir -p {parent} && df -Pk {parent} | awk 'NR==2 {{print $4}}'"),
        "checking free disk space",
    ).strip()
    if free_kb.isdigit() and int(free_kb) < options.min_free_mb * 1024:
        raise InstallError(
            f"only {int(free_kb) // 1024} MB free on the board where the venv goes ({options.venv}); "
            f"the agent needs about {options.min_free_mb} MB",
            hint="free disk space on the board (df -h ~), or pass --venv on a bigger filesystem",
        )


def _systemd_unit(agent: str, port: int) -> str:
    return f"""[Unit]
Description=AutoSculpt device agent (loopback only; reached through SSH)
After=network-online.target

[Service]
Environment=PYTHONUNBUFFERED=1
ExecStart={agent} serve --host 127.0.0.1 --port {port}
Restart=on-failure
RestartSec=3

[Install]
WantedBy=default.target
"""


def install_agent(
    address: DeviceAddress,
    connect_options: ConnectOptions,
    options: InstallOptions,
    step: Callable[[str], None] = lambda _msg: None,
) -> InstallReport:
    """Install the agent of this checkout on the SSH board at ``address`` and verify it answers."""
    if address.kind != "ssh":
        raise ConfigError(f"devices install needs an SSH address (user@host), not {address}",
                          hint="e.g. sculpt-host devices install pi@10.0.0.5")
    if options.runtime not in RUNTIME_EXTRAS:
        raise ConfigError(f"unknown runtime {options.runtime!r}", hint=f"use one of {', '.join(RUNTIME_EXTRAS)}")
    with tempfile.TemporaryDirectory(prefix="sculpt-wheel-") as tmp:
        step(f"connecting to {address}")
        ssh = open_ssh(address, connect_options.ssh)
        try:
            step("checking Python, venv and disk space on the board")
            _preflight(ssh, options)
            step("building the wheel of this checkout")
            wheel = build_wheel(Path(tmp))
            remote_dir = ".cache/autosculpt/wheels"  # SFTP paths are relative to the login directory
            _check(run_command(ssh, f"mkdir -p {remote_dir}"), "creating the wheel directory")
            step(f"copying {wheel.name} ({wheel.stat().st_size // 1024} KiB) over SFTP")
            sftp = ssh.open_sftp()
            try:
                sftp.put(str(wheel), f"{remote_dir}/{wheel.name}")
            except OSError as exc:
                raise InstallError(f"copying the wheel to the board failed: {exc}",
                                   hint="check free space on the board (df -h ~)") from None
            finally:
                sftp.close()
            venv = sh_path(options.venv)
            step(f"creating the virtualenv {options.venv}")
            _check(run_command(ssh, f"[ -x {venv}/bin/python ] || {shlex.quote(options.python)} -m venv {venv}",
                               timeout=300), "creating the virtualenv")
            extras = "agent" if options.runtime == "none" else f"agent,{options.runtime}"
            spec = shlex.quote(f"./{remote_dir}/{wheel.name}[{extras}]")
            extra = " ".join(shlex.quote(a) for a in options.pip_args)
            step(f"pip install autosculpt[{extras}] on the board (can take minutes on a Pi)")
            _check(
                run_command(ssh, f"cd ~ && {venv}/bin/python -m pip install --disable-pip-version-check -q "
                                 f"--upgrade --force-reinstall --no-deps {spec} && "
                                 f"{venv}/bin/python -m pip install --disable-pip-version-check -q {spec} {extra}",
                            timeout=options.pip_timeout),
                "pip install on the board",
                hint="check the board's network / package index; pass --pip-arg to use a mirror",
            )
            agent = f"{options.venv}/bin/sculpt-agent"
            # An agent started before runs the old code: stop it so the check below starts the new one.
            stop_agent(ssh, connect_options.agent)
            if options.systemd:
                step(f"installing the user systemd unit {SYSTEMD_UNIT}")
                unit = _systemd_unit(agent.replace("~", "%h", 1), SYSTEMD_PORT)
                _check(
                    run_command(
                        ssh,
                        "mkdir -p ~/.config/systemd/user && cat > ~/.config/systemd/user/" + SYSTEMD_UNIT
                        + f" && mkdir -p {sh_path(connect_options.agent.state_dir)} && echo {SYSTEMD_PORT} > "
                        f"{sh_path(connect_options.agent.state_dir)}/systemd.port && systemctl --user daemon-reload"
                        f" && systemctl --user enable {SYSTEMD_UNIT} && systemctl --user restart {SYSTEMD_UNIT} && "
                        "(loginctl enable-linger \"$USER\" 2>/dev/null || true)",
                        stdin_data=unit.encode(),
                    ),
                    "installing the systemd unit",
                    hint="without a user systemd session, install without --systemd (a detached agent is used)",
                )
        finally:
            ssh.close()
    step("starting the agent and checking it with GetInfo")
    verify = dataclasses.replace(connect_options, agent=dataclasses.replace(connect_options.agent, command=agent))
    with connect(address, verify) as handle:
        info = handle.get_info()
    return InstallReport(wheel=wheel.name, venv=options.venv, agent_command=agent, runtime=options.runtime,
                         systemd=options.systemd, info=info)
