"""The FUSE adapter: :class:`NbiaFuse` turns kernel requests into :class:`~nbiafs.fs.tree.ArchiveTree` calls.

This is the one place where exceptions become errno values (docs/semantics.md, "Errors"):
``NotFoundError`` -> ``ENOENT``, ``AccessDeniedError`` -> ``EACCES``, any other ``NbiaError`` (timeouts,
server errors, ...) -> ``EIO``, an unexpected exception -> ``EIO`` with its traceback logged. The mount is
``ro``, so the kernel answers every write-type operation with ``EROFS`` before it reaches us (mfusepy's
defaults answer EROFS too). The adapter holds no naming or caching logic: paths, sizes, times and xattrs come
from the tree (its warm path: :meth:`ArchiveTree.fast_lookup`, ``fast_xattr``, ``open_cached``); the one thing
it remembers is which paths the kernel cannot hold an estimated size for (see :class:`NbiaFuse`).

The warm path. Instances never change, so the kernel keeps their pages (``keep_cache``) and their attributes
and names for long (:func:`kernel_timeout`); an open file is a bare file descriptor of the cached copy
(``fi.fh``: ``pread`` in read, ``close`` in release, no Python state per open); extended attributes other than
``user.nbia*`` (``security.selinux``, ``system.posix_acl_*``, which ``ls -l`` probes on every entry) are
``ENODATA`` at once.

Importing this module loads libfuse (:mod:`nbiafs.fuse.library`); import it only when a mount is wanted.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cachetools import TTLCache

from nbiafs.errors import AccessDeniedError, NbiaError, NotFoundError
from nbiafs.fuse.library import CAN_INVALIDATE, adopt_thread, invalidate_path, mfusepy

if TYPE_CHECKING:
    from nbiafs.fs.tree import ArchiveTree

log = logging.getLogger(__name__)

#: Seconds the kernel may keep attributes and name lookups at most (see :func:`kernel_timeout`).
ATTR_TIMEOUT = 86400.0
ENTRY_TIMEOUT = 86400.0
#: ... where the kernel's cached attributes cannot be invalidated (libfuse 2): estimated sizes must age out.
SHORT_TIMEOUT = 5.0
NEGATIVE_TIMEOUT = 2.0
#: Paths remembered as opened since the kernel was last shown an estimate for them (more: forgotten at once,
#: which costs one invalidation per path at its next open, never a wrong size).
_OPENED_MAX = 200_000
#: Extended attributes the tree may have; any other name (security.*, system.*, trusted.*) is ENODATA at once.
_XATTR_PREFIX = "user.nbia"
#: Seconds the ready callback waits for the mount to answer a stat of its root.
READY_DEADLINE = 30.0

_ENODATA = getattr(mfusepy, "ENOATTR", None) or errno.ENODATA
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_MODE = stat.S_IFDIR | 0o555
_FILE_MODE = stat.S_IFREG | 0o444
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

F = TypeVar("F", bound=Callable[..., Any])


def kernel_timeout(listing_ttl: float) -> float:
    """Seconds the kernel may keep attributes and names (libfuse's high-level API has one value per mount).

    Instances never change and the size the kernel holds for one is made exact by an invalidation when it is
    opened (see :class:`NbiaFuse`), so only directories bound it: a name the tree dropped from a listing may
    stay reachable in the kernel this long, so it is the listing TTL (at most a day). New names are never
    hidden: the kernel keeps a missing name for ``NEGATIVE_TIMEOUT`` only. Without invalidation (libfuse 2)
    an estimated size must age out quickly: ``SHORT_TIMEOUT``.
    """
    if not CAN_INVALIDATE:
        return min(SHORT_TIMEOUT, max(0.0, listing_ttl))
    return min(ATTR_TIMEOUT, max(0.0, listing_ttl))


def _errno_boundary(func: F) -> F:
    """Turn every exception raised by an operation into an errno: an NbiaError's own ``errno`` (see
    :mod:`nbiafs.errors`), EIO with a logged traceback for anything unexpected. Also keeps the worker
    thread's Python state (:func:`~nbiafs.fuse.library.adopt_thread`)."""

    @functools.wraps(func)
    def wrapper(self: NbiaFuse, path: str | None, *args: Any) -> Any:
        adopt_thread()
        try:
            return func(self, path, *args)
        except mfusepy.FuseOSError:
            raise
        except NotFoundError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        except NbiaError as exc:
            level = logging.INFO if isinstance(exc, AccessDeniedError) else logging.WARNING
            log.log(level, "%s %s: %s: %s", func.__name__, path, type(exc).__name__, exc)
            raise mfusepy.FuseOSError(exc.errno) from None
        except Exception:
            log.exception("%s %s: unexpected error", func.__name__, path)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return cast(F, wrapper)


class NbiaFuse(mfusepy.Operations):  # type: ignore[misc]  # mfusepy ships no type information
    """Read-only FUSE operations over an :class:`ArchiveTree` (meant for ``mfusepy.FUSE(..., raw_fi=True)``).

    Open files are file descriptors of the instance's copy in the disk cache (``fi.fh``); reads are ``pread``
    on them, so a file stays readable even if the cache evicts or clears it while open.

    Estimated sizes. Until an instance is cached, getattr shows an estimate, which may be smaller than the
    file. The first open of a path, and the first after an estimate was shown for it, drops the kernel's
    cached attributes (and pages) of the path (``fuse_invalidate_path``), so the ``fstat`` a reader makes
    after opening, and any read past the estimate, fetch the exact size; the page cache is kept
    (``keep_cache``). Later opens of the path skip the invalidation and keep the kernel's pages. Where
    libfuse cannot invalidate (libfuse 2), a handle opened after an estimate was shown uses direct I/O
    instead, as before, and the kernel keeps attributes for ``SHORT_TIMEOUT`` only.
    """

    use_ns = True  # times in getattr are integer nanoseconds

    def __init__(
        self,
        tree: ArchiveTree,
        *,
        mountpoint: str | None = None,
        ready_callback: Callable[[], None] | None = None,
    ) -> None:
        self.tree = tree
        self.mountpoint = mountpoint
        self.ready_callback = ready_callback
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.invalidate = CAN_INVALIDATE
        # Paths opened (and their kernel attributes invalidated) since an estimate was last shown for them:
        # their next open needs no invalidation. A set (its add/discard/in are atomic): getattr discards a
        # path before it shows an estimate; cleared when full (then paths are invalidated once more).
        self._opened: set[str] = set()
        # Without invalidation: paths whose size was shown as an estimate; their first open after the fetch
        # uses direct I/O. The kernel forgets attributes after SHORT_TIMEOUT, so a TTL cache bounds this.
        self._estimated: TTLCache[str, bool] = TTLCache(maxsize=1_000_000, ttl=2 * SHORT_TIMEOUT)
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def init(self, path: str) -> None:
        """Called once libfuse has mounted; reports readiness once the root answers a stat."""
        if self.ready_callback is None:
            return
        threading.Thread(target=self._wait_ready, name="nbiafs-ready", daemon=True).start()

    def _wait_ready(self) -> None:
        assert self.ready_callback is not None
        deadline = time.monotonic() + READY_DEADLINE
        while self.mountpoint and not os.path.ismount(self.mountpoint) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            self.ready_callback()
        except Exception:
            log.exception("ready callback failed")

    # -- metadata --------------------------------------------------------------------------------------------

    @_errno_boundary
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        node = self.tree.fast_lookup(path)
        mtime_ns = int(node.mtime * 1e9)
        if node.is_dir:
            # nlink 1: "subdirectories not counted", so find(1) makes no leaf optimisation.
            return {
                "st_mode": _DIR_MODE,
                "st_nlink": 1,
                "st_size": 0,
                "st_uid": self.uid,
                "st_gid": self.gid,
                "st_atime": mtime_ns,
                "st_mtime": mtime_ns,
                "st_ctime": mtime_ns,
            }
        size = node.size
        if fh is not None and fh.fh:
            size = os.fstat(fh.fh).st_size  # an open file is in the cache: its size is exact
        elif not node.exact_size:
            if self.invalidate:
                self._opened.discard(path)  # before the estimate is shown: its next open invalidates
            else:
                with self._lock:
                    self._estimated[path] = True
        return {
            "st_mode": _FILE_MODE,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_atime": mtime_ns,
            "st_mtime": mtime_ns,
            "st_ctime": mtime_ns,
        }

    @_errno_boundary
    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *self.tree.listdir(path)]

    @_errno_boundary
    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK:
            raise mfusepy.FuseOSError(errno.EROFS)
        self.tree.fast_lookup(path)
        return 0

    @_errno_boundary
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        # The kernel asks only for paths it has looked up: an unknown name needs no look at the tree.
        if not name.startswith(_XATTR_PREFIX):
            raise mfusepy.FuseOSError(_ENODATA)
        value = self.tree.fast_xattr(path, name)
        if value is None:
            raise mfusepy.FuseOSError(_ENODATA)
        return value

    @_errno_boundary
    def listxattr(self, path: str) -> Iterable[str]:
        return list(self.tree.xattrs(path))

    @_errno_boundary
    def statfs(self, path: str) -> dict[str, int]:
        # The archive's size is unknown and nothing can be written: report no blocks, only the name limit.
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    # -- files -----------------------------------------------------------------------------------------------

    @_errno_boundary
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & _WRITE_FLAGS:
            raise mfusepy.FuseOSError(errno.EROFS)
        fd, kept = self._open_cached(path)
        if self.invalidate and not kept and not self.tree.fast_lookup(path).exact_size:
            # Served but not kept (larger than the whole cache): the tree goes on showing an estimate, which
            # the kernel may hold: bypass its page cache for this handle.
            invalidate_path(path)
            self._opened.discard(path)
            fi.direct_io = 1
            fi.keep_cache = 0
        elif self.invalidate:
            if path not in self._opened:
                # The kernel may hold an estimate smaller than the file: drop its attributes (and the pages,
                # none yet) so the fstat after this open, and a read past the estimate, see the exact size.
                invalidate_path(path)
                if len(self._opened) >= _OPENED_MAX:
                    self._opened.clear()
                self._opened.add(path)
            fi.keep_cache = 1
        else:
            with self._lock:
                shown_estimate = self._estimated.pop(path, None) is not None
            if shown_estimate:
                fi.direct_io = 1  # bypass the page cache: the kernel's size may be too small
                fi.keep_cache = 0
            else:
                fi.keep_cache = 1
        fi.fh = fd
        return 0

    def _open_cached(self, path: str) -> tuple[int, bool]:
        """Open the instance's cached file (fetched into the disk cache first if needed); retried if evicted
        in between. Returns the descriptor and whether the file was found in the cache without a fetch."""
        for attempt in range(3):
            local = self.tree.open_cached(path, recheck=attempt > 0)
            fetched = False
            kept = local is not None
            if local is None:
                local, fetched = self.tree.open_instance(path)
            try:
                fd = os.open(local, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                log.info("%s was evicted before it could be opened (attempt %d)", path, attempt + 1)
                continue
            if fetched:
                log.debug("open %s -> %s (fetched)", path, local)
            return fd, kept
        raise mfusepy.FuseOSError(errno.EIO)

    @_errno_boundary
    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        return os.pread(fi.fh, size, offset)

    @_errno_boundary
    def release(self, path: str | None, fi: Any) -> int:
        if fi.fh:
            os.close(fi.fh)
            fi.fh = 0
        return 0
