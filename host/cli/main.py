"""Entry point of ``sculpt-host``.

Subcommands are modules in this package that expose ``register(subparsers)``; each registers its parser and
sets ``func`` to a callable taking the parsed arguments and returning an exit code. Heavy imports (torch,
PyG, SB3) happen inside those callables so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from host import __version__
from host.errors import SculptError
from host.quiet import configured

# Order is the order shown in --help. A module that is not there yet is skipped, so the CLI works while
# features land one by one.
SUBCOMMAND_MODULES = (
    "host.cli.search_cmd",
    "host.cli.train_cmd",
    "host.cli.pretrain_cmd",
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
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="also show third-party warnings and logs, and our INFO (-vv: everything, debug)")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    with configured(args.verbose):
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
