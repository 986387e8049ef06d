"""``nbiafs umount MOUNTPOINT``: unmount an nbiafs mount (``umount2`` as root, else ``fusermount3 -u``).

It never looks into the mount first: what is mounted where comes from /proc/self/mountinfo, so a mount whose
process hangs cannot hang this command. It refuses anything that is not an nbiafs mount (``fuse.nbiafs``). A
dead mount (its process gone: "Transport endpoint is not connected") is detached lazily, and said so. The
serving process notices the unmount and exits by itself (within seconds, even with downloads hanging).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import shlex
import shutil
import subprocess
import sys
from typing import Any

from nbiafs.cli.logs import add_logging_options
from nbiafs.errors import MountError
from nbiafs.fuse.mounttable import FSTYPE, find_mount, probe, resolve

log = logging.getLogger(__name__)

#: Seconds an unmount tool may take.
UMOUNT_TIMEOUT = 10.0
MNT_DETACH = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "umount",
        help="unmount an nbiafs mount",
        description="Unmount the nbiafs mount at MOUNTPOINT; its nbiafs process then exits. Refuses other "
        "file systems; clears a dead nbiafs mount (its process gone) with a lazy unmount.",
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument(
        "-z", "--lazy", action="store_true", help="lazy unmount: detach now, even if files are still open"
    )
    add_logging_options(parser)
    parser.set_defaults(func=run)


def mount_type(mountpoint: str) -> str | None:
    """The file system type mounted at ``mountpoint`` (e.g. ``fuse.nbiafs``), from /proc/self/mountinfo.

    Reads no file in the mount, so it cannot hang on a stuck FUSE server. None if nothing is mounted there.
    """
    try:
        entry = find_mount(mountpoint)
    except OSError:
        return None
    return entry.fstype if entry is not None else None


def _umount2(path: str, flags: int) -> str | None:
    """The umount2 system call (root); None if done, else why not."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), flags) == 0:
        return None
    code = ctypes.get_errno()
    return f"umount2: {os.strerror(code)}" + (" (busy)" if code == errno.EBUSY else "")


def _fusermount(path: str, lazy: bool) -> str | None:
    """``fusermount3 -u`` (or ``-uz``); None if done, else why not."""
    exe = shutil.which("fusermount3") or shutil.which("fusermount")
    if exe is None:
        return "neither fusermount3 nor fusermount is installed: cannot unmount"
    cmd = [exe, "-uz" if lazy else "-u", "--", path]
    log.info("running %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=UMOUNT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return f"{os.path.basename(exe)} did not finish within {UMOUNT_TIMEOUT:.0f} s"
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip() or f"{exe} exited with status {done.returncode}"


def _unmount_once(path: str, lazy: bool) -> str | None:
    if os.geteuid() == 0:
        return _umount2(path, MNT_DETACH if lazy else 0)
    return _fusermount(path, lazy)


def unmount(mountpoint: str, *, lazy: bool = False) -> str:
    """Unmount the nbiafs mount at ``mountpoint``; returns what was done. MountError if nothing or something
    else is mounted there, or if the unmount fails (busy: with the hint to use ``--lazy``)."""
    path = resolve(mountpoint)
    kind = mount_type(path)
    if kind is None:
        raise MountError(f"{path} is not mounted")
    if kind != FSTYPE:
        raise MountError(
            f"{path} is a {kind} mount, not nbiafs: left alone (unmount it with umount(8) if that is meant)"
        )
    why = _unmount_once(path, lazy)
    if why is None:
        return f"detached {path} (lazy unmount)" if lazy else f"unmounted {path}"
    if mount_type(path) != FSTYPE:
        return f"unmounted {path}"
    state = probe(path, timeout=1.0)
    if state == errno.ENOTCONN or "not connected" in why:
        again = _unmount_once(path, True)
        if again is None:
            return f"cleared the dead nbiafs mount at {path} (its process had ended) with a lazy unmount"
        why = f"{why}; {again}"
    hint = (
        ""
        if lazy
        else f" (busy: files are open in it or operations are under way; `nbiafs umount --lazy {shlex.quote(path)}` "
        "detaches it now, and its process then ends within seconds)"
    )
    raise MountError(f"cannot unmount {path}: {why}{hint}")


def run(args: argparse.Namespace) -> int:
    done = unmount(args.mountpoint, lazy=args.lazy)
    if args.verbose or not done.startswith("unmounted"):
        print(f"nbiafs: {done}", file=sys.stderr)
    return 0
