"""``nbiafs mount MOUNTPOINT``: mount an NBIA server as a read-only directory.

Without ``-f`` the command behaves like sshfs: it parses the options and reads the credentials in the calling
process, forks before any thread or HTTP client exists, and returns only once the mount answers (exit 0)
or the child has reported why it could not mount (its exit status, see :mod:`nbiafs.cli.status`). The child
runs in a session of its own with its standard streams on /dev/null, logging to syslog (the journal) unless
``--log-file`` is given. Unmounting (``nbiafs umount``) or SIGTERM/SIGINT/SIGHUP ends the process cleanly
(exit 0): the mount is unmounted, the client logs out, the caches close; operations hung on the server are
abandoned after a few seconds. Under systemd (``NOTIFY_SOCKET``) both forms report READY=1 and STOPPING=1.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbiafs import settings
from nbiafs.api.credentials import Credentials
from nbiafs.api.manifest import load_manifest
from nbiafs.api.profiles import PROFILE_NAMES, ServerProfile
from nbiafs.cli import service, status
from nbiafs.cli.logs import add_logging_options, use_syslog
from nbiafs.cli.options import (
    add_server_options,
    client_settings_from_args,
    credentials_from_args,
    profile_from_args,
)
from nbiafs.errors import ConfigError, NbiaError
from nbiafs.mounting import MountSettings, check_settings, run_mount
from nbiafs.settings import CacheSettings, TreeSettings, format_size, parse_size

if TYPE_CHECKING:
    from nbiafs.fuse.loop import LoopOutcome

log = logging.getLogger(__name__)

#: The default of ``-o max_threads`` (nbiafs.fuse.loop.MAX_THREADS; not imported: that loads libfuse).
MAX_THREADS = 64

#: Seconds the parent waits for the daemon to log in and mount before giving up on it.
READY_TIMEOUT = 120.0


MOUNT_HELP_EPILOG = """\
SOURCE names the server: a profile (tcia, nlst, tcia-v4, legacy-v3) or an API URL; "nbiafs" (or nothing)
means --server/--api-url or the default, tcia. As an /etc/fstab entry (mount(8) runs mount.fuse3, which runs
`nbiafs SOURCE MOUNTPOINT -o OPTIONS`; nbiafs must be on root's PATH):
  tcia  /mnt/tcia  fuse.nbiafs  ro,noauto,_netdev,cache_size=50G,collection=LIDC-IDRI  0 0

-o options (comma-separated, repeatable; `-o key=value` sets the flag of the same name, `-` or `_` alike):
  settings   cache_size, cache_dir, layout, collection (repeatable), manifest, cart, listing_ttl,
             negative_ttl, readahead, verify_md5, poll_interval, timeout, retries, server, api_url, token_url,
             user=NAME, credentials_file, log_file, share_restricted_data
  mounting   nonempty (mount over a non-empty directory), max_threads=N (operations served at once,
             default %(max_threads)d)
  FUSE       allow_other (every local user may read the mount; with an account other than the guest also
             needs share_restricted_data), allow_root, uid=N, gid=N, umask=M (owner and permissions
             shown), auto_unmount (unmount even if nbiafs is killed), default_permissions, debug, ...
  ignored    defaults, ro, rw (the mount is always read-only), auto, noauto, _netdev, nofail, user, users,
             x-*, comment=...
A background mount without --log-file logs to syslog (the journal), or nowhere if /dev/log does not exist.

%(status)s"""

#: The first word of ``nbiafs SOURCE MOUNTPOINT`` that means "the server named by the options".
DEFAULT_SOURCES = ("nbiafs", "none")

#: ``-o`` keys that set a command-line setting (key -> the argparse ``dest``); the rest are FUSE options.
SETTING_OPTIONS = {
    "cache_size": "cache_size",
    "cache_dir": "cache_dir",
    "layout": "layout",
    "collection": "collection",
    "manifest": "manifest",
    "cart": "cart",
    "listing_ttl": "listing_ttl",
    "negative_ttl": "negative_ttl",
    "readahead": "readahead",
    "verify_md5": "verify_md5",
    "poll_interval": "poll_interval",
    "timeout": "timeout",
    "retries": "retries",
    "server": "server",
    "api_url": "api_url",
    "token_url": "token_url",
    "user": "user",
    "credentials_file": "credentials_file",
    "log_file": "log_file",
    "share_restricted_data": "share_restricted",
}


class MountOptionAction(argparse.Action):
    """``-o a,b=c``: keys of :data:`SETTING_OPTIONS` set their flag's value (converted and checked as that
    flag's); the others are collected as FUSE options in ``fuse_options`` (a list of ``key[=value]``)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        fuse = list(getattr(namespace, self.dest, None) or [])
        actions = {a.dest: a for a in parser._actions}
        for item in str(values).split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.replace("-", "_")
            dest = SETTING_OPTIONS.get(key)
            if dest is None or (key == "user" and not sep):  # fstab's "user": any user may mount
                fuse.append(f"{key}{sep}{value}")
                continue
            action = actions[dest]
            if action.nargs == 0:  # a flag
                setattr(namespace, dest, True)
                continue
            if not sep:
                raise argparse.ArgumentError(self, f"-o {key} needs a value: -o {key}=...")
            converted = parser._get_value(action, value)
            parser._check_value(action, converted)
            if isinstance(action, argparse._AppendAction):
                setattr(namespace, dest, [*(getattr(namespace, dest, None) or []), converted])
            else:
                setattr(namespace, dest, converted)
        setattr(namespace, self.dest, fuse)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mount",
        help="mount an NBIA server as a read-only directory",
        description="Mount an NBIA server (TCIA by default) at MOUNTPOINT as "
        "Collection/Patient/Study/Series/<SOPInstanceUID>.dcm. Returns once the mount is ready, unless -f. "
        "SIGTERM, SIGINT, SIGHUP or `nbiafs umount` stop it (exit status 0).",
        epilog=MOUNT_HELP_EPILOG % {"status": status.EPILOG, "max_threads": MAX_THREADS},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", metavar="SOURCE", nargs="?", help="server profile or API URL (see below; default: tcia)"
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
        "--verify-md5",
        action="store_true",
        default=tree.verify_md5,
        help="check every instance downloaded alone (getSingleImage) against the server's MD5 of it: one more "
        "request each; a mismatch is an I/O error and nothing is cached (series ZIPs are always checked)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=tree.poll_interval,
        metavar="S",
        help="seconds between asking the server what it published since (getUpdatedSeries): new series "
        "appear within this time, with no remount (0: never ask; default %(default)s)",
    )
    parser.add_argument(
        "--share-restricted-data-with-all-users",
        dest="share_restricted",
        action="store_true",
        help="allow -o allow_other with an account other than the guest: every user of this machine can then "
        "read its restricted collections (-o share_restricted_data)",
    )
    parser.add_argument(
        "-o",
        dest="fuse_options",
        action=MountOptionAction,
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options: any setting as key=value (cache_size=50G, collection=NAME, ...), FUSE options "
        "(allow_other, uid=N, gid=N, umask=M, auto_unmount, nonempty); see below",
    )


def parse_fuse_options(values: Sequence[str]) -> tuple[bool, dict[str, str | bool]]:
    """``(allow_other, other options)`` from FUSE ``-o`` values (``a,b=c``)."""
    allow_other = False
    options: dict[str, str | bool] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, val = item.partition("=")
            if key == "allow_other":
                allow_other = True
            else:
                options[key] = val if sep else True
    return allow_other, options


def apply_source(args: argparse.Namespace) -> None:
    """Turn SOURCE into ``--server`` (a profile name) or ``--api-url`` (a URL); ConfigError otherwise."""
    source = getattr(args, "source", None)
    if not source or source in DEFAULT_SOURCES:
        return
    if source in PROFILE_NAMES:
        if args.server and args.server != source:
            raise ConfigError(f"SOURCE {source!r} and --server {args.server!r} name different servers")
        args.server = source
    elif "://" in source:
        if args.api_url and args.api_url != source:
            raise ConfigError(f"SOURCE {source!r} and --api-url {args.api_url!r} name different servers")
        args.api_url = source
    else:
        raise ConfigError(
            f"unknown SOURCE {source!r}: a server profile ({', '.join(PROFILE_NAMES)}) or an API URL"
        )


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
            poll_interval=args.poll_interval,
            verify_md5=args.verify_md5,
        ),
        cache=CacheSettings(directory=cache_dir.absolute(), max_bytes=parse_size(args.cache_size)),
        cart=args.cart,
        allow_other=allow_other,
        fuse_options=options,
        share_restricted=bool(getattr(args, "share_restricted", False)),
    )


def run(args: argparse.Namespace) -> int:
    service.take_socket()  # before anything could inherit NOTIFY_SOCKET
    apply_source(args)
    profile = profile_from_args(args)
    credentials = credentials_from_args(args, profile)
    mount_settings = settings_from_args(args, profile, credentials)
    check_settings(mount_settings)
    if args.foreground:
        status.stop_on_signals()
        return serve(mount_settings)
    return daemonize(mount_settings)


def serve(mount_settings: MountSettings, on_ready: Callable[[], None] | None = None) -> int:
    """Mount in this process until unmounted or signalled: exit status 0 (or ends the process, see
    :func:`end_after`); tells systemd (``NOTIFY_SOCKET``) when ready and when stopping."""
    mountpoint = mount_settings.mountpoint

    def ready() -> None:
        log.info("mounted at %s", mountpoint)
        service.ready(mountpoint)
        if on_ready is not None:
            on_ready()

    outcome = run_mount(mount_settings, on_ready=ready, on_stopping=service.stopping)
    end_after(outcome)
    return status.OK


def end_after(outcome: LoopOutcome, exit_status: int = status.OK) -> None:
    """If the mount left operations hung on the server, end the process now (their threads can never be
    joined; the caches are already closed, and the process's end aborts the FUSE connection)."""
    if not outcome.abandoned:
        return
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(exit_status)


def daemonize(settings: MountSettings, timeout: float = READY_TIMEOUT) -> int:
    """Fork; the child serves the mount; the parent returns 0 once it is ready, or the child's exit status
    (and its message) if it could not mount.

    Must be called before any thread is started: only the forking thread survives in the child.
    """
    import nbiafs.fuse.mount as fuse_mount  # loads libfuse: a missing one is reported here, in the foreground

    fuse_mount.check_mountpoint(
        settings.mountpoint, nonempty=bool(settings.fuse_options.get("nonempty"))
    )  # fail early, in the foreground, for the common mistakes
    fuse_mount.check_fuse_device()
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(settings, write_end)
    os.close(write_end)
    try:
        code, message = _wait_for_child(read_end, pid, timeout)
    finally:
        os.close(read_end)
    if code != status.OK:
        print(f"nbiafs: mount failed: {message}", file=sys.stderr)
    return code


def _wait_for_child(fd: int, pid: int, timeout: float) -> tuple[int, str]:
    """``(0, "")`` once ready, or ``(exit status, why)``, reading the child's one-line report with a deadline."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            return status.FAILURE, f"not ready after {timeout:.0f} s (stopped it)"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    line = data.decode("utf-8", "replace").strip()
    if line == "ready":
        return status.OK, ""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    _, code, message = (line.split(" ", 2) + ["", ""])[:3] if line.startswith("error ") else ("", "1", "")
    if not message:
        return status.FAILURE, "the mounting process ended without a word"
    return (int(code) if code.isdigit() else status.FAILURE), message


def _child(settings: MountSettings, fd: int) -> None:
    """The daemon: new session, log in, mount, report over ``fd``; exits the process, never returns."""
    exit_status = status.FAILURE
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
        use_syslog()
        log.info("mounted at %s (pid %d)", settings.mountpoint, os.getpid())
        service.ready(settings.mountpoint, pid=os.getpid())
        report("ready")

    try:
        os.setsid()
        os.chdir("/")
        status.stop_on_signals()
        outcome = run_mount(settings, on_ready=on_ready, on_stopping=service.stopping)
        exit_status = status.OK
        end_after(outcome)
    except NbiaError as exc:
        log.info("mount failed: %s", exc)  # the parent prints it
        exit_status = status.status_of(exc)
        report(f"error {exit_status} {exc}")
    except status.StopRequested:
        exit_status = status.OK
        report(f"error {status.FAILURE} stopped by a signal before the mount was ready")
    except BaseException as exc:  # the parent must hear about anything, not wait for its deadline
        log.error("unexpected error: %s", traceback.format_exc())
        report(f"error {status.FAILURE} unexpected {type(exc).__name__}: {exc}")
    finally:
        report(f"error {status.FAILURE} the mount ended before it was ready")
        logging.shutdown()
        os._exit(exit_status)


def _detach_stdio() -> None:
    """Point stdin, stdout and stderr at /dev/null, so the caller's pipes and terminal are released."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if null > 2:
        os.close(null)
