"""Find, check and start the agent on a board over an SSH session.

The agent always binds the board's 127.0.0.1; the host reaches it through the SSH tunnel, so no port is
opened on the board. When the agent is not running we start it: through the user's systemd unit
(``autosculpt-agent.service``) when one is installed, else as a detached process whose pid, port and log
live in a state directory (``~/.cache/autosculpt/agent`` by default).
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass

from host.devices.ssh import run_command
from host.errors import DeviceError, DeviceUnreachableError

log = logging.getLogger(__name__)

DEFAULT_VENV = "~/.local/share/autosculpt/venv"
DEFAULT_STATE_DIR = "~/.cache/autosculpt/agent"
SYSTEMD_UNIT = "autosculpt-agent.service"
SYSTEMD_PORT = 50051  # the port the installed user unit binds on the board's loopback
SYSTEM_UNIT = "sculpt-agent.service"  # system-wide unit of deploy/install-agent.sh (loopback, port 50051)
SYSTEM_VENV = "/opt/autosculpt"


class AgentNotInstalledError(DeviceError):
    """No ``sculpt-agent`` on the board."""


class AgentStartError(DeviceUnreachableError):
    """The agent is installed but does not come up (bad config, missing runtime, disk full)."""


@dataclass(frozen=True)
class AgentLaunch:
    """Where the agent lives on the board and how to start it."""

    command: str | None = None  # sculpt-agent on the board; None = the installed venv, then PATH
    state_dir: str = DEFAULT_STATE_DIR
    port: int = 0  # port on the board's loopback for a detached agent; 0 = any free port
    start_timeout: float = 90.0  # the first start imports the runtimes, slow on a Pi
    extra_args: tuple[str, ...] = ()  # e.g. ("--config", "~/agent.toml")
    use_systemd: bool = True


@dataclass(frozen=True)
class RemoteAgent:
    """A running agent on a board, as found or started by :func:`ensure_agent`."""

    command: str
    version: str
    port: int
    started: bool
    how: str  # "running" | "system" | "systemd" | "detached"


def sh_path(path: str) -> str:
    """Quote a board path for sh, keeping a leading ``~/`` expandable."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def locate_agent(client, launch: AgentLaunch, address_text: str) -> str:
    """Absolute path (or PATH name) of ``sculpt-agent`` on the board."""
    if launch.command:
        candidates = [launch.command]
    else:
        candidates = [f"{DEFAULT_VENV}/bin/sculpt-agent", f"{SYSTEM_VENV}/bin/sculpt-agent",
                      "~/.local/bin/sculpt-agent", "sculpt-agent"]
    checks = " ".join(sh_path(c) for c in candidates)
    script = (
        f'for c in {checks}; do if [ -x "$c" ]; then echo "$c"; exit 0; fi; '
        'if command -v "$c" >/dev/null 2>&1; then command -v "$c"; exit 0; fi; done; exit 127'
    )
    result = run_command(client, script, timeout=30)
    if result.exit_status != 0 or not result.stdout.strip():
        raise AgentNotInstalledError(
            f"sculpt-agent is not installed on {address_text} (looked for {', '.join(candidates)})",
            hint=f"install it with `sculpt-host devices install {address_text}` "
            "(or deploy/install-agent.sh on the board), or pass --agent-command PATH",
        )
    return result.stdout.strip().splitlines()[-1]


def agent_version(client, command: str) -> str:
    """Version reported by ``sculpt-agent --version`` on the board."""
    result = run_command(client, f"{shlex.quote(command)} --version", timeout=60)
    text = (result.stdout + result.stderr).strip()
    if result.exit_status != 0:
        raise AgentStartError(
            f"`{command} --version` failed on the board (exit {result.exit_status}): {text[-500:]}",
            hint="reinstall the agent with `sculpt-host devices install USER@HOST`",
        )
    match = re.search(r"(\d+\.\d+[\w.+-]*)", text)
    return match.group(1) if match else text


def running_port(client, launch: AgentLaunch) -> int | None:
    """Loopback port of an agent this module started earlier and that is still alive, else None."""
    d = sh_path(launch.state_dir)
    script = (
        f'd={d}; if [ -f "$d/agent.pid" ] && kill -0 "$(cat "$d/agent.pid")" 2>/dev/null '
        '&& [ -s "$d/agent.port" ]; then cat "$d/agent.port"; exit 0; fi; exit 1'
    )
    result = run_command(client, script, timeout=30)
    text = result.stdout.strip()
    return int(text) if result.exit_status == 0 and text.isdigit() else None


def system_unit_port(client, launch: AgentLaunch) -> int | None:
    """Port of the system-wide agent (deploy/install-agent.sh) when its unit is active, else None.

    Starting a second agent next to it would make two daemons compete for the CPU being measured.
    """
    if not launch.use_systemd:
        return None
    result = run_command(client, f"systemctl is-active --quiet {SYSTEM_UNIT} 2>/dev/null", timeout=30)
    return SYSTEMD_PORT if result.exit_status == 0 else None


def _systemd_port(client, launch: AgentLaunch) -> int | None:
    """Start the user unit when installed; its port, or None when there is no unit."""
    if not launch.use_systemd:
        return None
    d = sh_path(launch.state_dir)
    script = (
        "command -v systemctl >/dev/null 2>&1 || exit 10; "
        f"systemctl --user cat {SYSTEMD_UNIT} >/dev/null 2>&1 || exit 10; "
        f"systemctl --user start {SYSTEMD_UNIT} || exit 11; "
        f'cat {d}/systemd.port 2>/dev/null || echo {SYSTEMD_PORT}'
    )
    result = run_command(client, script, timeout=60)
    if result.exit_status == 10:
        return None
    if result.exit_status != 0:
        raise AgentStartError(
            f"systemctl --user start {SYSTEMD_UNIT} failed: {result.stderr.strip()[-500:]}",
            hint=f"look at `journalctl --user -u {SYSTEMD_UNIT}` on the board",
        )
    text = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    return int(text) if text.isdigit() else SYSTEMD_PORT


def start_detached(client, launch: AgentLaunch, command: str) -> int:
    """Start the agent in the background on the board's loopback; wait for it to report its port."""
    d = sh_path(launch.state_dir)
    args = " ".join(shlex.quote(a) for a in launch.extra_args)
    polls = max(1, int(launch.start_timeout / 0.2))
    # setsid detaches the agent from the SSH session so it survives our disconnect; stdout is unbuffered so
    # the "listening on" line reaches the log at once.
    script = f"""
d={d}
mkdir -p "$d" || exit 5
cd "$d" || exit 5
# Two hosts connecting at once must not start two agents (they would compete for the CPU being measured).
if command -v flock >/dev/null 2>&1; then exec 9> start.lock; flock -w {int(launch.start_timeout)} 9; fi
if [ -f agent.pid ] && kill -0 "$(cat agent.pid)" 2>/dev/null && [ -s agent.port ]; then cat agent.port; exit 0; fi
: > agent.log || exit 5
rm -f agent.port
S=; command -v setsid >/dev/null 2>&1 && S=setsid
PYTHONUNBUFFERED=1 nohup $S {shlex.quote(command)} serve --host 127.0.0.1 --port {launch.port} {args} \
  >> agent.log 2>&1 < /dev/null 9>&- &
pid=$!
echo $pid > agent.pid
i=0
while [ $i -lt {polls} ]; do
  line=$(grep -m1 -o 'listening on [^ ]*' agent.log 2>/dev/null)
  if [ -n "$line" ]; then port=${{line##*:}}; echo "$port" > agent.port; echo "$port"; exit 0; fi
  kill -0 $pid 2>/dev/null || {{ echo "the agent exited:" >&2; tail -n 25 agent.log >&2; exit 3; }}
  sleep 0.2; i=$((i+1))
done
echo "the agent did not report 'listening on' within {launch.start_timeout:.0f}s:" >&2
tail -n 25 agent.log >&2
exit 4
"""
    result = run_command(client, script, timeout=launch.start_timeout + 30)
    if result.exit_status == 0 and result.stdout.strip().isdigit():
        return int(result.stdout.strip())
    detail = result.stderr.strip()[-1500:]
    hint = f"read {launch.state_dir}/agent.log on the board"
    if "No space left" in detail or result.exit_status == 5:
        hint = "free disk space on the board (df -h ~) and retry"
    raise AgentStartError(f"could not start the agent on the board: {detail or 'no output'}", hint=hint)


def ensure_agent(client, launch: AgentLaunch, address_text: str) -> RemoteAgent:
    """Return the running agent on the board, starting it first when needed."""
    command = locate_agent(client, launch, address_text)
    version = agent_version(client, command)
    port = running_port(client, launch)
    if port is not None:
        return RemoteAgent(command, version, port, started=False, how="running")
    port = system_unit_port(client, launch)
    if port is not None:
        return RemoteAgent(command, version, port, started=False, how="system")
    port = _systemd_port(client, launch)
    if port is not None:
        log.info("started the agent on %s through systemd (port %d)", address_text, port)
        return RemoteAgent(command, version, port, started=True, how="systemd")
    port = start_detached(client, launch, command)
    log.info("started sculpt-agent %s on %s (loopback port %d)", version, address_text, port)
    return RemoteAgent(command, version, port, started=True, how="detached")


def stop_agent(client, launch: AgentLaunch) -> bool:
    """Stop a detached agent started by :func:`start_detached`; True when one was running."""
    d = sh_path(launch.state_dir)
    script = (
        f'd={d}; [ -f "$d/agent.pid" ] || exit 1; pid=$(cat "$d/agent.pid"); rm -f "$d/agent.pid" "$d/agent.port"; '
        'kill "$pid" 2>/dev/null || exit 1; i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do '
        'sleep 0.1; i=$((i+1)); done; kill -9 "$pid" 2>/dev/null; exit 0'
    )
    return run_command(client, script, timeout=30).exit_status == 0
