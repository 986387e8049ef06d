"""Which libfuse nbiafs loads, the one libfuse call mfusepy does not wrap (``fuse_invalidate_path``), and
:func:`adopt_thread`, which keeps a libfuse worker thread's Python thread state.

mfusepy chooses its library when it is imported: ``FUSE_LIBRARY_PATH``, else ``FUSE_LIBRARY_NAME``, else libfuse2
before libfuse3. nbiafs prefers libfuse3 (the maintained one, with ``fuse_invalidate_path``) unless the user
chose: the choice is passed to mfusepy's import through its environment variable, which is restored right
after, so nothing else in the process sees it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from ctypes.util import find_library
from typing import Any

from nbiafs.errors import FuseUnavailableError

__all__ = [
    "CAN_INVALIDATE",
    "FUSE_MAJOR",
    "FuseUnavailableError",
    "adopt_thread",
    "invalidate_path",
    "mfusepy",
]

log = logging.getLogger(__name__)


_USER_CHOICE = os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME")
_LIBRARY_PATH = None if _USER_CHOICE else find_library("fuse3")
"""The libfuse nbiafs asked mfusepy to load (None: the user's or mfusepy's own choice)."""


INSTALL_HINT = (
    "install libfuse 3: Debian/Ubuntu: sudo apt-get install fuse3; Fedora/RHEL: sudo dnf install fuse3 "
    "fuse3-libs; openSUSE: sudo zypper install fuse3; Arch: sudo pacman -S fuse3"
)

if _LIBRARY_PATH:
    os.environ["FUSE_LIBRARY_PATH"] = _LIBRARY_PATH
try:
    import mfusepy
except (
    OSError,
    AttributeError,
) as _exc:  # mfusepy: OSError("Unable to find libfuse"); too old: AttributeError
    raise FuseUnavailableError(
        f"libfuse is not installed or cannot be loaded ({_exc}): {INSTALL_HINT}"
    ) from None
finally:
    if _LIBRARY_PATH:
        del os.environ["FUSE_LIBRARY_PATH"]

FUSE_MAJOR: int = int(mfusepy.fuse_version_major)
"""2 or 3: the major version of the libfuse in use."""


class _FuseContext(ctypes.Structure):
    # struct fuse_context begins with ``struct fuse *fuse`` in libfuse 2 and 3; only that field is read.
    _fields_ = [("fuse", ctypes.c_void_p)]


def _load_invalidate() -> tuple[ctypes.CDLL, Any] | None:
    """Our own handle on the same libfuse mfusepy loaded (dlopen shares it), with fuse_invalidate_path."""
    if FUSE_MAJOR != 3 or _LIBRARY_PATH is None:
        return None
    lib = ctypes.CDLL(_LIBRARY_PATH)
    invalidate = getattr(lib, "fuse_invalidate_path", None)
    if invalidate is None:
        return None
    lib.fuse_get_context.restype = ctypes.POINTER(_FuseContext)
    invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    invalidate.restype = ctypes.c_int
    return lib, invalidate


_INVALIDATE = _load_invalidate()

CAN_INVALIDATE: bool = _INVALIDATE is not None
"""Whether :func:`invalidate_path` can drop the kernel's cached attributes (libfuse 3 loaded by nbiafs)."""


def invalidate_path(path: str) -> None:
    """Drop the kernel's cached attributes and data of ``path`` (libfuse 3 only; a no-op elsewhere).

    Must be called from a thread that is serving a FUSE request (it reads the request's context).
    """
    if _INVALIDATE is None:
        return
    lib, invalidate = _INVALIDATE
    fuse_ptr = lib.fuse_get_context().contents.fuse
    if not fuse_ptr:
        return
    rc = invalidate(fuse_ptr, path.encode("utf-8", "surrogateescape"))
    if rc not in (0, -errno.ENOENT):
        log.debug("fuse_invalidate_path(%s) returned %d", path, rc)


_THREAD = threading.local()


def adopt_thread() -> None:
    """Keep the calling thread's Python thread state until the thread ends (call it from every operation).

    libfuse's worker threads are not Python's, so each ctypes callback from one creates a thread state and
    destroys it on return (an mmap, a munmap, a gettid and a futex handoff per request: about 60 us of each
    FUSE round trip on a small VM). One more ``PyGILState_Ensure``, never released, keeps the state alive, so
    later callbacks of the thread only take the GIL. The workers live as long as the mount (libfuse 3 keeps
    idle ones), so the states are few and never leak. Written by hand: ctypes has no option for this.
    """
    if getattr(_THREAD, "adopted", False):
        return
    ctypes.pythonapi.PyGILState_Ensure()
    _THREAD.adopted = True
