"""libfuse's main loop, run by nbiafs instead of libfuse's ``fuse_main_real``, so that a mount can always stop.

Why not ``fuse_main_real`` (what mfusepy calls):

- libfuse 3.12-3.15's ``fuse_main_real`` passes its default ``max_idle_threads`` (-1, i.e. 4294967295) to
  ``fuse_loop_cfg_set_idle_threads``, which rejects it with "Ignoring invalid max threads value 4294967295",
  and never passes ``max_threads`` on at all: every mount is limited to 10 worker threads, so ten operations
  waiting on a slow server block everything else, even an ``ls`` of a cached directory (libfuse issue #1003).
- its signal handlers end the loop by joining every worker thread; a worker waiting on a hung download never
  returns, so SIGTERM never ends the process (and the caller gets "error 8" even for a clean stop).

So, with a libfuse 3 that has the 3.12 loop API (``fuse_loop_mt_312`` and ``fuse_loop_cfg_*``), and below 3.17
(whose ``fuse_new`` changed): mfusepy builds its operations table as always and calls this module's
:func:`main` in place of ``fuse_main_real`` (:func:`patched_main`). :func:`main` creates and mounts the session,
runs ``fuse_loop_mt`` with ``max_threads`` workers in a helper thread, and watches, in the calling thread, for
SIGTERM, SIGINT and SIGHUP (Python handlers: libfuse installs none), for the loop's end (an unmount), and for the
mount disappearing from the mount table (a lazy unmount while operations hang). To stop, it unmounts lazily,
gives the workers :data:`STOP_GRACE` seconds, and otherwise abandons them: :attr:`LoopOutcome.abandoned` tells the
caller, which closes its caches and may end the process (its end aborts the FUSE connection, so the waiting
readers get an error at once). Other libfuse versions keep mfusepy's ``fuse_main_real``.

The return value is ``fuse_main_real``'s: 0 (clean stop, by unmount or signal), 1 bad option, 2 no mountpoint,
3 setup failed, 4 mount failed, 7 event loop failed; mfusepy raises ``RuntimeError(code)`` for non-zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nbiafs.fuse.library import FUSE_MAJOR, mfusepy
from nbiafs.fuse.mounttable import find_mount, mount_ids

log = logging.getLogger(__name__)

#: libfuse worker threads at most: operations served at once (libfuse's own default is 10).
MAX_THREADS = 64
#: Seconds the workers get to finish after an unmount or a signal before they are abandoned.
STOP_GRACE = 2.0
#: Seconds between two looks at the mount table for a mount detached under us.
DETACH_POLL = 0.5
#: Seconds an unmount helper (fusermount3 -uz) may take.
UNMOUNT_TIMEOUT = 5.0

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MNT_DETACH = 2

_lib: Any = getattr(mfusepy, "_libfuse", None)
_FUSE_MINOR = int(getattr(mfusepy, "fuse_version_minor", 0))

AVAILABLE: bool = bool(
    FUSE_MAJOR == 3
    and 12 <= _FUSE_MINOR < 17
    and _lib is not None
    and all(
        hasattr(_lib, name)
        for name in (
            "fuse_new_31",
            "fuse_loop_mt_312",
            "fuse_loop_cfg_create",
            "fuse_loop_cfg_set_max_threads",
            "fuse_loop_cfg_set_idle_threads",
        )
    )
)
"""Whether this module runs the loop (else mfusepy's ``fuse_main_real`` does, with libfuse's limits)."""

# Abandoned operation tables: libfuse's worker threads may still call them, so they must never be freed.
_KEEP_ALIVE: list[Any] = []


class _FuseArgs(ctypes.Structure):
    _fields_ = [
        ("argc", ctypes.c_int),
        ("argv", ctypes.POINTER(ctypes.c_char_p)),
        ("allocated", ctypes.c_int),
    ]


if AVAILABLE:
    _lib.fuse_new_31.argtypes = [ctypes.POINTER(_FuseArgs), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    _lib.fuse_new_31.restype = ctypes.c_void_p
    _lib.fuse_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _lib.fuse_mount.restype = ctypes.c_int
    _lib.fuse_unmount.argtypes = [ctypes.c_void_p]
    _lib.fuse_unmount.restype = None
    _lib.fuse_destroy.argtypes = [ctypes.c_void_p]
    _lib.fuse_destroy.restype = None
    _lib.fuse_get_session.argtypes = [ctypes.c_void_p]
    _lib.fuse_get_session.restype = ctypes.c_void_p
    _lib.fuse_session_exit.argtypes = [ctypes.c_void_p]
    _lib.fuse_session_exit.restype = None
    _lib.fuse_loop_cfg_create.argtypes = []
    _lib.fuse_loop_cfg_create.restype = ctypes.c_void_p
    _lib.fuse_loop_cfg_destroy.argtypes = [ctypes.c_void_p]
    _lib.fuse_loop_cfg_destroy.restype = None
    _lib.fuse_loop_cfg_set_max_threads.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    _lib.fuse_loop_cfg_set_max_threads.restype = None
    _lib.fuse_loop_cfg_set_idle_threads.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    _lib.fuse_loop_cfg_set_idle_threads.restype = None
    _lib.fuse_loop_mt_312.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    _lib.fuse_loop_mt_312.restype = ctypes.c_int
    _lib.fuse_opt_free_args.argtypes = [ctypes.POINTER(_FuseArgs)]
    _lib.fuse_opt_free_args.restype = None


@dataclass
class LoopOutcome:
    """How a mount ended: ``signal`` (its number) or None for an unmount; ``abandoned``: operations still
    running (hung on the server) were left behind, so the process should end soon (see module docstring)."""

    signal: int | None = None
    detached: bool = False
    abandoned: bool = False


@dataclass
class LoopControl:
    """What :func:`main` needs besides mfusepy's arguments."""

    max_threads: int = MAX_THREADS
    on_stopping: Callable[[], object] | None = None
    outcome: LoopOutcome = field(default_factory=LoopOutcome)


def _split_argv(argc: int, argv: Any) -> tuple[list[bytes], bytes | None]:
    """mfusepy's ``fuse -f [-d] [-s] -o OPTS MOUNTPOINT`` as (arguments for ``fuse_new``, mountpoint)."""
    words = [bytes(argv[i]) for i in range(argc)]
    lib_args = [words[0] if words else b"nbiafs"]
    mountpoint: bytes | None = None
    i = 1
    while i < len(words):
        word = words[i]
        if word == b"-o" and i + 1 < len(words):
            lib_args += [b"-o", words[i + 1]]
            i += 2
            continue
        if word == b"-d":
            lib_args.append(b"-d")
        elif not word.startswith(b"-"):
            mountpoint = word
        i += 1  # -f (we never daemonise) and -s (we always run the multithreaded loop) are dropped
    return lib_args, mountpoint


@contextlib.contextmanager
def _signals_caught(outcome: LoopOutcome) -> Iterator[None]:
    """Record SIGTERM/SIGINT/SIGHUP in ``outcome`` while serving (only the main thread can catch signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if outcome.signal is None:
            outcome.signal = signum

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)


def lazy_unmount(mountpoint: str) -> bool:
    """Detach ``mountpoint`` now (``umount2(MNT_DETACH)`` as root, else ``fusermount3 -uz``); True if done."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(mountpoint.encode("utf-8", "surrogateescape"), MNT_DETACH) == 0:
            return True
        log.debug("umount2(%s, MNT_DETACH): %s", mountpoint, os.strerror(ctypes.get_errno()))
    for tool in ("fusermount3", "fusermount"):
        exe = shutil.which(tool)
        if exe is None:
            continue
        try:
            done = subprocess.run(
                [exe, "-uz", "--", mountpoint], capture_output=True, timeout=UNMOUNT_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            log.warning("%s -uz %s did not finish within %.0f s", tool, mountpoint, UNMOUNT_TIMEOUT)
            return False
        return done.returncode == 0
    return False


def main(control: LoopControl, argc: int, argv: Any, ops: Any, ops_size: int, user_data: Any) -> int:
    """Stands in for ``fuse_main_real(argc, argv, ops, ops_size, user_data)``; see the module docstring.

    Signals are caught from the start, so one that arrives while mounting stops the mount as soon as it
    serves, rather than leaving it mounted without a process.
    """
    lib_args, mountpoint_b = _split_argv(argc, argv)
    if mountpoint_b is None:
        return 2
    mountpoint = os.fsdecode(mountpoint_b)
    argv_c = (ctypes.c_char_p * (len(lib_args) + 1))(*lib_args, None)
    args = _FuseArgs(len(lib_args), ctypes.cast(argv_c, ctypes.POINTER(ctypes.c_char_p)), 0)
    with _signals_caught(control.outcome):
        fuse = _lib.fuse_new_31(ctypes.byref(args), ctypes.cast(ops, ctypes.c_void_p), ops_size, user_data)
        if not fuse:
            _lib.fuse_opt_free_args(ctypes.byref(args))
            return 3
        destroy = True
        try:
            if _lib.fuse_mount(fuse, mountpoint_b) != 0:
                return 4
            code, destroy = _serve(control, fuse, mountpoint)
            if not destroy:
                _KEEP_ALIVE.append(ops)
            return code
        finally:
            if destroy:
                _lib.fuse_destroy(fuse)
                _lib.fuse_opt_free_args(ctypes.byref(args))


def _serve(control: LoopControl, fuse: int, mountpoint: str) -> tuple[int, bool]:
    """Run the loop in a helper thread until unmounted or signalled: ``(status, whether fuse may be freed)``."""
    outcome = control.outcome
    session = _lib.fuse_get_session(fuse)
    config = _lib.fuse_loop_cfg_create()
    if not config:
        _lib.fuse_unmount(fuse)
        return 7, True
    _lib.fuse_loop_cfg_set_max_threads(config, control.max_threads)
    # Idle workers are kept rather than ended and started again with the next burst of requests: a new thread
    # costs more than the request, and each keeps its Python thread state (library.adopt_thread).
    _lib.fuse_loop_cfg_set_idle_threads(config, control.max_threads)
    result: dict[str, int] = {}

    def loop() -> None:
        result["rc"] = _lib.fuse_loop_mt_312(fuse, config)

    try:
        found = find_mount(mountpoint)
    except OSError:
        found = None
    mount_id = found.mount_id if found is not None else None
    thread = threading.Thread(target=loop, name="nbiafs-fuse-loop", daemon=True)
    thread.start()
    next_look = time.monotonic() + DETACH_POLL
    while thread.is_alive() and outcome.signal is None:
        thread.join(0.1)
        if mount_id is not None and time.monotonic() >= next_look:
            next_look = time.monotonic() + DETACH_POLL
            if mount_id not in mount_ids():
                outcome.detached = True
                break
    if control.on_stopping is not None:
        try:
            control.on_stopping()
        except Exception:
            log.exception("stopping callback failed")
    if thread.is_alive():
        why = f"signal {signal.Signals(outcome.signal).name}" if outcome.signal else "detached"
        log.info("stopping (%s): unmounting %s", why, mountpoint)
        _lib.fuse_session_exit(session)
        if mount_id is None or mount_id in mount_ids():
            lazy_unmount(mountpoint)
        thread.join(STOP_GRACE)
    if thread.is_alive():
        outcome.abandoned = True
        log.warning(
            "operations still waiting on the server after %.0f s: abandoning them (their readers get an error)",
            STOP_GRACE,
        )
        return 0, False
    _lib.fuse_loop_cfg_destroy(config)
    _lib.fuse_unmount(fuse)  # closes the device; a no-op unmount when it is already gone
    rc = result.get("rc", 0)
    if rc and outcome.signal is None and not outcome.detached:
        log.error("the FUSE event loop ended with status %d", rc)
        return 7, True
    return 0, True


@contextlib.contextmanager
def patched_main(control: LoopControl) -> Iterator[bool]:
    """Make mfusepy call :func:`main` instead of ``fuse_main_real`` (yields False, changing nothing, where this
    module cannot run the loop)."""
    if not AVAILABLE:
        yield False
        return
    original = mfusepy.fuse_main_real

    def replacement(argc: int, argv: Any, ops: Any, ops_size: int, user_data: Any) -> int:
        return main(control, argc, argv, ops, ops_size, user_data)

    mfusepy.fuse_main_real = replacement
    try:
        yield True
    finally:
        mfusepy.fuse_main_real = original
