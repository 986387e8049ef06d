"""Mounting an :class:`~nbiafs.fs.tree.ArchiveTree`: the mountpoint checks, the FUSE options, libfuse's loop."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from nbiafs.errors import ConfigError, MountError
from nbiafs.fuse.adapter import ATTR_TIMEOUT, NEGATIVE_TIMEOUT, NbiaFuse, kernel_timeout
from nbiafs.fuse.library import mfusepy
from nbiafs.fuse.loop import MAX_THREADS, LoopControl, LoopOutcome, patched_main
from nbiafs.fuse.mounttable import check_mountpoint

if TYPE_CHECKING:
    from nbiafs.fs.tree import ArchiveTree

__all__ = ["LoopOutcome", "MountError", "check_fuse_device", "check_mountpoint", "fuse_options", "mount"]

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"

#: Options mount(8) and /etc/fstab pass that mean nothing to a FUSE mount: accepted and dropped.
IGNORED_OPTIONS = frozenset(
    {"defaults", "auto", "noauto", "_netdev", "user", "users", "nouser", "owner", "nofail", "rw", "ro"}
)
IGNORED_PREFIXES = ("x-", "comment=")

#: What libfuse's ``fuse_main`` (and :mod:`nbiafs.fuse.loop`) return, by cause.
LIBFUSE_ERRORS = {
    1: "libfuse rejected an option (see its message above)",
    2: "no mountpoint was given to libfuse",
    3: "libfuse could not set up the file system: an unknown or invalid -o option? (see its message above)",
    4: "the kernel refused the mount (see the message above): the mountpoint may not be a directory, not be "
    "yours, or be mounted already; /dev/fuse may be unusable; allow_other needs user_allow_other in "
    "/etc/fuse.conf",
    5: "libfuse could not go to the background",
    6: "libfuse could not install its signal handlers",
    7: "the FUSE event loop failed",
    8: "the FUSE event loop ended with an error",
}


def check_fuse_device(device: str = FUSE_DEVICE) -> None:
    """MountError naming the fix if the FUSE device is missing or not readable and writable by us."""
    if not os.path.exists(device):
        raise MountError(
            f"{device} does not exist: load the kernel module (sudo modprobe fuse); in a container, pass the "
            f"device (docker run --device {device} --cap-add SYS_ADMIN ...)"
        )
    if not os.access(device, os.R_OK | os.W_OK):
        raise MountError(
            f"no permission to open {device}: ask an administrator to make it usable (mode 0666, as the fuse3 "
            f"package sets it), or to add you to the group that owns it; in a container, pass --device {device}"
        )


def fuse_options(
    *,
    allow_other: bool = False,
    extra: Mapping[str, str | bool] | None = None,
    timeout: float = ATTR_TIMEOUT,
) -> dict[str, str | bool | float]:
    """The mount options nbiafs always uses, plus ``allow_other`` and ``-o`` extras (``key[=value]``).

    ``timeout``: the seconds the kernel keeps attributes and names (see
    :func:`~nbiafs.fuse.adapter.kernel_timeout`); ``-o attr_timeout=``/``entry_timeout=`` override it.

    The options of mount(8) and fstab that mean nothing here (``defaults``, ``noauto``, ``_netdev``, ``user``,
    ``nofail``, ``rw``/``ro``: the mount is always read-only, ``x-*``...) are dropped.
    """
    options: dict[str, str | bool | float] = {
        "ro": True,
        "default_permissions": True,
        "fsname": "nbiafs",
        "subtype": "nbiafs",
        "attr_timeout": timeout,
        "entry_timeout": timeout,
        "negative_timeout": NEGATIVE_TIMEOUT,
    }
    if allow_other:
        options["allow_other"] = True
    for key, value in (extra or {}).items():
        if key in IGNORED_OPTIONS or key.startswith(IGNORED_PREFIXES):
            if key == "rw":
                log.info("option rw ignored: nbiafs is read-only")
            continue
        options[key] = value
    return options


def mount(
    tree: ArchiveTree,
    mountpoint: str,
    *,
    allow_other: bool = False,
    options: Mapping[str, str | bool] | None = None,
    ready_callback: Callable[[], None] | None = None,
    stopping_callback: Callable[[], object] | None = None,
    debug: bool = False,
) -> LoopOutcome:
    """Mount ``tree`` at ``mountpoint`` and serve it until unmounted or signalled (SIGINT, SIGTERM, SIGHUP).

    Runs libfuse's multithreaded loop in the calling process (never libfuse's own daemonising, which forks
    after threads may exist; ``nbiafs mount`` forks before that). ``ready_callback`` is called from a helper
    thread once the mount answers, ``stopping_callback`` when it begins to stop. ``options`` may hold
    ``nonempty`` (mount over a non-empty directory) and ``max_threads`` besides FUSE's own options. Returns how
    the mount ended (see :class:`LoopOutcome`: abandoned operations mean the process should end soon). Raises
    MountError if the mountpoint is unusable or libfuse fails to mount, ConfigError for a bad option.
    """
    extra = dict(options or {})
    nonempty = bool(extra.pop("nonempty", False))
    try:
        max_threads = int(extra.pop("max_threads", MAX_THREADS))
    except ValueError:
        raise ConfigError("-o max_threads takes a number of threads") from None
    if not 1 <= max_threads <= 100_000:
        raise ConfigError(f"-o max_threads must be between 1 and 100000, not {max_threads}")
    path = check_mountpoint(mountpoint, nonempty=nonempty)
    check_fuse_device()
    ops = NbiaFuse(tree, mountpoint=path, ready_callback=ready_callback)
    kwargs = fuse_options(
        allow_other=allow_other, extra=extra, timeout=kernel_timeout(tree.settings.listing_ttl)
    )
    control = LoopControl(max_threads=max_threads, on_stopping=stopping_callback)
    log.info("mounting at %s with options %s", path, ",".join(f"{k}={v}" for k, v in kwargs.items()))
    with patched_main(control) as ours:
        if not ours:
            log.info(
                "libfuse %s: its own loop runs the mount (at most 10 threads)", mfusepy.fuse_version_major
            )
        try:
            mfusepy.FUSE(ops, path, foreground=True, nothreads=False, debug=debug, raw_fi=True, **kwargs)
        except RuntimeError as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
            if code == 8 and not ours:  # fuse_main_real's status after a stop by signal: a clean end
                log.info("unmounted %s (stopped by a signal)", path)
                return control.outcome
            why = LIBFUSE_ERRORS.get(code, f"libfuse error {exc}")
            raise MountError(f"could not mount {path}: {why} (libfuse status {code})") from None
    log.info("unmounted %s", path)
    return control.outcome
