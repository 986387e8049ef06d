"""The warm path of a real mount (issue 9 item 4): warm reads byte-identical and served without requests, a
size the kernel holds as an estimate never cuts a read short (the page cache is kept, attributes are
invalidated instead), unknown extended attributes are ENODATA at once, and an open served from the cache still
drives read-ahead."""

from __future__ import annotations

import errno
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nbiafs.fuse.adapter import ATTR_TIMEOUT, SHORT_TIMEOUT, kernel_timeout
from nbiafs.fuse.library import CAN_INVALIDATE
from nbiafs.server import ArchiveServer
from tests.helpers import settle
from tests.mountutil import Mount, archive_files, files_under, mounted, needs_fuse, run

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]

RIDER = "RIDER Synth CT"
BENCH = "NBIAFS-Bench"  # one series of 200 small instances
DOWNLOADS = ("getSingleImage", "getImage", "getImageWithMD5Hash")


def downloads(srv: ArchiveServer, since: int = 0) -> list[str]:
    return [r.endpoint for r in list(srv.requests)[since:] if r.endpoint in DOWNLOADS]


def sizes_listed(root: Path) -> dict[str, int]:
    """``{file name: size}`` as ``find -printf`` (stat through the kernel) shows them."""
    done = run(["find", str(root), "-type", "f", "-printf", "%f %s\\n"])
    assert done.returncode == 0, done.stderr
    return {name: int(size) for name, size in (line.rsplit(" ", 1) for line in done.stdout.splitlines())}


def series_files(m: Mount, collection: str) -> list[Path]:
    """The files of the first series of ``collection`` in listing order."""
    series = m.path / collection
    for _level in range(3):
        series = series / sorted(os.listdir(series))[0]
    return [series / name for name in sorted(os.listdir(series))]


def test_kernel_timeouts_follow_the_listing_ttl() -> None:
    if CAN_INVALIDATE:
        assert kernel_timeout(86400.0 * 7) == ATTR_TIMEOUT == 86400.0
        assert kernel_timeout(60.0) == 60.0
    else:
        assert kernel_timeout(86400.0) == SHORT_TIMEOUT
    assert kernel_timeout(0.0) == 0.0


def test_warm_reads_are_identical_and_ask_nothing(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server()
    expected = archive_files(srv.archive, BENCH)
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache") as m:
        for copy in ("cold", "warm", "warm2"):
            settle(srv)
            before = len(srv.requests)
            done = run(["cp", "-r", str(m.path / BENCH), str(tmp_path / copy)], timeout=90)
            assert done.returncode == 0, done.stderr
            got = files_under(tmp_path / copy)
            assert sorted(got) == sorted(expected)
            for name, path in got.items():
                assert path.read_bytes() == expected[name], f"{copy}: {name} differs"
            if copy != "cold":
                settle(srv)
                assert downloads(srv, before) == [], f"{copy} copy downloaded again"
        # Reads at odd offsets through one handle, and a stat of every file: exact sizes.
        name, path = sorted(files_under(m.path / BENCH).items())[7]
        with open(path, "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 100, 1000) == expected[name][1000:1100]
            assert os.pread(f.fileno(), 1 << 20, 0) == expected[name]
            assert os.fstat(f.fileno()).st_size == len(expected[name])
        assert sizes_listed(m.path / BENCH) == {n: len(d) for n, d in expected.items()}


def test_a_size_shown_as_estimate_never_cuts_a_read_short(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    """Mount A shows estimates (the kernel keeps them: long attribute timeouts); mount B, on the same cache,
    fetches every instance, so A's tree knows the exact sizes but A's kernel was never told. tar, cp, cat and
    Python read every byte through A, a second time from the page cache too, and stat is exact afterwards."""
    srv = make_server()
    expected = archive_files(srv.archive, RIDER)
    cache = tmp_path / "cache"
    with mounted(tmp_path / "a", srv.url, cache) as a:
        shown = sizes_listed(a.path / RIDER)
        assert sorted(shown) == sorted(expected)
        assert any(shown[n] < len(d) for n, d in expected.items()), (
            "no estimate below the real size: weak test"
        )
        with mounted(tmp_path / "b", srv.url, cache) as b:
            for name, path in files_under(b.path / RIDER).items():
                assert path.read_bytes() == expected[name]
        assert sizes_listed(a.path / RIDER) == shown, "the kernel no longer holds the estimates: weak test"
        settle(srv)
        before = len(srv.requests)

        tar_path = tmp_path / "rider.tar"
        done = run(["tar", "-cf", str(tar_path), "-C", str(a.path), RIDER])
        assert done.returncode == 0, done.stderr
        assert "shrank" not in done.stderr and "changed" not in done.stderr, done.stderr
        with tarfile.open(tar_path) as tar:
            members = {Path(t.name).name: tar.extractfile(t) for t in tar.getmembers() if t.isfile()}
            assert {n: f.read() for n, f in members.items() if f} == expected

        for copy in ("cp1", "cp2"):  # the second from the page cache
            done = run(["cp", "-r", str(a.path / RIDER), str(tmp_path / copy)])
            assert done.returncode == 0, done.stderr
            got = files_under(tmp_path / copy)
            assert {n: p.read_bytes() for n, p in got.items()} == expected
        for name, path in files_under(a.path / RIDER).items():
            raw = subprocess.run(["cat", str(path)], capture_output=True, timeout=30, check=False)
            assert raw.returncode == 0 and raw.stdout == expected[name]
            assert path.read_bytes() == expected[name]
        assert sizes_listed(a.path / RIDER) == {n: len(d) for n, d in expected.items()}
        settle(srv)
        assert downloads(srv, before) == [], "mount A downloaded what the shared cache holds"


def test_unknown_extended_attributes_are_enodata(guest_mount: Mount, archive_server: ArchiveServer) -> None:
    a_file = series_files(guest_mount, RIDER)[0]
    for path in (a_file, a_file.parent, guest_mount.path / RIDER, guest_mount.path):
        for name in (
            "security.selinux",
            "system.posix_acl_access",
            "system.posix_acl_default",
            "security.capability",
            "trusted.overlay.opaque",
            "user.other",
            "user.nbia.NoSuchField",
        ):
            with pytest.raises(OSError) as info:
                os.getxattr(path, name)
            assert info.value.errno == errno.ENODATA, (path, name)
    sop = a_file.name.removesuffix(".dcm")
    assert os.getxattr(a_file, "user.nbia.SOPInstanceUID") == sop.encode()
    assert os.getxattr(a_file, "user.nbia.SOPInstanceUID") == sop.encode()  # from the per-node cache
    assert os.getxattr(a_file.parent, "user.nbia.Modality") == b"CT"
    assert "user.nbia.SOPInstanceUID" in os.listxattr(a_file)
    assert os.getxattr(guest_mount.path / RIDER, "user.nbia.Collection") == RIDER.encode()


@pytest.fixture
def guest_mount(archive_server: ArchiveServer, tmp_path: Path) -> Iterator[Mount]:
    with mounted(tmp_path / "mnt", archive_server.url, tmp_path / "cache") as m:
        yield m


def test_opens_served_from_the_cache_still_drive_read_ahead(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    """The first instances of a series are cached (by a reader going backwards: no walk); a new mount on the
    same cache stats them (their paths resolved on the fast path) and opens them in order: every open is a
    cache hit, and read-ahead still sees the walk and fetches what follows before the reader gets there."""
    srv = make_server()
    expected = archive_files(srv.archive, BENCH)
    cache = tmp_path / "cache"
    with mounted(tmp_path / "a", srv.url, cache) as a:
        files = series_files(a, BENCH)
        for path in reversed(files[:4]):  # backwards: never a walk, so nothing is read ahead
            assert path.read_bytes() == expected[path.name]
    settle(srv)
    assert len(downloads(srv)) <= 4, "read-ahead ran for a reader going backwards"
    with mounted(tmp_path / "b", srv.url, cache) as b:
        files = series_files(b, BENCH)
        for path in files[:4]:
            os.stat(path)
        settle(srv)
        before = len(srv.requests)
        for path in files[:4]:  # cache hits only: the reader itself asks nothing
            with open(path, "rb") as f:
                assert f.read() == expected[path.name]
        settle(srv)
        ahead = downloads(srv, before)
        assert ahead, "no read-ahead after sequential opens served from the cache"
        # What read-ahead brought is read without a request of the reader's own.
        settle(srv)
        before = len(srv.requests)
        for path in files[4:]:
            assert path.read_bytes() == expected[path.name]
        settle(srv)
        assert len(downloads(srv, before)) <= 2, downloads(srv, before)
