"""``nbiafs.mount()``: a mount from Python, served by a ``nbiafs mount -f`` process of its own.

The mount runs in a child process, not in the caller's: a process that reads its own FUSE mount can deadlock
(the reading thread and the serving threads share one interpreter), and a notebook kernel that is
interrupted or restarted must not take the mount's threads with it. Settings travel as command-line options;
a password travels only in the child's environment (``NBIA_PASSWORD``), never in its arguments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from nbiafs.errors import ConfigError, MountError
from nbiafs.fuse.mounttable import FSTYPE, find_mount

READY_TIMEOUT = 60.0
"""Seconds :func:`mount` waits for the mount to answer."""
STOP_TIMEOUT = 15.0
"""Seconds :meth:`BackgroundMount.unmount` waits for the mount process to end before killing it."""


class BackgroundMount:
    """A running mount: ``path`` is the mountpoint; a context manager that unmounts on exit."""

    def __init__(self, path: Path, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.path = path
        self.process = process
        self.log_path = log_path

    def __repr__(self) -> str:
        state = "mounted" if self.mounted else "stopped"
        return f"BackgroundMount({str(self.path)!r}, pid={self.process.pid}, {state})"

    @property
    def mounted(self) -> bool:
        """Whether the kernel shows an nbiafs mount at :attr:`path` (never touches the mount itself)."""
        entry = find_mount(str(self.path))
        return entry is not None and entry.fstype == FSTYPE and self.process.poll() is None

    def log(self) -> str:
        """What the mount process has logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def unmount(self) -> int:
        """Stop the mount (SIGTERM: it unmounts and exits 0) and wait for it; returns its exit status.

        Kills it after ``STOP_TIMEOUT`` seconds. Idempotent.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(OSError):
            self.log_path.unlink()
        return int(self.process.returncode)

    def __enter__(self) -> BackgroundMount:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unmount()


def mount(
    mountpoint: str | os.PathLike[str],
    source: str | None = None,
    *,
    password: str | None = None,
    timeout: float = READY_TIMEOUT,
    **options: object,
) -> BackgroundMount:
    """Mount an NBIA server at ``mountpoint`` in a background process; returns once the mount answers.

    ``source`` is a server profile (``tcia``, ``nlst``, ``tcia-v4``, ``legacy-v3``) or an API URL; every
    other setting of ``nbiafs mount`` is a keyword with ``_`` for ``-`` (``api_url=``, ``user=``,
    ``cache_size="50G"``, ``collection=["A", "B"]``, ``layout="uid"``, ``readahead=0``, ...; ``True`` for a
    flag). ``password`` goes to the mount process's environment only. Raises MountError (with the mount's
    own words) when it does not come up within ``timeout`` seconds, ConfigError for a bad option.
    """
    path = Path(mountpoint).expanduser().absolute()
    args = [sys.executable, "-m", "nbiafs", "mount", "-f"]
    if source is not None:
        args.append(source)
    args.append(str(path))
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is True:
                args.append(flag)
            elif item is False or item is None:
                continue
            else:
                args.extend([flag, str(item)])
    env = dict(os.environ)
    if password is not None:
        env["NBIA_PASSWORD"] = password
    fd, log_name = tempfile.mkstemp(prefix="nbiafs-mount-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    handle = BackgroundMount(path, process, log_path)
    deadline = time.monotonic() + timeout
    while not handle.mounted:
        status = process.poll()
        if status is not None or time.monotonic() > deadline:
            words = handle.log().strip().splitlines()
            handle.unmount()
            why = words[-1] if words else f"exit status {status}"
            if status == 2 or status == 3:
                raise ConfigError(f"could not mount {path}: {why}")
            raise MountError(f"could not mount {path} within {timeout:.0f} s: {why}")
        time.sleep(0.05)
    return handle
