"""The FUSE adapter: :class:`NbiaFuse` turns kernel requests into :class:`~nbiafs.fs.tree.ArchiveTree` calls.

This is the one place where exceptions become errno values (docs/semantics.md, "Errors"):
``NotFoundError`` -> ``ENOENT``, ``AccessDeniedError`` -> ``EACCES``, any other ``NbiaError`` (timeouts,
server errors, ...) -> ``EIO``, an unexpected exception -> ``EIO`` with its traceback logged. The mount is
``ro``, so the kernel answers every write-type operation with ``EROFS`` before it reaches us (mfusepy's
defaults answer EROFS too). The adapter holds no naming or caching logic: paths, sizes, times and xattrs come
from the tree; the one thing it remembers is which paths the kernel was last shown an estimated size for.

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
from nbiafs.fuse.library import invalidate_path, mfusepy

if TYPE_CHECKING:
    from nbiafs.fs.tree import ArchiveTree

log = logging.getLogger(__name__)

#: Seconds the kernel may keep attributes and name lookups (the tree has its own, longer, caches).
ATTR_TIMEOUT = 5.0
ENTRY_TIMEOUT = 5.0
NEGATIVE_TIMEOUT = 2.0
#: Seconds the ready callback waits for the mount to answer a stat of its root.
READY_DEADLINE = 30.0

_ENODATA = getattr(mfusepy, "ENOATTR", None) or errno.ENODATA
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

F = TypeVar("F", bound=Callable[..., Any])


def _errno_boundary(func: F) -> F:
    """Turn every exception raised by an operation into an errno: an NbiaError's own ``errno`` (see
    :mod:`nbiafs.errors`), EIO with a logged traceback for anything unexpected."""

    @functools.wraps(func)
    def wrapper(self: NbiaFuse, path: str | None, *args: Any) -> Any:
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
        # Paths whose size was shown to the kernel as an estimate: their first open after the fetch must use
        # direct I/O and drop the kernel's cached attributes (the estimate may be too small). The kernel
        # forgets attributes after ATTR_TIMEOUT, so entries older than that need not be kept: a TTL cache keeps
        # this bounded even after an `ls -lR` of the whole archive.
        self._estimated: TTLCache[str, bool] = TTLCache(maxsize=1_000_000, ttl=2 * ATTR_TIMEOUT)
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
        node = self.tree.lookup(path)
        mtime_ns = int(node.mtime * 1e9)
        attrs: dict[str, Any] = {
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_atime": mtime_ns,
            "st_mtime": mtime_ns,
            "st_ctime": mtime_ns,
        }
        if node.is_dir:
            # nlink 1: "subdirectories not counted", so find(1) makes no leaf optimisation.
            attrs.update(st_mode=stat.S_IFDIR | 0o555, st_nlink=1, st_size=0)
            return attrs
        size = node.size
        if fh is not None and fh.fh:
            size = os.fstat(fh.fh).st_size  # an open file is in the cache: its size is exact
        elif not node.exact_size:
            with self._lock:
                self._estimated[path] = True
        attrs.update(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=size, st_blocks=(size + 511) // 512)
        return attrs

    @_errno_boundary
    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *self.tree.listdir(path)]

    @_errno_boundary
    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK:
            raise mfusepy.FuseOSError(errno.EROFS)
        self.tree.lookup(path)
        return 0

    @_errno_boundary
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        try:
            return self.tree.xattrs(path)[name]
        except KeyError:
            raise mfusepy.FuseOSError(_ENODATA) from None

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
        node = self.tree.lookup(path)
        if node.is_dir:
            raise mfusepy.FuseOSError(errno.EISDIR)
        fd = self._open_cached(path)
        with self._lock:
            shown_estimate = (not node.exact_size) or path in self._estimated
        if shown_estimate:
            # The kernel may hold a size smaller than the file: bypass its page cache for this handle, and
            # drop its cached attributes so an fstat now sees the exact size.
            fi.direct_io = 1
            fi.keep_cache = 0
            invalidate_path(path)
            with self._lock:
                self._estimated.pop(path, None)
        else:
            fi.keep_cache = 1
        fi.fh = fd
        return 0

    def _open_cached(self, path: str) -> int:
        """Fetch the instance into the disk cache and open it; retried if evicted in between."""
        for attempt in range(3):
            local, fetched = self.tree.open_instance(path)
            try:
                fd = os.open(local, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                log.info("%s was evicted before it could be opened (attempt %d)", path, attempt + 1)
                continue
            log.debug("open %s -> %s (%s)", path, local, "fetched" if fetched else "cached")
            return fd
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
