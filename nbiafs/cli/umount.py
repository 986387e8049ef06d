"""``nbiafs umount MOUNTPOINT``: unmount an nbiafs mount (``fusermount3 -u``, or ``umount`` as root).

The serving process notices the unmount, logs out and exits by itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from nbiafs.cli.logs import add_logging_options
from nbiafs.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds an unmount tool may take.
UMOUNT_TIMEOUT = 30.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "umount",
        help="unmount an nbiafs mount",
        description="Unmount MOUNTPOINT (fusermount3 -u, or umount as root); its nbiafs process then exits.",
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
    target = os.path.realpath(mountpoint)
    found: str | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5 and _unescape(fields[4]) == target:
                    found = right.split()[0] if right.split() else ""
    except OSError:
        return "unknown" if os.path.ismount(target) else None
    return found


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount ``mountpoint``; raises ConfigError if it is not mounted or the unmount tool fails."""
    path = os.path.abspath(mountpoint)
    kind = mount_type(path)
    if kind is None:
        raise ConfigError(f"{path} is not mounted")
    if kind not in ("fuse.nbiafs", "fuse", "unknown"):
        log.warning("%s is a %s mount, not nbiafs; unmounting it anyway", path, kind)
    commands: list[list[str]] = []
    for tool in ("fusermount3", "fusermount"):
        exe = shutil.which(tool)
        if exe:
            commands.append([exe, "-uz" if lazy else "-u", "--", path])
            break
    if os.geteuid() == 0 and shutil.which("umount"):
        commands.append(["umount", *(["-l"] if lazy else []), "--", path])
    if not commands:
        raise ConfigError("neither fusermount3 nor fusermount is installed: cannot unmount")
    errors: list[str] = []
    for cmd in commands:
        log.info("running %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=UMOUNT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            errors.append(f"{cmd[0]} did not finish within {UMOUNT_TIMEOUT:.0f} s")
            continue
        if done.returncode == 0:
            return
        errors.append(
            (done.stderr or done.stdout).strip() or f"{cmd[0]} exited with status {done.returncode}"
        )
    hint = "" if lazy else " (busy? close the files open in it, or use --lazy)"
    raise ConfigError(f"cannot unmount {path}: {'; '.join(errors)}{hint}")


def run(args: argparse.Namespace) -> int:
    unmount(args.mountpoint, lazy=args.lazy)
    if args.verbose:
        print(f"unmounted {os.path.abspath(args.mountpoint)}", file=sys.stderr)
    return 0
