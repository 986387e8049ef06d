"""Helpers for tests that mount for real: start ``python -m nbiafs mount -f`` against a bundled server, wait
for the mount with a deadline, and always take it down again (``fusermount3 -u``, then ``-uz``, then kill).

Nothing here touches the mount from the test process without a bound: mounted-ness is read from
/proc/self/mountinfo, shell tools run with subprocess timeouts, and every mount has a watchdog that kills its
process (which aborts the FUSE connection, so no syscall in the test process can block beyond it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT = 30.0  # seconds for a mount to come up
EXIT_TIMEOUT = 20.0  # seconds for a mount process to end after its unmount
WATCHDOG = 240.0  # seconds after which a mount process is killed whatever the test is doing


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def _unescape(field: str) -> str:
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the file system mounted at ``path`` (e.g. ``fuse.nbiafs``), or None. Never blocks."""
    target = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape(fields[4]) == target:
                found = right.split()[0]
    return found


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return mount_type(path) is not None


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def nbiafs_env(user: str | None = None, password: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for an ``nbiafs`` subprocess: the repo importable, credentials only as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBIA_")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if user is not None:
        env["NBIA_USER"] = user
        env["NBIA_PASSWORD"] = password or ""
    env.update(extra)
    return env


def nbiafs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nbiafs", *args]


def server_args(url: str, version: str = "v2") -> list[str]:
    """``--api-url`` for a bundled server at ``url`` (the token URL is derived from it)."""
    return ["--api-url", f"{url}/nbia-api/services/{version}"]


def run(cmd: Sequence[str], timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool with a deadline, capturing its text output (never raises for a non-zero status)."""
    kwargs.setdefault("capture_output", True)
    return subprocess.run(list(cmd), timeout=timeout, text=True, check=False, **kwargs)


def fusermount_unmount(path: str | os.PathLike[str]) -> None:
    """Unmount ``path``: ``fusermount3 -u``, then lazily, then ``umount -l``; each with a deadline."""
    for cmd in (
        ["fusermount3", "-u", str(path)],
        ["fusermount3", "-uz", str(path)],
        ["umount", "-l", str(path)],
    ):
        if not is_mounted(path):
            return
        with contextlib.suppress(subprocess.TimeoutExpired, FileNotFoundError):
            subprocess.run(cmd, capture_output=True, timeout=15, check=False)


@dataclass
class Mount:
    """A running ``nbiafs mount -f`` process and its mountpoint."""

    path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    cache_dir: Path
    _watchdog: threading.Timer | None = field(default=None, repr=False)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    def unmount(self) -> int | None:
        """Unmount and wait for the process (killing it if it will not end); returns its exit status."""
        try:
            fusermount_unmount(self.path)
            try:
                return self.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(timeout=EXIT_TIMEOUT)
                return None
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            if self.proc.poll() is None:
                self.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=EXIT_TIMEOUT)
            fusermount_unmount(self.path)  # after a kill the mount may be left dangling


def start_mount(
    mountpoint: Path,
    url: str,
    cache_dir: Path,
    *extra: str,
    user: str | None = None,
    password: str | None = None,
    version: str = "v2",
    timeout: float = MOUNT_TIMEOUT,
    watchdog: float = WATCHDOG,
) -> Mount:
    """Start ``nbiafs mount -f`` in a subprocess and wait until the kernel shows the mount.

    Raises AssertionError (with the mount's log) if it exits or is not mounted within ``timeout`` seconds.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_path = mountpoint.parent / f"{mountpoint.name}.log"
    cmd = nbiafs_cmd(
        "mount",
        "-f",
        "-v",
        str(mountpoint),
        *server_args(url, version),
        "--cache-dir",
        str(cache_dir),
        *extra,
    )
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=nbiafs_env(user, password),
            cwd=str(REPO),
        )
    m = Mount(mountpoint, proc, log_path, cache_dir)
    m._watchdog = threading.Timer(watchdog, m.kill)
    m._watchdog.daemon = True
    m._watchdog.start()
    if not wait_until(lambda: is_mounted(mountpoint) or proc.poll() is not None, timeout) or not is_mounted(
        mountpoint
    ):
        m.unmount()
        raise AssertionError(f"mount did not come up (exit {proc.poll()}):\n{m.log()}")
    return m


@contextlib.contextmanager
def mounted(mountpoint: Path, url: str, cache_dir: Path, *extra: str, **kwargs: Any) -> Iterator[Mount]:
    """``start_mount`` as a context manager that always unmounts."""
    m = start_mount(mountpoint, url, cache_dir, *extra, **kwargs)
    try:
        yield m
    finally:
        m.unmount()


def archive_files(archive: Any, collection: str) -> dict[str, bytes]:
    """``{"<SOPInstanceUID>.dcm": bytes}`` for every instance of ``collection`` in a server's archive."""
    return {
        f"{inst.sop_instance_uid}.dcm": archive.instance_bytes(inst.sop_instance_uid)
        for series, inst in archive.iter_instances()
        if series.collection == collection
    }


def files_under(root: Path) -> dict[str, Path]:
    """``{file name: path}`` of every regular file under ``root`` (names are unique: SOPInstanceUIDs)."""
    found: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            assert name not in found, f"{name} appears twice"
            found[name] = Path(dirpath) / name
    return found
