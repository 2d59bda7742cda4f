"""``sculpt-host devices install|list|info|ping|stop``: set up and inspect boards."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from host.errors import DeviceError


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Flags every command that reaches a device shares."""
    g = parser.add_argument_group("connection")
    g.add_argument("--fleet", type=Path, help="fleet file whose device names may be used (see deploy/fleet.example.toml)")
    g.add_argument("-i", "--identity", type=Path, help="SSH private key (default: ssh-agent, ~/.ssh/config, ~/.ssh/id_*)")
    g.add_argument("--ssh-config", type=Path, help="SSH client config (default ~/.ssh/config)")
    g.add_argument("--known-hosts", type=Path, help="known_hosts file (default ~/.ssh/known_hosts)")
    g.add_argument("--accept-new-host-key", action="store_true",
                   help="trust and save the host key of a board seen for the first time (never a changed one)")
    g.add_argument("--token-file", type=Path, help="bearer token of a grpcs:// agent")
    g.add_argument("--ca-cert", type=Path, help="CA certificate that signed a grpcs:// agent's certificate")
    g.add_argument("--agent-command", help="path of sculpt-agent on the board (default: the installed venv, then PATH)")
    g.add_argument("--agent-state-dir", help="pid/port/log directory of the agent on the board "
                                              "(default ~/.cache/autosculpt/agent)")
    g.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `sculpt-agent serve` when it must be started (repeatable), "
                        "e.g. --agent-arg=--config --agent-arg=~/agent.toml")
    g.add_argument("--timeout", type=float, default=30.0, help="deadline of ordinary calls, seconds (default 30)")


def connect_options(args: argparse.Namespace, device=None):
    """ConnectOptions from the flags; ``device`` (a FleetDevice) supplies its own credentials."""
    from host.devices.bootstrap import DEFAULT_STATE_DIR, AgentLaunch
    from host.devices.connect import ConnectOptions
    from host.devices.ssh import SSHOptions

    ssh = SSHOptions(config_path=args.ssh_config, known_hosts=args.known_hosts, identity_file=args.identity,
                     accept_new_host_key=args.accept_new_host_key)
    agent = AgentLaunch(command=(device and device.agent_command) or args.agent_command,
                        state_dir=args.agent_state_dir or DEFAULT_STATE_DIR, extra_args=tuple(args.agent_arg))
    return ConnectOptions(
        ssh=ssh, agent=agent,
        token_file=(device and device.token_file) or args.token_file,
        ca_cert=(device and device.ca_cert) or args.ca_cert,
        timeout=args.timeout,
    )


def resolve(args: argparse.Namespace, text: str):
    """(DeviceAddress, ConnectOptions) for a device named on the command line."""
    from host.devices.address import parse_device
    from host.fleet.file import load_fleet

    fleet = load_fleet(args.fleet) if args.fleet else None
    device = fleet.find(text) if fleet else None
    return parse_device(text, fleet), connect_options(args, device)


def register(subparsers) -> None:
    parser = subparsers.add_parser("devices", help="install the agent on boards and inspect them",
                                   description="Install the agent on boards over SSH and inspect them.")
    sub = parser.add_subparsers(dest="devices_command", metavar="ACTION", required=True)

    p = sub.add_parser("install", help="install the agent of this checkout on a board over SSH")
    p.add_argument("device", help="user@host[:port] or ssh://alias")
    p.add_argument("--runtime", choices=("litert", "executorch", "none"), default="litert",
                   help="runtime extra to install (default litert; executorch pulls torch, ~1 GB)")
    p.add_argument("--python", default="python3", help="Python on the board that creates the venv (default python3)")
    p.add_argument("--venv", default=None, help="virtualenv path on the board (default ~/.local/share/autosculpt/venv)")
    p.add_argument("--systemd", action="store_true", help="also install and start a user systemd unit")
    p.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                   help="extra pip argument on the board (repeatable), e.g. --pip-arg=--index-url=URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_connection_args(p)
    p.set_defaults(func=run_install)

    p = sub.add_parser("list", help="list the devices of a fleet file (with --probe: reach each one)")
    p.add_argument("--tags", action="append", default=[], help="only devices carrying this tag (repeatable)")
    p.add_argument("--probe", action="store_true", help="connect to each device and show its status")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_connection_args(p)
    p.set_defaults(func=run_list)

    for name, helptext, func in (("info", "device fingerprint: runtimes, CPU, memory, meters", run_info),
                                 ("ping", "check that a device answers, and how fast", run_ping),
                                 ("stop", "stop an agent that sculpt-host started on an SSH board", run_stop)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("device", help="local | user@host[:port] | grpc(s)://host:port | fleet name")
        if name == "ping":
            p.add_argument("-c", "--count", type=int, default=5, help="GetInfo round trips to time (default 5)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        add_connection_args(p)
        p.set_defaults(func=func)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def info_dict(info) -> dict:
    """DeviceInfo as plain data."""
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)


def run_install(args) -> int:
    from rich.console import Console

    from host.devices.bootstrap import DEFAULT_VENV
    from host.devices.install import InstallOptions, install_agent

    address, options = resolve(args, args.device)
    console = Console(stderr=True)
    install = InstallOptions(runtime=args.runtime, python=args.python, venv=args.venv or DEFAULT_VENV,
                             systemd=args.systemd, pip_args=tuple(args.pip_arg))
    started = time.monotonic()
    with console.status("installing") as status:
        def step(message: str) -> None:
            console.log(message)
            status.update(message)

        report = install_agent(address, options, install, step=step)
    info = report.info
    if args.json:
        _print_json({"device": str(address), "wheel": report.wheel, "venv": report.venv,
                     "agent_command": report.agent_command, "runtime": report.runtime, "systemd": report.systemd,
                     "seconds": round(time.monotonic() - started, 1), "info": info_dict(info)})
        return 0
    runtimes = ", ".join(f"{r.name} {r.version}" for r in info.runtimes if r.available) or "none"
    print(f"installed sculpt-agent {info.agent_version} on {address} in {time.monotonic() - started:.0f} s")
    print(f"  venv        {report.venv}")
    print(f"  fingerprint {info.fingerprint}")
    print(f"  runtimes    {runtimes}")
    print(f"  use it with --device {address}")
    return 0


def _describe(info) -> list[str]:
    runtimes = [f"{r.name} {r.version}" if r.available else f"{r.name}: {r.unavailable_reason}" for r in info.runtimes]
    temps = ", ".join(f"{k} {v:.0f}C" for k, v in sorted(info.temperatures.items())) or "not exposed"
    freq = (f"{info.cpu_freq_min_mhz:.0f}-{info.cpu_freq_max_mhz:.0f} MHz" if info.cpu_freq_max_mhz else "unknown")
    gib = 1024**3
    return [
        f"agent          sculpt-agent {info.agent_version} (protocol v{info.protocol_version})",
        f"fingerprint    {info.fingerprint}",
        f"host           {info.hostname} ({info.machine}) {info.os}",
        f"board          {info.board or 'unknown'}",
        f"cpu            {info.cpu_model}, {info.cpu_count} cores, governor {info.governor or 'unknown'}, {freq}",
        f"memory         {info.memory_available_bytes / gib:.1f} of {info.memory_total_bytes / gib:.1f} GiB free",
        f"temperatures   {temps}",
        "runtimes       " + "\n               ".join(runtimes),
        "energy meters  " + (", ".join(info.energy_meters) or f"none ({info.energy_unavailable_reason})"),
        f"store          {info.store_bytes_used / 2**20:.1f} of {info.store_capacity_bytes / 2**20:.0f} MiB",
        f"queue          {info.queue_depth} of {info.queue_capacity}",
    ]


def run_info(args) -> int:
    from host.devices.connect import connect

    address, options = resolve(args, args.device)
    with connect(address, options) as handle:
        info = handle.get_info()
    if args.json:
        _print_json({"device": address.label, "address": str(address), "info": info_dict(info)})
    else:
        print(f"{address.label}  ({address})")
        for line in _describe(info):
            print("  " + line)
    return 0


def run_ping(args) -> int:
    from host.devices.connect import connect

    address, options = resolve(args, args.device)
    started = time.monotonic()
    try:
        with connect(address, options) as handle:
            connected = time.monotonic() - started
            healthy = handle.health()
            rtts = []
            for _ in range(max(1, args.count)):
                t0 = time.perf_counter()
                info = handle.get_info()
                rtts.append((time.perf_counter() - t0) * 1000)
    except DeviceError as exc:
        if not args.json:
            raise
        _print_json({"device": address.label, "address": str(address), "reachable": False,
                     "error": type(exc).__name__, "message": exc.message, "hint": exc.hint})
        return exc.exit_code
    result = {"device": address.label, "address": str(address), "reachable": True, "healthy": healthy,
              "connect_s": round(connected, 3), "rtt_ms": [round(r, 2) for r in rtts],
              "agent_version": info.agent_version, "fingerprint": info.fingerprint}
    if args.json:
        _print_json(result)
    else:
        print(f"{address.label}: {'SERVING' if healthy else 'NOT SERVING'}, sculpt-agent {info.agent_version}, "
              f"fingerprint {info.fingerprint}; connect {connected:.2f} s, GetInfo round trip "
              f"min {min(rtts):.1f} / median {statistics.median(rtts):.1f} ms")
    return 0 if healthy else 1


def run_stop(args) -> int:
    from host.devices.connect import connect

    address, options = resolve(args, args.device)
    if address.kind != "ssh":
        print(f"{address} is not an SSH device: nothing to stop (stop its agent on the board)", file=sys.stderr)
        return 2
    with connect(address, options, eager=False) as handle:
        stopped = handle.stop_remote_agent()
    print(f"{address.label}: {'agent stopped' if stopped else 'no agent started by sculpt-host was running'}")
    return 0


def _probe(args, device) -> dict:
    from host.devices.connect import connect

    row = {"name": device.name, "address": str(device.address), "tags": list(device.tags),
           "runtime": device.runtime, "threads": device.threads}
    try:
        with connect(device.address, connect_options(args, device)) as handle:
            info = handle.info
            row.update(status="online", agent_version=info.agent_version, fingerprint=info.fingerprint,
                       runtimes=[r.name for r in info.runtimes if r.available], meters=list(info.energy_meters))
    except DeviceError as exc:
        row.update(status="offline", error=type(exc).__name__, message=exc.message)
    return row


def run_list(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from host.errors import ConfigError
    from host.fleet.file import load_fleet

    if args.fleet is None:
        raise ConfigError("devices list needs a fleet file", hint="sculpt-host devices list --fleet fleet.toml")
    fleet = load_fleet(args.fleet)
    devices = fleet.select(args.tags) if args.tags else list(fleet.devices)
    if args.probe:
        with ThreadPoolExecutor(max_workers=8) as ex:
            rows = list(ex.map(lambda d: _probe(args, d), devices))
    else:
        rows = [{"name": d.name, "address": str(d.address), "tags": list(d.tags), "runtime": d.runtime,
                 "threads": d.threads} for d in devices]
    if args.json:
        _print_json({"fleet": str(fleet.path), "devices": rows})
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(fleet.path))
    columns = ["name", "address", "tags", "runtime", "threads"] + (["status", "agent", "fingerprint", "detail"]
                                                                   if args.probe else [])
    for c in columns:
        table.add_column(c)
    for r in rows:
        cells = [r["name"], r["address"], ",".join(r["tags"]), r["runtime"] or "any", str(r["threads"] or "default")]
        if args.probe:
            detail = ", ".join(r.get("runtimes", [])) if r["status"] == "online" else r.get("error", "")
            cells += [r["status"], r.get("agent_version", ""), r.get("fingerprint", ""), detail]
        table.add_row(*cells)
    Console(width=max(Console().width, 120)).print(table)
    return 0 if not args.probe or all(r["status"] == "online" for r in rows) else 1
