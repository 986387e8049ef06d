"""``nbiafs mount MOUNTPOINT``: mount an NBIA server as a read-only directory.

Without ``-f`` the command behaves like sshfs: it parses the options and reads the credentials in the calling
process, forks before any thread or HTTP client exists, and returns only once the mount answers (exit 0)
or the child has reported why it could not mount (exit 1). The child runs in a session of its own with its
standard streams on /dev/null (use ``--log-file`` to keep its log). Unmounting (``nbiafs umount``) or
SIGTERM/SIGINT ends the process cleanly: the FUSE loop returns, the client logs out, the caches close.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbiafs import settings
from nbiafs.api.credentials import Credentials
from nbiafs.api.manifest import load_manifest
from nbiafs.api.profiles import ServerProfile
from nbiafs.cli.logs import add_logging_options
from nbiafs.cli.options import (
    add_server_options,
    client_settings_from_args,
    credentials_from_args,
    profile_from_args,
)
from nbiafs.errors import ConfigError, NbiaError
from nbiafs.mounting import MountSettings, run_mount
from nbiafs.settings import CacheSettings, TreeSettings, format_size, parse_size

log = logging.getLogger(__name__)

#: Seconds the parent waits for the daemon to log in and mount before giving up on it.
READY_TIMEOUT = 120.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mount",
        help="mount an NBIA server as a read-only directory",
        description="Mount an NBIA server (TCIA by default) at MOUNTPOINT as "
        "Collection/Patient/Study/Series/<SOPInstanceUID>.dcm. Returns once the mount is ready, unless -f.",
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_server_options(parser)
    add_mount_options(parser)
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground until unmounted"
    )
    add_logging_options(parser)
    parser.set_defaults(func=run)


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """The cache, layout, selection and FUSE options shared by ``mount`` and ``demo``."""
    tree = TreeSettings()
    parser.add_argument(
        "--cache-dir", metavar="DIR", help=f"disk cache directory (default: {settings.default_cache_dir()})"
    )
    parser.add_argument(
        "--cache-size",
        default=format_size(settings.DEFAULT_CACHE_SIZE).replace(" ", "").replace("iB", ""),
        metavar="SIZE",
        help="cache bound, e.g. 500M, 20G (default %(default)s)",
    )
    parser.add_argument(
        "--layout",
        choices=settings.LAYOUTS,
        default=tree.layout,
        help="directory names (default %(default)s)",
    )
    parser.add_argument(
        "--collection", action="append", metavar="NAME", help="mount only this collection (repeatable)"
    )
    parser.add_argument(
        "--manifest", metavar="FILE.tcia", help="mount only the series of a Data Retriever manifest"
    )
    parser.add_argument("--cart", metavar="NAME", help="mount only the series of a shared cart")
    parser.add_argument(
        "--listing-ttl",
        type=float,
        default=tree.listing_ttl,
        metavar="S",
        help="seconds a listing stays fresh (default %(default)s)",
    )
    parser.add_argument(
        "--negative-ttl",
        type=float,
        default=tree.negative_ttl,
        metavar="S",
        help="seconds an unknown name stays unknown (default %(default)s)",
    )
    parser.add_argument(
        "--readahead",
        type=int,
        default=tree.readahead,
        metavar="N",
        help="instances of a series fetched ahead of a sequential reader (0: off; default %(default)s)",
    )
    parser.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="FUSE mount options, e.g. -o allow_other",
    )


def parse_fuse_options(values: Sequence[str]) -> tuple[bool, dict[str, str | bool]]:
    """``(allow_other, other options)`` from ``-o`` values (``a,b=c``). ConfigError for ``rw``."""
    allow_other = False
    options: dict[str, str | bool] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, val = item.partition("=")
            if key == "rw":
                raise ConfigError("nbiafs is read-only: -o rw is not supported")
            if key == "allow_other":
                allow_other = True
            elif key != "ro":
                options[key] = val if sep else True
    return allow_other, options


def settings_from_args(
    args: argparse.Namespace, profile: ServerProfile, credentials: Credentials | None
) -> MountSettings:
    """The mount settings of the common options; reads the manifest; raises ConfigError for bad values."""
    if args.manifest and args.cart:
        raise ConfigError("give --manifest or --cart, not both")
    series_filter: frozenset[str] | None = None
    if args.manifest:
        series_filter = load_manifest(args.manifest).series_filter
        if not series_filter:
            raise ConfigError(f"manifest {args.manifest} lists no series")
    allow_other, options = parse_fuse_options(args.fuse_options)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else settings.default_cache_dir()
    return MountSettings(
        mountpoint=os.path.abspath(args.mountpoint),
        profile=profile,
        credentials=credentials,
        client=client_settings_from_args(args),
        tree=TreeSettings(
            layout=args.layout,
            collections=tuple(args.collection) if args.collection else None,
            series_filter=series_filter,
            listing_ttl=args.listing_ttl,
            negative_ttl=args.negative_ttl,
            readahead=args.readahead,
        ),
        cache=CacheSettings(directory=cache_dir.absolute(), max_bytes=parse_size(args.cache_size)),
        cart=args.cart,
        allow_other=allow_other,
        fuse_options=options,
    )


def run(args: argparse.Namespace) -> int:
    profile = profile_from_args(args)
    credentials = credentials_from_args(args, profile)
    mount_settings = settings_from_args(args, profile, credentials)
    if args.foreground:
        run_mount(mount_settings, on_ready=lambda: log.info("mounted at %s", mount_settings.mountpoint))
        return 0
    return daemonize(mount_settings)


def daemonize(settings: MountSettings, timeout: float = READY_TIMEOUT) -> int:
    """Fork; the child serves the mount; the parent returns 0 once it is ready, 1 (and a message) if not.

    Must be called before any thread is started: only the forking thread survives in the child.
    """
    from nbiafs.fuse.mount import check_mountpoint

    check_mountpoint(settings.mountpoint)  # fail early, in the foreground, for the common mistakes
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(settings, write_end)
    os.close(write_end)
    try:
        status, message = _wait_for_child(read_end, pid, timeout)
    finally:
        os.close(read_end)
    if status != "ready":
        print(f"nbiafs: mount failed: {message}", file=sys.stderr)
        return 1
    return 0


def _wait_for_child(fd: int, pid: int, timeout: float) -> tuple[str, str]:
    """``("ready", "")`` or ``("error", why)``, reading the child's one-line report with a deadline."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            return "error", f"not ready after {timeout:.0f} s (stopped it)"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    line = data.decode("utf-8", "replace").strip()
    if line == "ready":
        return "ready", ""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return "error", (line.removeprefix("error ") or "the mounting process ended without a word")


def _child(settings: MountSettings, fd: int) -> None:
    """The daemon: new session, log in, mount, report over ``fd``; exits the process, never returns."""
    status = 1
    reported = False

    def report(message: str) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        with contextlib.suppress(OSError):
            os.write(fd, (message.replace("\n", " ") + "\n").encode("utf-8", "replace"))
            os.close(fd)

    def on_ready() -> None:
        _detach_stdio()
        log.info("mounted at %s (pid %d)", settings.mountpoint, os.getpid())
        report("ready")

    try:
        os.setsid()
        os.chdir("/")
        run_mount(settings, on_ready=on_ready)
        status = 0
    except NbiaError as exc:
        log.error("%s", exc)
        report(f"error {exc}")
    except BaseException as exc:  # the parent must hear about anything, not wait for its deadline
        log.error("unexpected error: %s", traceback.format_exc())
        report(f"error unexpected {type(exc).__name__}: {exc}")
    finally:
        report("error the mount ended before it was ready")
        logging.shutdown()
        os._exit(status)


def _detach_stdio() -> None:
    """Point stdin, stdout and stderr at /dev/null, so the caller's pipes and terminal are released."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if null > 2:
        os.close(null)
