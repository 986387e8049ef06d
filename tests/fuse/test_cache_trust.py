"""What a mount lets into its cache: a cache directory others can write is refused, an entry left by another
server is never served, an instance larger than the cache is read in full and not kept."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.server import ArchiveServer
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

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]

PETCR = "NBIAFS-PET-CR"


def test_cache_directory_writable_by_others_is_refused(archive_server: ArchiveServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run(
        nbiafs_cmd("mount", "-f", str(mnt), *server_args(archive_server.url), "--cache-dir", str(cache)),
        timeout=30,
        env=nbiafs_env(),
    )
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "writable by others" in said and f"chmod 700 {cache}" in said, said


def test_entries_of_another_server_are_never_served(archive_server: ArchiveServer, tmp_path: Path) -> None:
    """A file cached under a bare SOPInstanceUID (as another server's mount once could) is not read."""
    expected = archive_files(archive_server.archive, PETCR)
    cache = tmp_path / "cache"
    with InstanceCache(cache, None) as planted:
        for name in expected:
            planted.fetch(name.removesuffix(".dcm"), lambda out: out.write(b"\0" * 128 + b"DICM poisoned"))
    with mounted(tmp_path / "mnt", archive_server.url, cache) as m:
        got = files_under(m.path / PETCR)
        assert sorted(got) == sorted(expected)
        for name, path in got.items():
            assert path.read_bytes() == expected[name]


def test_instance_larger_than_the_cache_is_read_not_kept(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server()
    expected = archive_files(srv.archive, PETCR)
    bound = min(len(data) for data in expected.values()) - 1  # every instance is larger than the cache
    cache = tmp_path / "cache"
    with mounted(tmp_path / "mnt", srv.url, cache, "--cache-size", str(bound), "--readahead", "0") as m:
        for name, path in files_under(m.path / PETCR).items():
            assert path.read_bytes() == expected[name]
            done = run(["md5sum", str(path)])
            assert done.returncode == 0, done.stderr
    with InstanceCache(cache, None) as after:
        assert after.info().entries == 0
    assert not [p for p in (cache / "data").rglob("*") if p.is_file()]
    assert not list((cache / "spill").iterdir())  # the mount removed what it served at unmount
