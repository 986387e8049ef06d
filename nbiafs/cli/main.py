"""The ``nbiafs`` command: parses arguments, sets up logging, dispatches to one module per subcommand.

Each subcommand module under ``nbiafs/cli/`` exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit status). ``nbiafs SOURCE MOUNTPOINT
[-o OPTIONS]`` (how mount(8)'s helper ``mount.fuse3`` starts a ``fuse.nbiafs`` entry of /etc/fstab) is
``nbiafs mount SOURCE MOUNTPOINT [-o OPTIONS]``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from nbiafs import __version__
from nbiafs.api.profiles import PROFILE_NAMES
from nbiafs.cli import cache, demo, mount, prefetch, query, serve, status, umount
from nbiafs.cli.logs import setup_logging
from nbiafs.cli.parser import ArgumentParser, subparser_of
from nbiafs.errors import NbiaError

COMMANDS = {
    "serve": serve,
    "query": query,
    "mount": mount,
    "umount": umount,
    "prefetch": prefetch,
    "demo": demo,
    "cache": cache,
}
"""Subcommand name -> its module, in the order ``--help`` lists them."""


def build_parser() -> ArgumentParser:
    """The full argument parser, every subcommand registered."""
    parser = ArgumentParser(
        prog="nbiafs",
        description="Mount The Cancer Imaging Archive (NBIA) as a read-only directory.",
        epilog="As a mount helper (mount -t fuse.nbiafs, /etc/fstab): nbiafs SOURCE MOUNTPOINT -o OPTIONS, "
        "the same as nbiafs mount SOURCE MOUNTPOINT -o OPTIONS (see nbiafs mount --help).",
    )
    parser.add_argument("--version", action="version", version=f"nbiafs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    return parser


def is_mount_source(word: str) -> bool:
    """Whether ``word`` names what to mount (a server profile or an API URL) rather than a subcommand."""
    return word in PROFILE_NAMES or "://" in word or word in mount.DEFAULT_SOURCES


def mount_helper_form(argv: list[str]) -> list[str]:
    """``SOURCE MOUNTPOINT ...`` (mount.fuse3's call) as ``mount SOURCE MOUNTPOINT ...``; others unchanged."""
    if (
        len(argv) >= 2
        and argv[0] not in COMMANDS
        and is_mount_source(argv[0])
        and not argv[1].startswith("-")
    ):
        return ["mount", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    words = mount_helper_form(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extras = parser.parse_known_args(words)
    if extras:
        subparser_of(parser, args).unknown(extras)
    try:
        setup_logging(getattr(args, "verbose", 0), getattr(args, "log_file", None))
        return int(args.func(args) or 0)
    except NbiaError as exc:
        print(f"nbiafs: {exc}", file=sys.stderr)
        # The mount's statuses (a service manager reads them); the other commands answer 1 for any error.
        return status.status_of(exc) if args.command in ("mount", "demo") else status.FAILURE
    except status.StopRequested:
        return status.OK
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``nbiafs query ... | head``): not an error worth a word.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
