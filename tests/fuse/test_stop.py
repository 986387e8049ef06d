"""Stopping, threads, systemd and mount(8): real mounts, each with a deadline and always unmounted.

SIGTERM/SIGINT/SIGHUP end ``nbiafs mount -f`` and ``nbiafs demo`` with status 0, even with downloads hanging;
no libfuse thread warning; 30 hung downloads leave a cached directory listable; READY=1/STOPPING=1 reach a
NOTIFY_SOCKET; ``mount -t fuse`` mounts with ``-o key=value`` settings; ``nbiafs umount`` refuses what is not
nbiafs and clears a dead mount; a dead, busy or non-empty mountpoint is explained.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nbiafs.server import ArchiveServer
from tests.mountutil import (
    files_under,
    is_mounted,
    mount_type,
    mounted,
    nbiafs_cmd,
    nbiafs_env,
    needs_fuse,
    run,
    server_args,
    start_mount,
    wait_until,
)

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(150)]

PETCR = "NBIAFS-PET-CR"
BENCH = "NBIAFS-Bench"
THREAD_WARNING = "Ignoring invalid max threads value"


def _cleanup(mp: Path) -> None:
    if is_mounted(mp):
        run(["fusermount3", "-uz", str(mp)], timeout=15)
    if is_mounted(mp):
        run(["umount", "-l", str(mp)], timeout=15)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_is_a_clean_stop(archive_server: ArchiveServer, tmp_path: Path, sig: signal.Signals) -> None:
    m = start_mount(tmp_path / "mnt", archive_server.url, tmp_path / "cache")
    try:
        assert PETCR in os.listdir(m.path)
        m.proc.send_signal(sig)
        assert m.proc.wait(timeout=10) == 0, m.log()
        assert not is_mounted(m.path)
        log = m.log()
        assert "could not mount" not in log and "libfuse error" not in log
        assert THREAD_WARNING not in log
    finally:
        m.unmount()


def test_sigterm_with_hung_downloads_ends_within_10s(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server()
    m = start_mount(tmp_path / "mnt", srv.url, tmp_path / "cache", "--readahead", "0")
    readers: list[subprocess.Popen[bytes]] = []
    try:
        files = sorted(files_under(m.path / PETCR).values())[:3]
        srv.config.stall = 120.0  # every request now hangs far longer than the test
        readers = [
            subprocess.Popen(["cat", str(f)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for f in files
        ]
        time.sleep(1.0)
        assert all(r.poll() is None for r in readers), "the downloads did not hang: weak test"
        start = time.monotonic()
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=10) == 0, m.log()
        assert time.monotonic() - start < 10
        assert wait_until(lambda: not is_mounted(m.path), 5)
        # The readers were waiting on the mount: they get an error now, rather than hanging.
        for r in readers:
            assert r.wait(timeout=10) != 0
    finally:
        srv.config.stall = 0.0
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait(timeout=10)
        m.unmount()


def test_hung_downloads_do_not_delay_a_cached_listing(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    """30 downloads hung on the server: more than libfuse's old limit of 10 threads, yet `ls` answers."""
    srv = make_server()
    m = start_mount(tmp_path / "mnt", srv.url, tmp_path / "cache", "--readahead", "0")
    readers: list[subprocess.Popen[bytes]] = []
    try:
        assert run(["ls", "-lR", str(m.path / PETCR)]).returncode == 0  # listings cached
        bench = sorted(files_under(m.path / BENCH).values())
        assert len(bench) >= 30
        srv.config.stall = 60.0
        readers = [
            subprocess.Popen(["cat", str(f)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for f in bench[:30]
        ]
        time.sleep(1.5)
        assert sum(r.poll() is None for r in readers) == 30, "the downloads did not hang: weak test"
        for _ in range(3):
            start = time.monotonic()
            done = run(["ls", "-l", str(m.path / PETCR)], timeout=20)
            assert done.returncode == 0, done.stderr
            assert time.monotonic() - start < 1.0, f"ls took {time.monotonic() - start:.1f} s"
        assert THREAD_WARNING not in m.log()
    finally:
        srv.config.stall = 0.0
        m.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.proc.wait(timeout=15)
        for r in readers:
            if r.poll() is None:
                r.kill()
            r.wait(timeout=10)
        m.unmount()


def test_demo_stops_on_ctrl_c(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen(
        nbiafs_cmd("demo", str(mp)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=nbiafs_env(),
    )
    try:
        assert wait_until(lambda: is_mounted(mp) or proc.poll() is not None, 30) and is_mounted(mp)
        assert wait_until(lambda: bool(os.listdir(mp)), 10)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        text = out.decode()
        assert "unmounted, server stopped" in text and "libfuse error" not in text
        assert THREAD_WARNING not in text
        assert not is_mounted(mp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        _cleanup(mp)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"nbiafs-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(20)
    try:
        yield sock, address
    finally:
        sock.close()


def test_systemd_notify(
    archive_server: ArchiveServer, tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = nbiafs_cmd(
        "mount", "-f", str(mp), *server_args(archive_server.url), "--cache-dir", str(tmp_path / "c")
    )
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=nbiafs_env(NOTIFY_SOCKET=address),
    )  # fmt: skip
    try:
        ready = sock.recv(4096).decode()
        assert ready.splitlines() == ["READY=1", f"STATUS=mounted at {mp}"]
        assert is_mounted(mp) and PETCR in os.listdir(mp)  # ready means: the mount answers
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode().splitlines()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        _cleanup(mp)


def test_mount_8_with_settings_as_options(archive_server: ArchiveServer, tmp_path: Path) -> None:
    """`mount -t fuse 'PROGRAM#SOURCE' MOUNTPOINT -o ...`: mount.fuse3 runs `PROGRAM SOURCE MOUNTPOINT -o ...`
    (with -t fuse.nbiafs it runs `nbiafs` from root's PATH, which a test cannot change); fstab's options are
    accepted, the settings applied."""
    if os.geteuid() != 0:
        pytest.skip("mount(8) with a helper needs root")
    wrapper = tmp_path / "bin" / "nbiafs"
    wrapper.parent.mkdir()
    repo = Path(__file__).resolve().parents[2]
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={repo} exec {nbiafs_cmd()[0]} -m nbiafs "$@"\n')
    wrapper.chmod(0o755)
    mp = tmp_path / "mnt"
    mp.mkdir()
    source = f"{wrapper}#{archive_server.url}/nbia-api/services/v2"
    options = (
        f"ro,noauto,_netdev,nofail,defaults,x-systemd.automount,cache_size=50M,cache_dir={tmp_path / 'c'}"
    )
    options += f",layout=uid,collection={PETCR},listing_ttl=600,timeout=10"
    try:
        done = run(["mount", "-t", "fuse", source, str(mp), "-o", options], timeout=60, env=nbiafs_env())
        assert done.returncode == 0, done.stderr
        assert mount_type(mp) == "fuse.nbiafs"
        assert os.listdir(mp) == [PETCR]
        series = next(p for p in (mp / PETCR).glob("*/*/*"))
        assert series.name.startswith("1.")  # the uid layout
        done = run(nbiafs_cmd("umount", str(mp)), env=nbiafs_env())
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mp)
    finally:
        _cleanup(mp)


def test_umount_refuses_other_file_systems(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mp = tmp_path / "tmpfs"
    mp.mkdir()
    assert run(["mount", "-t", "tmpfs", "none", str(mp)]).returncode == 0
    try:
        done = run(nbiafs_cmd("umount", str(mp)), env=nbiafs_env())
        assert done.returncode == 1
        assert "tmpfs mount, not nbiafs" in done.stderr
        assert mount_type(mp) == "tmpfs"
    finally:
        run(["umount", str(mp)])


def test_dead_mount_is_explained_and_cleared(archive_server: ArchiveServer, tmp_path: Path) -> None:
    m = start_mount(tmp_path / "mnt", archive_server.url, tmp_path / "cache")
    try:
        m.kill()
        m.proc.wait(timeout=10)
        assert is_mounted(m.path), "kill -9 left no dead mount: weak test"
        done = run(
            nbiafs_cmd("mount", "-f", str(m.path), *server_args(archive_server.url)),
            env=nbiafs_env(),
            timeout=30,
        )
        assert done.returncode == 1
        assert "dead nbiafs mount" in done.stderr and f"nbiafs umount {m.path}" in done.stderr
        done = run(nbiafs_cmd("umount", "-v", str(m.path)), env=nbiafs_env(), timeout=30)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(m.path)
        assert f"nbiafs: unmounted {m.path}" in done.stderr or "cleared the dead" in done.stderr
    finally:
        m.unmount()


def test_non_empty_mountpoint_needs_nonempty(archive_server: ArchiveServer, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    (mp / "precious.txt").write_text("x")
    done = run(nbiafs_cmd("mount", "-f", str(mp), *server_args(archive_server.url)), env=nbiafs_env())
    assert done.returncode == 1 and "not empty" in done.stderr and "-o nonempty" in done.stderr
    assert not is_mounted(mp)
    with mounted(mp, archive_server.url, tmp_path / "cache", "-o", "nonempty") as m:
        assert PETCR in os.listdir(m.path)
    assert (mp / "precious.txt").read_text() == "x"


def test_unknown_collection_is_refused(archive_server: ArchiveServer, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = nbiafs_cmd("mount", str(mp), *server_args(archive_server.url), "--collection", "NBIAFS-PET-RC")
    cmd += ["--cache-dir", str(tmp_path / "cache")]
    try:
        done = run(cmd, env=nbiafs_env(), timeout=60)
        assert done.returncode == 3, done.stderr
        assert "unknown collection 'NBIAFS-PET-RC'" in done.stderr and f"'{PETCR}'" in done.stderr
        assert not is_mounted(mp)
    finally:
        _cleanup(mp)


def test_missing_libfuse_names_the_package(archive_server: ArchiveServer, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = nbiafs_env(FUSE_LIBRARY_PATH=str(tmp_path / "libfuse-missing.so"))
    done = run(nbiafs_cmd("mount", "-f", str(mp), *server_args(archive_server.url)), env=env)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert "apt-get install fuse3" in done.stderr and "dnf install fuse3" in done.stderr
