"""Mount for real (``python -m nbiafs mount -f`` in a subprocess) against the bundled server, and use the
mount with the ordinary tools: ls, find, stat, cp -r, tar, md5sum, cat, Python, getfattr, writes, errors."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nbiafs.server import ArchiveServer
from tests.helpers import ALICE, ALICE_PASSWORD, RESTRICTED
from tests.mountutil import (
    Mount,
    archive_files,
    files_under,
    is_mounted,
    mounted,
    nbiafs_cmd,
    nbiafs_env,
    needs_fuse,
    run,
    server_args,
    start_mount,
    wait_until,
)

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]

RIDER = "RIDER Synth CT"
MR = "NBIAFS-MR-Brain"
PETCR = "NBIAFS-PET-CR"
BENCH = "NBIAFS-Bench"
NOT_REQUESTS = ("oauth/token", "logout")  # logging in and out are not requests for archive data


def archive_requests(srv: ArchiveServer, since: int = 0) -> list[str]:
    """The paths of the data requests the server answered after the first ``since`` ones."""
    return [r.path for r in list(srv.requests)[since:] if r.endpoint not in NOT_REQUESTS]


def sizes_listed(root: Path) -> dict[str, int]:
    """``{file name: size}`` as ``find -printf`` (stat) shows them, in a subprocess with a deadline."""
    done = run(["find", str(root), "-type", "f", "-printf", "%f %s\\n"])
    assert done.returncode == 0, done.stderr
    return {name: int(size) for name, size in (line.rsplit(" ", 1) for line in done.stdout.splitlines())}


def assert_same_files(got: dict[str, Path], expected: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(expected)
    for name, path in got.items():
        assert path.read_bytes() == expected[name], f"{path} differs from the archive's bytes"


@pytest.fixture(scope="module")
def guest(archive_server: ArchiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """The guest's mount of the session server (descriptive layout), with a cache of its own."""
    base = tmp_path_factory.mktemp("guest")
    with mounted(base / "mnt", archive_server.url, base / "cache") as m:
        yield m


def test_listing_shows_visible_collections(guest: Mount, archive_server: ArchiveServer) -> None:
    done = run(["ls", "-1", str(guest.path)])
    assert done.returncode == 0, done.stderr
    visible = sorted(c for c in archive_server.archive.collection_names() if c != RESTRICTED)
    assert sorted(done.stdout.splitlines()) == visible
    st = os.stat(guest.path / PETCR)
    assert st.st_mode & 0o777 == 0o555 and os.path.isdir(guest.path / PETCR)


def test_every_tool_reads_every_byte(guest: Mount, archive_server: ArchiveServer, tmp_path: Path) -> None:
    """Files the kernel holds with an estimated size are read in full by tar, cp, md5sum, cat and Python."""
    archive = archive_server.archive
    before = {}
    for coll in (RIDER, MR, PETCR, BENCH):
        before.update(sizes_listed(guest.path / coll))  # stat everything first: the kernel caches estimates
    expected_all = {
        name: data
        for coll in (RIDER, MR, PETCR, BENCH)
        for name, data in archive_files(archive, coll).items()
    }
    assert sorted(before) == sorted(expected_all)
    assert any(before[n] < len(d) for n, d in expected_all.items()), (
        "no estimate below the real size: weak test"
    )

    # tar: reads exactly st_size bytes, so it must see the exact size once it has opened the file.
    tar_path = tmp_path / "rider.tar"
    done = run(["tar", "-cf", str(tar_path), "-C", str(guest.path), RIDER])
    assert done.returncode == 0, done.stderr
    assert "shrank" not in done.stderr and "changed" not in done.stderr
    with tarfile.open(tar_path) as tar:
        members = {Path(m.name).name: tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
        assert {n: f.read() for n, f in members.items() if f} == archive_files(archive, RIDER)

    # cp -r of a whole collection.
    done = run(["cp", "-r", str(guest.path / MR), str(tmp_path / "mr")])
    assert done.returncode == 0, done.stderr
    assert_same_files(files_under(tmp_path / "mr"), archive_files(archive, MR))

    # md5sum over every file of a collection.
    done = run(["find", str(guest.path / PETCR), "-type", "f", "-exec", "md5sum", "{}", "+"])
    assert done.returncode == 0, done.stderr
    sums = {Path(line.split("  ", 1)[1]).name: line.split("  ", 1)[0] for line in done.stdout.splitlines()}
    assert sums == {n: hashlib.md5(d).hexdigest() for n, d in archive_files(archive, PETCR).items()}

    # cat and Python's read() on the benchmark series (half each).
    bench = sorted(files_under(guest.path / BENCH).items())
    expected = archive_files(archive, BENCH)
    for name, path in bench[:40]:
        raw = subprocess.run(["cat", str(path)], capture_output=True, timeout=30, check=False)
        assert raw.returncode == 0 and raw.stdout == expected[name]
    for name, path in bench[40:80]:
        with open(path, "rb") as f:
            assert f.read() == expected[name]

    # Once fetched, stat shows the exact size.
    after = sizes_listed(guest.path / RIDER)
    assert after == {n: len(d) for n, d in archive_files(archive, RIDER).items()}


def test_errors_enoent_erofs_and_xattrs(guest: Mount) -> None:
    series_dir = next(p for p in (guest.path / PETCR).glob("*/*/*") if p.is_dir())
    a_file = next(series_dir.iterdir())
    for missing in (
        guest.path / "No Such Collection",
        series_dir / "1.2.3.dcm",
        guest.path / PETCR / "nobody",
    ):
        with pytest.raises(OSError) as info:
            os.stat(missing)
        assert info.value.errno == errno.ENOENT
    done = run(["cat", str(series_dir / "1.2.3.dcm")])
    assert done.returncode != 0 and "No such file" in done.stderr

    writes: list[Callable[[], object]] = [
        lambda: os.open(a_file, os.O_WRONLY),
        lambda: os.open(a_file, os.O_RDWR),
        lambda: os.open(series_dir / "new.dcm", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.mkdir(series_dir / "newdir"),
        lambda: os.unlink(a_file),
        lambda: os.rmdir(series_dir),
        lambda: os.rename(a_file, series_dir / "renamed.dcm"),
        lambda: os.chmod(a_file, 0o644),
        lambda: os.truncate(a_file, 0),
        lambda: os.utime(a_file, (0, 0)),
        lambda: os.setxattr(a_file, "user.test", b"x"),
        lambda: os.symlink("x", series_dir / "link"),
        lambda: os.link(a_file, series_dir / "hard"),
    ]
    for write in writes:
        with pytest.raises(OSError) as info:
            write()
        assert info.value.errno == errno.EROFS
    done = run(["touch", str(series_dir / "touched")])
    assert "Read-only file system" in done.stderr

    done = run(["getfattr", "-d", str(series_dir)])
    assert done.returncode == 0, done.stderr
    assert "user.nbia.Modality=" in done.stdout
    modality = os.getxattr(series_dir, "user.nbia.Modality").decode()
    assert modality in ("PT", "CR")
    with pytest.raises(OSError) as info:
        os.getxattr(series_dir, "user.nbia.NoSuchField")
    assert info.value.errno == errno.ENODATA


def test_uid_layout(archive_server: ArchiveServer, tmp_path: Path) -> None:
    archive = archive_server.archive
    expected = {
        f"{PETCR}/{s.patient_id}/{s.study_instance_uid}/{s.series_instance_uid}/{i.sop_instance_uid}.dcm"
        for s, i in archive.iter_instances()
        if s.collection == PETCR
    }
    with mounted(
        tmp_path / "mnt", archive_server.url, tmp_path / "cache", "--layout", "uid", "--collection", PETCR
    ) as m:
        assert os.listdir(m.path) == [PETCR]
        done = run(["find", ".", "-type", "f"], cwd=m.path)
        assert done.returncode == 0, done.stderr
        assert {p.removeprefix("./") for p in done.stdout.splitlines()} == expected
        done = run(["cp", "-r", str(m.path / PETCR), str(tmp_path / "copy")])
        assert done.returncode == 0, done.stderr
        assert_same_files(files_under(tmp_path / "copy"), archive_files(archive, PETCR))


def _series_paths(root: Path) -> set[str]:
    """The SeriesInstanceUIDs of a uid-layout mount: the names four levels down."""
    done = run(["find", ".", "-mindepth", "4", "-maxdepth", "4", "-type", "d"], cwd=root)
    assert done.returncode == 0, done.stderr
    return {line.rsplit("/", 1)[-1] for line in done.stdout.splitlines()}


def test_manifest_and_cart_mount_only_their_series(archive_server: ArchiveServer, tmp_path: Path) -> None:
    archive = archive_server.archive
    public = [s for s in archive.iter_series() if s.collection in (PETCR, MR)]
    chosen = [public[0].series_instance_uid, public[-1].series_instance_uid]
    manifest = tmp_path / "cart.tcia"
    lines = [
        "downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet",
        "includeAnnotation=true",
        "noOfrRetry=4",
        "databasketId=manifest-1700000000000.tcia",
        "manifestVersion=3.0",
        "ListOfSeriesToDownload=",
        *chosen,
    ]
    manifest.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    with mounted(
        tmp_path / "mnt",
        archive_server.url,
        tmp_path / "cache",
        "--layout",
        "uid",
        "--manifest",
        str(manifest),
    ) as m:
        assert _series_paths(m.path) == set(chosen)
        assert sorted(os.listdir(m.path)) == sorted({public[0].collection, public[-1].collection})
        one = next((m.path).glob(f"*/*/*/{chosen[0]}/*.dcm"))
        assert one.read_bytes() == archive.instance_bytes(one.stem)

    cart, uids = next(iter(archive.default_carts.items()))
    visible = {u for u in uids if archive.series_by_uid[u].collection != RESTRICTED}
    with mounted(
        tmp_path / "mnt2", archive_server.url, tmp_path / "cache", "--layout", "uid", "--cart", cart
    ) as m:
        assert _series_paths(m.path) == visible


def test_restricted_data(archive_server: ArchiveServer, guest: Mount, tmp_path: Path) -> None:
    archive = archive_server.archive
    assert RESTRICTED not in os.listdir(guest.path)
    restricted = next(s for s in archive.iter_series() if s.collection == RESTRICTED)
    for path in (guest.path / RESTRICTED, guest.path / RESTRICTED / restricted.patient_id):
        with pytest.raises(OSError) as info:
            os.stat(path)
        assert info.value.errno in (errno.ENOENT, errno.EACCES)

    with mounted(
        tmp_path / "mnt", archive_server.url, tmp_path / "cache", user=ALICE, password=ALICE_PASSWORD
    ) as m:
        assert RESTRICTED in os.listdir(m.path)
        got = files_under(m.path / RESTRICTED)
        expected = archive_files(archive, RESTRICTED)
        assert_same_files(got, expected)


def test_copy_outlives_several_tokens(make_server: Callable[..., ArchiveServer], tmp_path: Path) -> None:
    srv = make_server(token_lifetime=2.0, refresh_lifetime=4.0, latency=0.03)
    # Read-ahead off: one request at a time keeps the copy longer than several token lifetimes.
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", "--readahead", "0") as m:
        start = time.monotonic()
        done = run(["cp", "-r", str(m.path / BENCH), str(tmp_path / "copy")], timeout=90)
        took = time.monotonic() - start
        assert done.returncode == 0, done.stderr
    assert took > 6.0, f"the copy took {took:.1f} s: not several token lifetimes"
    assert_same_files(files_under(tmp_path / "copy"), archive_files(srv.archive, BENCH))
    grants = [r for r in srv.requests if r.endpoint == "oauth/token" and r.status == 200]
    assert len(grants) >= 3, "the token was not renewed during the copy"
    assert not [r for r in srv.requests if r.status == 401 and r.endpoint not in NOT_REQUESTS][3:]


def test_copy_larger_than_cache(archive_server: ArchiveServer, tmp_path: Path) -> None:
    from nbiafs.fs.instance_cache import InstanceCache

    bound = 100 * 1024
    total = sum(len(d) for d in archive_files(archive_server.archive, MR).values())
    assert total > 2 * bound
    with mounted(tmp_path / "mnt", archive_server.url, tmp_path / "cache", "--cache-size", str(bound)) as m:
        done = run(["cp", "-r", str(m.path / MR), str(tmp_path / "copy")])
        assert done.returncode == 0, done.stderr
    assert_same_files(files_under(tmp_path / "copy"), archive_files(archive_server.archive, MR))
    with InstanceCache(tmp_path / "cache", None) as cache:
        info = cache.info()
    assert 0 < info.total_bytes <= bound
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.dcm"))
    assert on_disk <= bound


def test_remount_makes_no_request(make_server: Callable[..., ArchiveServer], tmp_path: Path) -> None:
    srv = make_server()
    cache = tmp_path / "cache"

    def use(m: Mount) -> str:
        done = run(["ls", "-lR", str(m.path / PETCR), str(m.path / MR)])
        assert done.returncode == 0, done.stderr
        sums = run(["find", str(m.path / PETCR), "-type", "f", "-exec", "md5sum", "{}", "+"])
        assert sums.returncode == 0, sums.stderr
        run(["ls", str(m.path)])
        return sums.stdout.replace(str(m.path), "")

    with mounted(tmp_path / "mnt1", srv.url, cache) as m:
        first = use(m)
    assert archive_requests(srv), "the first mount made no request at all"
    seen = len(srv.requests)
    with mounted(tmp_path / "mnt2", srv.url, cache) as m:
        second = use(m)
    assert second == first
    assert archive_requests(srv, seen) == []


def test_slow_download_does_not_block_others(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server()
    expected = archive_files(srv.archive, PETCR)
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache") as m:
        files = sorted(files_under(m.path / PETCR).items())
        (cached_name, cached), (slow_name, slow) = files[0], files[1]
        assert cached.read_bytes() == expected[cached_name]
        srv.config.bandwidth = 2000.0  # bytes/s: the next download takes ~5 s
        try:
            with open(tmp_path / "slow.out", "wb") as out:
                bg = subprocess.Popen(["cat", str(slow)], stdout=out)
                try:
                    time.sleep(0.5)
                    start = time.monotonic()
                    assert run(["ls", "-l", str(m.path / PETCR)], timeout=10).returncode == 0
                    assert run(["md5sum", str(cached)], timeout=10).returncode == 0
                    assert time.monotonic() - start < 2.0
                    assert bg.poll() is None, "the slow download was not slow: weak test"
                    assert bg.wait(timeout=30) == 0
                finally:
                    if bg.poll() is None:
                        bg.kill()
                        bg.wait(timeout=10)
        finally:
            srv.config.bandwidth = None
        assert (tmp_path / "slow.out").read_bytes() == expected[slow_name]


@pytest.mark.parametrize("failure", ["stopped", "stalled"])
def test_server_trouble_is_eio(
    make_server: Callable[..., ArchiveServer], tmp_path: Path, failure: str
) -> None:
    srv = make_server()
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", "--timeout", "1", "--retries", "1") as m:
        assert run(["ls", str(m.path)]).returncode == 0
        if failure == "stopped":
            srv.stop()
        else:
            srv.config.stall = 30.0
        for cmd in (["ls", str(m.path / PETCR)], ["stat", str(m.path / MR / "BRAIN-001")]):
            start = time.monotonic()
            done = run(cmd, timeout=30)
            assert time.monotonic() - start < 20
            assert done.returncode != 0
            assert "Input/output error" in done.stderr, done.stderr
        srv.config.stall = 0.0


def test_daemon_mode_and_umount(make_server: Callable[..., ArchiveServer], tmp_path: Path) -> None:
    srv = make_server()
    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = nbiafs_cmd("mount", str(mp), *server_args(srv.url), "--cache-dir", str(tmp_path / "cache"))
    try:
        done = run(cmd, timeout=60, env=nbiafs_env())
        assert done.returncode == 0, done.stderr
        assert is_mounted(mp), "nbiafs mount returned before the mount was ready"
        name, data = next(iter(archive_files(srv.archive, PETCR).items()))
        found = run(["find", str(mp / PETCR), "-name", name])
        assert Path(found.stdout.strip()).read_bytes() == data
        done = run(nbiafs_cmd("umount", str(mp)), env=nbiafs_env())
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mp)
        assert wait_until(lambda: any(r.endpoint == "logout" for r in srv.requests), 15), "no logout"
    finally:
        if is_mounted(mp):
            run(["fusermount3", "-uz", str(mp)], timeout=15)
    done = run(nbiafs_cmd("umount", str(mp)), env=nbiafs_env())
    assert done.returncode == 1 and "not mounted" in done.stderr


def test_daemon_mode_reports_failure(archive_server: ArchiveServer, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = nbiafs_cmd(
        "mount", str(mp), *server_args(archive_server.url), "--cache-dir", str(tmp_path / "cache")
    )
    try:
        done = run(cmd, timeout=60, env=nbiafs_env(ALICE, "not her password"))
        assert done.returncode == 3  # a credential error: status 3, which systemd does not restart
        assert "mount failed" in done.stderr and "refused" in done.stderr
        assert done.stderr.count("refused") == 1, done.stderr
        assert not is_mounted(mp)
    finally:
        if is_mounted(mp):
            run(["fusermount3", "-uz", str(mp)], timeout=15)


def test_demo(tmp_path: Path) -> None:
    from nbiafs.server.synthetic import synthetic_archive

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
        name, data = next(iter(archive_files(synthetic_archive(), PETCR).items()))
        found = run(["find", str(mp / PETCR), "-name", name])
        assert found.returncode == 0 and Path(found.stdout.strip()).read_bytes() == data
        assert run(nbiafs_cmd("umount", str(mp)), env=nbiafs_env()).returncode == 0
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert b"umount" in out and b"ls " in out
    finally:
        if is_mounted(mp):
            run(["fusermount3", "-uz", str(mp)], timeout=15)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_start_mount_fails_clearly(archive_server: ArchiveServer, tmp_path: Path) -> None:
    """A mountpoint that is not a directory is refused before anything is mounted."""
    (tmp_path / "file").write_text("x")
    done = run(
        nbiafs_cmd("mount", "-f", str(tmp_path / "file"), *server_args(archive_server.url)), env=nbiafs_env()
    )
    assert done.returncode == 1 and "not a directory" in done.stderr
    with pytest.raises(AssertionError):
        start_mount(
            tmp_path / "mnt",
            archive_server.url,
            tmp_path / "cache",
            "--layout",
            "uid",
            "--cart",
            "x",
            "--manifest",
            "y",
            timeout=20,
        )
