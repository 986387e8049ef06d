"""The ``nbiafs`` command: parses arguments, sets up logging, dispatches to :mod:`nbiafs.commands`.

Each subcommand lives in its own module under ``nbiafs/commands/`` and exposes ``register(subparsers)``, which
adds its parser and sets ``func`` (a callable taking the parsed namespace and returning an exit status).
This is the only place that installs logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from nbiafs import __version__
from nbiafs.errors import ConfigError, NbiaError

log = logging.getLogger("nbiafs")

COMMANDS = ("serve", "query", "mount", "umount", "demo", "cache")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every subcommand registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="nbiafs",
        description="Mount The Cancer Imaging Archive (NBIA) as a read-only directory.",
    )
    parser.add_argument("--version", action="version", version=f"nbiafs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"nbiafs.commands.{name}")
        module.register(sub)
    return parser


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``-v`` (repeatable) and ``--log-file``, for subcommands that want them."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-file", metavar="FILE", help="write the log to FILE instead of standard error")


def setup_logging(verbose: int = 0, log_file: str | None = None) -> None:
    """Install the one logging handler of the process (credentials are never logged by any module).

    A log file is created private (0600). Raises ConfigError if it cannot be written.
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler: logging.Handler
    if log_file:
        # Private from the start: log lines name paths, and so collections and patients, of restricted data.
        try:
            os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the log file {log_file}: {exc.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs full URLs at debug level; they never carry credentials (api_key goes in a header).


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
