"""``nbiafs prefetch``: through a real mount against the bundled server (every mount with deadlines, always
unmounted), and its progress output."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from nbiafs.cli.prefetch import Progress, Totals
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.server import ArchiveServer
from tests.helpers import ALICE, ALICE_PASSWORD, RESTRICTED, MakeServer, settle
from tests.mountutil import (
    archive_files,
    files_under,
    mounted,
    nbiafs_cmd,
    nbiafs_env,
    needs_fuse,
    run,
    server_args,
)

COLLECTION = "RIDER Synth CT"  # 44 instances, 3 series, 412.5 KiB
COLLECTION_BYTES = 422384
OTHER = "NBIAFS-Bench"  # 200 instances, 1.8 MiB: more than a small cache holds
IMAGE_ENDPOINTS = ("getSingleImage", "getImage", "getImageWithMD5Hash")

F = TypeVar("F", bound=Callable[..., None])


def mount_test(test: F) -> F:
    """A test that mounts for real: marked ``mount``, skipped without FUSE, with a deadline."""
    marked: F = pytest.mark.mount(needs_fuse(pytest.mark.timeout(150)(test)))
    return marked


def prefetch(*args: str, timeout: float = 120.0) -> tuple[int, str, str]:
    done = run(nbiafs_cmd("prefetch", "--progress-interval", "0.2", *args), env=nbiafs_env(), timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def cache_cmd(*args: str) -> tuple[int, str, str]:
    done = run(nbiafs_cmd("cache", *args), env=nbiafs_env(), timeout=60)
    return done.returncode, done.stdout, done.stderr


def image_requests(srv: ArchiveServer) -> list[str]:
    settle(srv)
    return [r.path for r in srv.requests if r.endpoint in IMAGE_ENDPOINTS]


def read_all(root: Path) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in files_under(root).items()}


def assert_plain_progress(stderr: str) -> None:
    """Progress on a pipe is plain lines (no carriage returns, no bar), then the summary."""
    assert "\r" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("prefetch: series")]
    assert lines, stderr
    assert all("files " in line and "ETA" in line and "/s" in line for line in lines)


@mount_test
def test_pinned_collection_is_served_offline_and_after_a_remount(
    tmp_path: Path, make_server: MakeServer
) -> None:
    srv = make_server()
    cache_dir = tmp_path / "cache"
    expected = archive_files(srv.archive, COLLECTION)
    with mounted(tmp_path / "mnt", srv.url, cache_dir) as m:
        # One file read by hand first: prefetch resumes around it.
        first = sorted(files_under(m.path / COLLECTION).values())[0]
        first.read_bytes()
        status, _out, err = prefetch(str(m.path / COLLECTION), "--pin")
        assert status == 0, err + m.log()
        assert_plain_progress(err)
        assert "44 files in 3 series" in err and "44 pinned" in err
        assert "(412.5 KiB expected)" in err
        srv.stop()
        assert read_all(m.path / COLLECTION) == expected
    with mounted(tmp_path / "mnt", srv.url, cache_dir) as m:  # the server is still down
        assert read_all(m.path / COLLECTION) == expected, m.log()
    status, out, _err = cache_cmd("info", "--cache-dir", str(cache_dir))
    assert status == 0
    assert f"{COLLECTION}: pinned 412.5 KiB ({COLLECTION_BYTES} bytes), unpinned 0 B (0 bytes)" in out


@mount_test
def test_running_it_again_makes_no_image_request(tmp_path: Path, make_server: MakeServer) -> None:
    srv = make_server()
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache") as m:
        one = sorted(files_under(m.path / COLLECTION).values())[-1]
        status, _out, err = prefetch(str(one))  # a single file
        assert status == 0, err
        assert "1 files in 1 series" in err and "1 fetched" in err
        assert len(image_requests(srv)) == 1
        status, _out, err = prefetch(str(m.path / COLLECTION))
        assert status == 0, err
        assert "1 cached before" in err
        srv.clear_requests()
        status, _out, err = prefetch(str(m.path / COLLECTION), str(m.path / COLLECTION))
        assert status == 0, err
        assert "0 fetched" in err and "44 cached before" in err
        assert image_requests(srv) == []


@mount_test
def test_pins_survive_copying_more_than_the_cache_holds(tmp_path: Path, make_server: MakeServer) -> None:
    srv = make_server()
    cache_dir = tmp_path / "cache"
    with mounted(tmp_path / "mnt", srv.url, cache_dir, "--cache-size", "1M") as m:
        status, _out, err = prefetch(str(m.path / COLLECTION), "--pin")
        assert status == 0, err
        copied = read_all(m.path / OTHER)  # 1.8 MiB through a 1 MiB cache: evicts all it may
        assert copied == archive_files(srv.archive, OTHER)
        srv.clear_requests()
        status, _out, err = prefetch(str(m.path / COLLECTION))
        assert status == 0, err
        assert image_requests(srv) == [], "pinned instances were evicted"
    with InstanceCache(cache_dir, None) as cache:
        info = cache.info()
    assert info.pinned_bytes == COLLECTION_BYTES and info.pinned_entries == 44
    assert info.total_bytes <= (1 << 20) + 64 * 1024  # the bound held for the rest


@mount_test
def test_a_pin_that_does_not_fit_is_refused_before_any_download(
    tmp_path: Path, make_server: MakeServer
) -> None:
    srv = make_server()
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", "--cache-size", "300K") as m:
        status, _out, err = prefetch(str(m.path / COLLECTION), "--pin")
        assert status == 1
        assert "refusing to pin" in err
        assert "412.5 KiB" in err and "300.0 KiB (307200 bytes)" in err, err
        assert image_requests(srv) == []


@mount_test
def test_unpin_and_clear_remove_pins(tmp_path: Path, make_server: MakeServer) -> None:
    srv = make_server()
    cache_dir = tmp_path / "cache"
    with mounted(tmp_path / "mnt", srv.url, cache_dir) as m:
        series = sorted(p for p in (m.path / COLLECTION).glob("*/*/*") if p.is_dir())
        assert len(series) == 3
        assert prefetch(str(m.path / COLLECTION), "--pin")[0] == 0
        status, out, err = cache_cmd("unpin", str(series[0]))
        assert status == 0, err
        unpinned = len(list(series[0].iterdir()))
        assert f"unpinned {unpinned} entries" in out
        with InstanceCache(cache_dir, None) as cache:
            assert cache.info().pinned_entries == 44 - unpinned
        status, out, _err = cache_cmd("info", "--cache-dir", str(cache_dir))
        assert f"in {44 - unpinned} entries" in out
        assert f"{COLLECTION}: pinned " in out and f"({44} entries)" in out
        status, out, err = cache_cmd("clear", "--cache-dir", str(cache_dir))
        assert status == 0, err
        with InstanceCache(cache_dir, None) as cache:
            assert cache.info().pinned_entries == 0
        # Pinned again (everything is fetched again), then unpinned by collection.
        assert prefetch(str(m.path / COLLECTION), "--pin")[0] == 0
        status, out, _err = cache_cmd("unpin", "--collection", COLLECTION, "--cache-dir", str(cache_dir))
        assert "unpinned 44 entries" in out


@mount_test
def test_a_failing_prefetch_exits_non_zero_with_a_summary(tmp_path: Path, make_server: MakeServer) -> None:
    srv = make_server()
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", user=ALICE, password=ALICE_PASSWORD) as m:
        root = m.path / RESTRICTED
        names = sorted(files_under(root))  # listed (and the listings cached) while alice may see it
        assert len(names) == 10
        srv.config.restricted[RESTRICTED].discard(ALICE)  # revoked: getSingleImage answers 500
        status, _out, err = prefetch(str(root), timeout=180)
        assert status == 1, err
        assert "10 failed (EACCES 10)" in err, err
        assert err.count(f"  {root}/") == 5  # the first few paths
        assert "Permission denied" in err


@mount_test
def test_a_manifest_through_a_mountpoint(tmp_path: Path, make_server: MakeServer) -> None:
    srv = make_server()
    series_uids = sorted(
        {s.series_instance_uid for s, _i in srv.archive.iter_instances() if s.collection == COLLECTION}
    )
    manifest = tmp_path / "two.tcia"
    manifest.write_text("manifestVersion=3.0\nListOfSeriesToDownload=\n" + "\n".join(series_uids[:2]) + "\n")
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache") as m:
        args = ["--manifest", str(manifest), "--mountpoint", str(m.path), *server_args(srv.url)]
        status, _out, err = prefetch(*args)
        assert status == 0, err
        assert " in 2 series" in err
        srv.clear_requests()
        status, _out, err = prefetch(*args)
        assert status == 0 and "0 fetched" in err, err
        assert image_requests(srv) == []
        status, _out, err = prefetch("--manifest", str(manifest))
        assert status != 0 and "--mountpoint" in err


def test_not_inside_a_mount(tmp_path: Path) -> None:
    status, _out, err = prefetch(str(tmp_path))
    assert status == 1 and "not inside an nbiafs mount" in err


def totals() -> Totals:
    return Totals(series=2, files=4, bytes=4000, cached_files=1, cached_bytes=1000)


def test_plain_progress_lines() -> None:
    stream = io.StringIO()
    with Progress(totals(), stream=stream, tty=False, interval=60) as progress:
        progress.add_bytes(1000)
        progress.file_done(1200, 1000, counted=True)
        progress.series_done()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the start and the end (the interval did not pass)
    assert lines[0].startswith("prefetch: series 0/2, files 1/4, ")
    assert lines[1].startswith("prefetch: series 1/2, files 2/4, 2.0 KiB/4.1 KiB (47%), ")
    assert "ETA" in lines[1]


def test_a_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    with Progress(totals(), stream=stream, tty=True, interval=60) as progress:
        progress.add_bytes(3000)
        progress.file_done(3000, 3000, counted=True)
        progress.series_done()
    text = stream.getvalue()
    assert "\r" in text and "series 1/2, files 2/4" in text


def test_quiet_prints_nothing() -> None:
    stream = io.StringIO()
    with Progress(totals(), stream=stream, tty=False, interval=0.1, quiet=True) as progress:
        progress.add_bytes(10)
    assert stream.getvalue() == ""
