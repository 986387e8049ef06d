"""InstanceCache: the free-space floor, ENOSPC, and refusing a cache directory others could write to."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from nbiafs.errors import BadResponseError, ConfigError, NoSpaceError
from nbiafs.fs import instance_cache
from nbiafs.fs.instance_cache import FREE_FLOOR_BYTES, InstanceCache

KEY = "srv_1.2.3.{}"
GIB = 1 << 30


class Disk:
    """A fake file system: ``free`` bytes free of ``total``; cached files count against it."""

    def __init__(self, free: int, total: int = 100 * GIB) -> None:
        self.free = free
        self.total = total
        self.directory: Path | None = None

    def __call__(self, path: Path) -> tuple[int, int]:
        used = sum(p.stat().st_size for p in Path(path, "data").rglob("*.dcm")) if self.directory else 0
        return self.free - used, self.total


def writer(data: bytes) -> instance_cache.Callable[[BinaryIO], int]:
    def download(out: BinaryIO) -> int:
        return out.write(data)

    return download


def make(tmp_path: Path, disk: Disk, min_free: int | None = 1000) -> InstanceCache:
    cache = InstanceCache(tmp_path / "c", 10**9, min_free=min_free, disk_usage=disk)
    disk.directory = cache.directory
    return cache


def test_default_floor_is_5_percent_or_1_gib(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "a", None, disk_usage=lambda _p: (GIB, 10 * GIB)) as small:
        assert small.free_floor() == GIB // 2  # 5 % of 10 GiB
    with InstanceCache(tmp_path / "b", None, disk_usage=lambda _p: (GIB, 1000 * GIB)) as large:
        assert large.free_floor() == FREE_FLOOR_BYTES == GIB


def test_eviction_makes_room_before_writing(tmp_path: Path) -> None:
    disk = Disk(free=1000 + 3 * 400)  # room for three 400-byte entries above the floor
    with make(tmp_path, disk) as cache:
        for i in range(3):
            cache.fetch(KEY.format(i), writer(b"x" * 400), expected=400)
        assert cache.info().entries == 3
        cache.get(KEY.format(0))  # 1 is now the least recently used
        cache.fetch(KEY.format(3), writer(b"y" * 400), expected=400)
        assert cache.peek(KEY.format(1)) is None
        assert {cache.peek(KEY.format(i)) for i in (0, 2, 3)} == {400}


def test_no_space_when_nothing_can_be_evicted(tmp_path: Path) -> None:
    disk = Disk(free=1500)
    with make(tmp_path, disk) as cache:
        calls: list[int] = []

        def download(out: BinaryIO) -> int:
            calls.append(1)
            return out.write(b"z" * 600)

        with pytest.raises(NoSpaceError) as raised:
            cache.fetch(KEY.format(1), download, expected=600)
        assert raised.value.errno == errno.ENOSPC
        assert calls == []  # refused before any request
        assert "floor" in str(raised.value)


def test_enospc_while_writing_evicts_and_retries_once(tmp_path: Path) -> None:
    disk = Disk(free=10**9)
    with make(tmp_path, disk, min_free=0) as cache:
        cache.fetch(KEY.format(1), writer(b"a" * 300))
        attempts: list[int] = []

        def full_once(out: BinaryIO) -> int:
            attempts.append(1)
            if len(attempts) == 1:
                out.write(b"b" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
            return out.write(b"b" * 200)

        path = cache.fetch(KEY.format(2), full_once, expected=200)
        assert path.read_bytes() == b"b" * 200 and len(attempts) == 2
        assert cache.peek(KEY.format(1)) is None  # evicted to make room
        assert not list(Path(cache.directory, "data").rglob("*.part"))

        def always_full(out: BinaryIO) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(NoSpaceError):
            cache.fetch(KEY.format(3), always_full)  # the retry fails too, or nothing to evict
        with InstanceCache(tmp_path / "empty", None, min_free=0, disk_usage=disk) as empty:
            with pytest.raises(NoSpaceError) as raised:
                empty.fetch(KEY.format(4), always_full)  # nothing to evict: at once
            assert raised.value.errno == errno.ENOSPC


def test_refused_download_leaves_nothing(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 10**6) as cache:

        def refuse(path: Path) -> None:
            raise BadResponseError("not the instance asked for")

        with pytest.raises(BadResponseError):
            cache.fetch(KEY.format(1), writer(b"junk"), check=refuse)
        assert cache.peek(KEY.format(1)) is None and cache.info().entries == 0
        assert not [p for p in Path(cache.directory, "data").rglob("*") if p.is_file()]


@pytest.mark.parametrize("sub", ["", "data"])
def test_directory_writable_by_others_is_refused(tmp_path: Path, sub: str) -> None:
    directory = tmp_path / "shared"
    InstanceCache(directory, None).close()
    os.chmod(directory / sub, 0o777)
    with pytest.raises(ConfigError) as raised:
        InstanceCache(directory, None)
    message = str(raised.value)
    assert "writable by others" in message and "chmod 700" in message and "--cache-dir" in message


def test_directory_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    monkeypatch.setattr(instance_cache.os, "geteuid", lambda: os.stat(directory).st_uid + 1)
    with pytest.raises(ConfigError, match="belongs to user id"):
        InstanceCache(directory, None)
