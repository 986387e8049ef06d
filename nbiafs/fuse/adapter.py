"""The FUSE adapter: :class:`NbiaFuse` turns kernel requests into :class:`~nbiafs.fs.tree.ArchiveTree` calls.

This is the one place where exceptions become errno values (docs/semantics.md, "Errors"):
``NotFoundError`` -> ``ENOENT``, ``AccessDeniedError`` -> ``EACCES``, any other ``NbiaError`` (timeouts,
server errors, ...) -> ``EIO``, an unexpected exception -> ``EIO`` with its traceback logged. Every write-type
operation is ``EROFS``. The adapter holds no naming or caching logic: paths, sizes, times and xattrs come from
the tree.

Importing this module loads libfuse (through mfusepy), preferring libfuse3 when both libfuse2 and libfuse3 are
installed; import it only when a mount is really wanted.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from ctypes.util import find_library
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cachetools import TTLCache

from nbiafs.errors import AccessDeniedError, ConfigError, NbiaError, NotFoundError

# mfusepy picks the library when it is imported: FUSE_LIBRARY_PATH, else FUSE_LIBRARY_NAME, else libfuse2
# before libfuse3. Prefer libfuse3 (fuse_invalidate_path, the maintained one) unless the user chose otherwise.
if (
    not os.environ.get("FUSE_LIBRARY_PATH")
    and not os.environ.get("FUSE_LIBRARY_NAME")
    and find_library("fuse3")
):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy  # (must come after the library choice above)

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
    """Turn every exception raised by an operation into the errno the contract gives it."""

    @functools.wraps(func)
    def wrapper(self: NbiaFuse, path: str | None, *args: Any) -> Any:
        try:
            return func(self, path, *args)
        except mfusepy.FuseOSError:
            raise
        except NotFoundError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        except AccessDeniedError as exc:
            log.info("%s %s: access denied: %s", func.__name__, path, exc)
            raise mfusepy.FuseOSError(errno.EACCES) from None
        except NbiaError as exc:
            log.warning("%s %s: %s: %s", func.__name__, path, type(exc).__name__, exc)
            raise mfusepy.FuseOSError(errno.EIO) from None
        except Exception:
            log.exception("%s %s: unexpected error", func.__name__, path)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return cast(F, wrapper)


def _read_only(*_args: Any) -> int:
    raise mfusepy.FuseOSError(errno.EROFS)


class NbiaFuse(mfusepy.Operations):
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
        lib = mfusepy._libfuse
        self._invalidate: Any = (
            getattr(lib, "fuse_invalidate_path", None) if mfusepy.fuse_version_major == 3 else None
        )
        if self._invalidate is not None:
            self._invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            self._invalidate.restype = ctypes.c_int

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
            self._invalidate_attrs(path)
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

    def _invalidate_attrs(self, path: str) -> None:
        if self._invalidate is None:
            return
        fuse_ptr = mfusepy._libfuse.fuse_get_context().contents.fuse
        if not fuse_ptr:
            return
        rc = self._invalidate(fuse_ptr, path.encode("utf-8", "surrogateescape"))
        if rc not in (0, -errno.ENOENT):
            log.debug("fuse_invalidate_path(%s) returned %d", path, rc)

    @_errno_boundary
    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        return os.pread(fi.fh, size, offset)

    @_errno_boundary
    def release(self, path: str | None, fi: Any) -> int:
        if fi.fh:
            os.close(fi.fh)
            fi.fh = 0
        return 0

    # -- every write-type operation: EROFS ------------------------------------------------------------------

    write = _read_only
    create = _read_only
    mkdir = _read_only
    unlink = _read_only
    rmdir = _read_only
    rename = _read_only
    chmod = _read_only
    chown = _read_only
    truncate = _read_only
    utimens = _read_only
    setxattr = _read_only
    removexattr = _read_only
    symlink = _read_only
    link = _read_only
    mknod = _read_only


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
