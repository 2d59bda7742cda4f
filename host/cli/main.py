"""Entry point of ``sculpt-host``.

Subcommands are modules in this package that expose ``register(subparsers)``; each registers its parser and
sets ``func`` to a callable taking the parsed arguments and returning an exit code. Heavy imports (torch,
PyG, SB3) happen inside those callables so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from host import __version__
from host.errors import SculptError

# Order is the order shown in --help. A module that is not there yet is skipped, so the CLI works while
# features land one by one.
SUBCOMMAND_MODULES = (
    "host.cli.search_cmd",
    "host.cli.train_cmd",
    "host.cli.inspect_cmd",
    "host.cli.export_cmd",
    "host.cli.devices_cmd",
    "host.cli.fleet_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sculpt-host",
        description="AutoSculpt: hardware-aware pruning of neural networks, measured on real edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    try:
        from rich.console import Console
        from rich.logging import RichHandler

        # Logs go to stderr so that `--json` output on stdout stays machine-readable.
        handler: logging.Handler = RichHandler(
            console=Console(stderr=True), show_path=False, rich_tracebacks=verbosity > 1
        )
        fmt = "%(message)s"
    except ImportError:  # the host extra ships rich; stay usable without it
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except SculptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
