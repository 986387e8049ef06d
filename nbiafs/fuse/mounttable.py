"""The kernel's mount table (/proc/self/mountinfo), read without touching any mounted file system.

A FUSE mount whose process hangs makes every stat of its mountpoint hang, and one whose process died answers
"Transport endpoint is not connected". So nothing here stats a mountpoint: paths are resolved through their
parent directory only, and :func:`probe` stats in a helper thread with a deadline. No libfuse needed.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import threading
from dataclasses import dataclass

from nbiafs.errors import MountError

MOUNTINFO = "/proc/self/mountinfo"
FSTYPE = "fuse.nbiafs"


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: the mount's id, ``major:minor``, mountpoint, file system type and source."""

    mount_id: int
    device: str
    mountpoint: str
    fstype: str
    source: str


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def entries(mountinfo: str = MOUNTINFO) -> list[MountEntry]:
    """Every mount of this process's namespace, in mount order (later entries stack on earlier ones)."""
    found: list[MountEntry] = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or not tail:
                continue
            found.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    device=fields[2],
                    mountpoint=_unescape(fields[4]),
                    fstype=tail[0],
                    source=_unescape(tail[1]) if len(tail) > 1 else "",
                )
            )
    return found


def mount_ids() -> set[int]:
    """The ids of every current mount (empty if the table cannot be read)."""
    try:
        return {e.mount_id for e in entries()}
    except OSError:
        return set()


def resolve(path: str) -> str:
    """``path`` absolute, symlinks resolved in its parent only: the path itself is never looked up."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    if not name:
        return absolute
    return os.path.join(os.path.realpath(parent), name)


def find_mount(path: str) -> MountEntry | None:
    """The mount on top at ``path`` (resolved with :func:`resolve`), or None if nothing is mounted there."""
    target = resolve(path)
    found = None
    for entry in entries():
        if entry.mountpoint == target:
            found = entry
    return found


def probe(path: str, timeout: float = 2.0) -> int | None:
    """Open the directory ``path`` in a helper thread (a stat may be answered from the kernel's cache; an open
    always reaches the file system): None if it answered, its errno if it failed (``ENOTCONN``: a dead FUSE
    mount), ``ETIMEDOUT`` if it did not answer within ``timeout`` seconds (a hung one; the thread is left)."""
    result: list[int | None] = []

    def stat() -> None:
        try:
            os.close(os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)))
            result.append(None)
        except OSError as exc:
            result.append(exc.errno or errno.EIO)

    thread = threading.Thread(target=stat, name="nbiafs-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else errno.ETIMEDOUT


def check_mountpoint(mountpoint: str, *, nonempty: bool = False) -> str:
    """The absolute mountpoint; MountError (with the command that helps) if nbiafs cannot mount there: a mount
    already there (dead, hung or live), not a directory, or not empty (unless ``nonempty``)."""
    path = resolve(mountpoint)
    quoted = shlex.quote(path)
    try:
        entry = find_mount(path)
    except OSError:
        entry = None
    if entry is not None:
        state = probe(path)
        if entry.fstype == FSTYPE:
            if state == errno.ENOTCONN:
                raise MountError(
                    f"{path} is a dead nbiafs mount (its process ended); clear it with: nbiafs umount {quoted}"
                )
            if state == errno.ETIMEDOUT:
                raise MountError(
                    f"{path} is an nbiafs mount that does not answer; clear it with: nbiafs umount --lazy {quoted}"
                )
            raise MountError(
                f"{path} is already an nbiafs mount; unmount it first with: nbiafs umount {quoted}"
            )
        if state == errno.ENOTCONN and entry.fstype.startswith("fuse"):
            raise MountError(
                f"{path} is a dead {entry.fstype} mount; clear it with: fusermount3 -uz {quoted}"
            )
        raise MountError(f"{path} is already a mount point ({entry.fstype}); choose another directory")
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise MountError(f"mountpoint {path} is not a directory")
        raise MountError(f"mountpoint {path} is not a directory (it does not exist: mkdir -p {quoted})")
    if not nonempty:
        try:
            not_empty = any(True for _ in os.scandir(path))
        except OSError:
            not_empty = False
        if not_empty:
            raise MountError(
                f"mountpoint {path} is not empty: the mount would hide its files; choose an empty directory, "
                "or give -o nonempty to mount over them"
            )
    return path
