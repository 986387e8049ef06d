"""Mounting an :class:`~nbiafs.fs.tree.ArchiveTree`: the mountpoint checks, the FUSE options, libfuse's loop."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from nbiafs.errors import ConfigError
from nbiafs.fuse.adapter import ATTR_TIMEOUT, ENTRY_TIMEOUT, NEGATIVE_TIMEOUT, NbiaFuse
from nbiafs.fuse.library import mfusepy

if TYPE_CHECKING:
    from nbiafs.fs.tree import ArchiveTree

log = logging.getLogger(__name__)


def check_mountpoint(mountpoint: str) -> str:
    """The absolute mountpoint; raises ConfigError if it is not an empty-enough directory we can mount on."""
    path = os.path.abspath(mountpoint)
    if not os.path.isdir(path):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise ConfigError(f"{path} is already a mount point")
    return path


def fuse_options(
    *, allow_other: bool = False, extra: Mapping[str, str | bool] | None = None
) -> dict[str, str | bool | float]:
    """The mount options nbiafs always uses, plus ``allow_other`` and ``-o`` extras (``key[=value]``)."""
    options: dict[str, str | bool | float] = {
        "ro": True,
        "default_permissions": True,
        "fsname": "nbiafs",
        "subtype": "nbiafs",
        "attr_timeout": ATTR_TIMEOUT,
        "entry_timeout": ENTRY_TIMEOUT,
        "negative_timeout": NEGATIVE_TIMEOUT,
    }
    if allow_other:
        options["allow_other"] = True
    if extra:
        for key, value in extra.items():
            if key in ("rw",):
                raise ConfigError("nbiafs is read-only: option 'rw' is not supported")
            options[key] = value
    return options


def mount(
    tree: ArchiveTree,
    mountpoint: str,
    *,
    allow_other: bool = False,
    options: Mapping[str, str | bool] | None = None,
    ready_callback: Callable[[], None] | None = None,
    debug: bool = False,
) -> None:
    """Mount ``tree`` at ``mountpoint`` and serve it until unmounted or signalled (SIGINT, SIGTERM, SIGHUP).

    Runs libfuse's multithreaded loop in the calling process (never libfuse's own daemonising, which forks
    after threads may exist; ``nbiafs mount`` forks before that). ``ready_callback`` is called from a helper
    thread once the mount answers. Raises ConfigError if the mountpoint is unusable or libfuse fails to mount.
    """
    path = check_mountpoint(mountpoint)
    ops = NbiaFuse(tree, mountpoint=path, ready_callback=ready_callback)
    kwargs = fuse_options(allow_other=allow_other, extra=options)
    log.info("mounting at %s with options %s", path, ",".join(f"{k}={v}" for k, v in kwargs.items()))
    try:
        mfusepy.FUSE(ops, path, foreground=True, nothreads=False, debug=debug, raw_fi=True, **kwargs)
    except RuntimeError as exc:
        raise ConfigError(f"could not mount {path} (libfuse error {exc}); see the messages above") from None
    log.info("unmounted %s", path)
