"""A mount whose server goes away: the cached tree is served whatever its age, a missing name is ENOENT at
once, what was never cached is EIO, and a mount on a warm cache comes up without the server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nbiafs.server import ArchiveServer
from tests.mountutil import Mount, archive_files, files_under, mounted, needs_fuse, run, start_mount

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]

PETCR = "NBIAFS-PET-CR"
MR = "NBIAFS-MR-Brain"
SHORT_TTL = ("--listing-ttl", "1", "--negative-ttl", "1")


def warm_up(m: Mount, expected: dict[str, bytes]) -> None:
    """List and read every file of PETCR through ``m`` (listings and instances now cached)."""
    got = files_under(m.path / PETCR)
    assert sorted(got) == sorted(expected)
    for name, path in got.items():
        assert path.read_bytes() == expected[name]


def serves_cached_tree(m: Mount, expected: dict[str, bytes]) -> None:
    """``find`` and byte-identical reads of the cached collection, a fast ENOENT, an EIO for the unlisted."""
    done = run(["find", str(m.path / PETCR)], timeout=30)
    assert done.returncode == 0, done.stderr + m.log()
    names = {Path(line).name for line in done.stdout.splitlines() if line.endswith(".dcm")}
    assert names == set(expected)
    for name, path in files_under(m.path / PETCR).items():
        assert path.read_bytes() == expected[name], f"{name} differs while offline"

    start = time.monotonic()
    missing = run(["stat", str(m.path / PETCR / "no-such-patient")], timeout=10)
    took = time.monotonic() - start
    assert missing.returncode != 0 and "No such file" in missing.stderr, missing.stderr
    assert took < 1.0, f"ENOENT took {took:.2f} s"

    start = time.monotonic()
    never = run(["ls", str(m.path / MR)], timeout=30)
    took = time.monotonic() - start
    assert never.returncode != 0 and "Input/output error" in never.stderr, never.stderr
    assert took < 5.0, f"EIO took {took:.2f} s"


def test_server_stops_under_a_mount(make_server: Callable[..., ArchiveServer], tmp_path: Path) -> None:
    srv = make_server()
    expected = archive_files(srv.archive, PETCR)
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", *SHORT_TTL) as m:
        warm_up(m, expected)
        srv.stop()
        time.sleep(1.5)  # every listing has expired: only stale-if-error can serve them now
        serves_cached_tree(m, expected)
        assert m.log().count("offline;") == 1, m.log()


def test_mount_on_a_warm_cache_without_the_server(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server()
    expected = archive_files(srv.archive, PETCR)
    cache = tmp_path / "cache"
    with mounted(tmp_path / "mnt1", srv.url, cache) as m:
        warm_up(m, expected)
    srv.stop()
    time.sleep(1.1)
    start = time.monotonic()
    m = start_mount(tmp_path / "mnt2", srv.url, cache, *SHORT_TTL, timeout=10)
    try:
        took = time.monotonic() - start
        assert took < 5.0, f"the mount took {took:.1f} s to come up without its server"
        serves_cached_tree(m, expected)
    finally:
        m.unmount()
