"""Fleet files: named devices with tags, a preferred runtime and thread count (TOML).

```toml
[defaults]            # optional, applies to every device
runtime = "executorch"
threads = 4

[[device]]
name = "pi5-a"
address = "pi@10.0.0.5"
tags = ["pi5", "lab"]
runtime = "litert"      # optional: executorch | litert
threads = 4             # optional
token_file = "~/.config/autosculpt/pi5-a.token"   # grpcs:// only
ca_cert = "~/.config/autosculpt/ca.pem"           # grpcs:// only
```

Every error names the file and the line of the offending entry.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from host.devices.address import DeviceAddress, parse_device
from host.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RUNTIMES = ("executorch", "litert")
DEVICE_KEYS = {"name", "address", "tags", "runtime", "threads", "token_file", "ca_cert", "agent_command"}
DEFAULT_KEYS = DEVICE_KEYS - {"name", "address"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class FleetDevice:
    """One device of a fleet file."""

    name: str
    address: DeviceAddress
    tags: tuple[str, ...] = ()
    runtime: str | None = None
    threads: int | None = None
    token_file: Path | None = None
    ca_cert: Path | None = None
    agent_command: str | None = None
    line: int = 0  # line of its [[device]] header, for messages


@dataclass(frozen=True)
class Fleet:
    """The devices of one fleet file, in file order."""

    path: Path
    devices: tuple[FleetDevice, ...]

    def names(self) -> list[str]:
        """Device names in file order."""
        return [d.name for d in self.devices]

    def find(self, name: str) -> FleetDevice | None:
        """The device called ``name``, or None."""
        return next((d for d in self.devices if d.name == name), None)

    def select(self, tags: list[str] | tuple[str, ...] = (), names: list[str] | tuple[str, ...] = ()) -> list[FleetDevice]:
        """Devices carrying every tag in ``tags`` (and named in ``names`` when given)."""
        chosen = [d for d in self.devices if set(tags) <= set(d.tags) and (not names or d.name in names)]
        if not chosen:
            known = sorted({t for d in self.devices for t in d.tags})
            raise ConfigError(
                f"no device of {self.path} matches tags {list(tags)}" + (f" and names {list(names)}" if names else ""),
                hint=f"tags in the file: {', '.join(known) or 'none'}",
            )
        return chosen


class _Lines:
    """Finds the line of a [[device]] table or of a key inside it, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [i + 1 for i, ln in enumerate(self.lines) if re.match(r"^\s*\[\[\s*device\s*\]\]", ln)]
        self.defaults = next(
            (i + 1 for i, ln in enumerate(self.lines) if re.match(r"^\s*\[\s*defaults\s*\]", ln)), 0
        )

    def _block(self, start: int) -> range:
        end = len(self.lines)
        for i in range(start, len(self.lines)):
            if re.match(r"^\s*\[", self.lines[i]):
                end = i
                break
        return range(start, end)

    def of(self, index: int | None, key: str | None = None) -> int:
        """Line of device ``index`` (None = [defaults]) or of ``key`` inside it; 0 when unknown."""
        start = self.defaults if index is None else (self.headers[index] if index < len(self.headers) else 0)
        if not start or key is None:
            return start
        for i in self._block(start):
            if re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", self.lines[i]):
                return i + 1
        return start


def load_fleet(path: str | Path) -> Fleet:
    """Read and check a fleet file; ConfigError with ``file:line`` on any problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the fleet file {path}: {exc}",
                          hint="see deploy/fleet.example.toml for the format") from None
    try:
        text = data.decode("utf-8")  # TOML is UTF-8 by definition, whatever the locale says
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}:{line}: the fleet file is not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})",
            hint="save it as UTF-8 (TOML files must be), e.g. iconv -f latin1 -t utf-8; see deploy/fleet.example.toml",
        ) from None
    return parse_fleet(text, path)


def parse_fleet(text: str, path: Path) -> Fleet:
    """Parse fleet-file ``text`` (``path`` is used in messages)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python < 3.14 has no lineno attribute; the message says "(at line N, column M)".
        found = re.search(r"at line (\d+)", str(exc))
        line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else None)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: not valid TOML: {exc}", hint="see deploy/fleet.example.toml") from None
    lines = _Lines(text)

    def fail(index: int | None, key: str | None, message: str, hint: str | None = None) -> ConfigError:
        line = lines.of(index, key)
        return ConfigError(f"{path}:{line}: {message}" if line else f"{path}: {message}",
                           hint=hint or "see deploy/fleet.example.toml")

    unknown_top = set(data) - {"device", "defaults"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        line = next((i + 1 for i, ln in enumerate(lines.lines) if re.match(rf"^\s*\[*\s*{re.escape(key)}\b", ln)), 0)
        raise ConfigError(f"{path}:{line}: unknown section or key {key!r}",
                          hint="a fleet file has an optional [defaults] table and [[device]] tables")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise fail(None, None, "'defaults' must be a table: [defaults]")
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise fail(None, key, f"unknown key {key!r} in [defaults]; allowed: {', '.join(sorted(DEFAULT_KEYS))}")
    entries = data.get("device", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no devices; add at least one [[device]] table with name and address",
                          hint="see deploy/fleet.example.toml")
    devices: list[FleetDevice] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        merged = {**defaults, **entry}
        for key in entry:
            if key not in DEVICE_KEYS:
                raise fail(index, key, f"unknown key {key!r}; allowed: {', '.join(sorted(DEVICE_KEYS))}")
        for key in ("name", "address"):
            if key not in entry:
                raise fail(index, None, f"device #{index + 1} has no {key!r}")
            if not isinstance(entry[key], str):
                raise fail(index, key, f"{key!r} must be a string")
        name = entry["name"]
        if not _NAME.match(name) or name == "local":
            raise fail(index, "name", f"bad device name {name!r}: letters, digits, '.', '_', '-'; not 'local'")
        if "@" in name or "://" in name:
            raise fail(index, "name", f"bad device name {name!r}")
        if name in seen:
            raise fail(index, "name", f"duplicate device name {name!r} (first defined on line {lines.of(seen[name])})")
        seen[name] = index
        try:
            address = parse_device(entry["address"])
        except ConfigError as exc:
            raise fail(index, "address", exc.message, exc.hint) from None
        if address.kind == "local":
            # a fleet lists boards to reach; this machine's private agent is always there as --device local
            raise fail(index, "address", f"device {name!r}: address 'local' is not allowed in a fleet file",
                       hint="use --device local for this machine; give a board a user@host, grpcs://host:port "
                            "or grpc://127.0.0.1:port address (see deploy/fleet.example.toml)")
        tags = merged.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise fail(index if "tags" in entry else None, "tags", "'tags' must be a list of non-empty strings")
        runtime = merged.get("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            raise fail(index if "runtime" in entry else None, "runtime",
                       f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        threads = merged.get("threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise fail(index if "threads" in entry else None, "threads", f"'threads' must be a positive integer, not {threads!r}")
        paths = {}
        for key in ("token_file", "ca_cert"):
            value = merged.get(key)
            if value is not None and not isinstance(value, str):
                raise fail(index if key in entry else None, key, f"{key!r} must be a path string")
            paths[key] = _resolve(path, value)
        if address.kind == "grpcs" and paths["token_file"] is None:
            raise fail(index, "address", f"{name}: grpcs:// devices need token_file (the agent's bearer token)")
        devices.append(
            FleetDevice(
                name=name,
                address=DeviceAddress(address.kind, address.host, address.port, address.user, name=name),
                tags=tuple(tags),
                runtime=runtime,
                threads=threads,
                token_file=paths["token_file"],
                ca_cert=paths["ca_cert"],
                agent_command=merged.get("agent_command"),
                line=lines.of(index),
            )
        )
    return Fleet(path=path, devices=tuple(devices))


def _resolve(fleet_path: Path, value: str | None) -> Path | None:
    """Paths in a fleet file are relative to the file, with ``~`` expanded."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (fleet_path.parent / p)
