"""The ``nbiafs`` command: parses arguments, sets up logging, dispatches to one module per subcommand.

Each subcommand module under ``nbiafs/cli/`` exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nbiafs import __version__
from nbiafs.cli import cache, demo, mount, query, serve, umount
from nbiafs.cli.logs import setup_logging
from nbiafs.errors import NbiaError

COMMANDS = {"serve": serve, "query": query, "mount": mount, "umount": umount, "demo": demo, "cache": cache}
"""Subcommand name -> its module, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="nbiafs",
        description="Mount The Cancer Imaging Archive (NBIA) as a read-only directory.",
    )
    parser.add_argument("--version", action="version", version=f"nbiafs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        setup_logging(getattr(args, "verbose", 0), getattr(args, "log_file", None))
        return int(args.func(args) or 0)
    except NbiaError as exc:
        print(f"nbiafs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
