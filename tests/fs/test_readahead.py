"""Read-ahead across a series: what a sequential reader triggers, and what it must not."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from nbiafs.errors import ServerError
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.readahead import ReadAhead

SOPS = tuple(f"1.2.3.{i}" for i in range(100))
SIZE = 1000


class Downloads:
    """A fake getSingleImage: counts calls per SOPInstanceUID, optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.delay = delay
        self.fail = fail

    def __call__(self, series_uid: str, sop_uid: str, out: BinaryIO) -> int:
        with self.lock:
            self.calls[sop_uid] = self.calls.get(sop_uid, 0) + 1
        time.sleep(self.delay)
        if self.fail:
            raise ServerError("injected", status=503)
        return out.write(sop_uid.encode().ljust(SIZE, b"\0"))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[InstanceCache]:
    c = InstanceCache(tmp_path / "cache", 10_000_000)
    yield c
    c.close()


def test_one_open_fetches_nothing_ahead(cache: InstanceCache) -> None:
    downloads = Downloads()
    ahead = ReadAhead(cache, downloads, window=8, workers=4)
    try:
        ahead.opened("S", SOPS, 0, SIZE)
        time.sleep(0.2)
        assert downloads.calls == {}
    finally:
        ahead.close()


def test_sequential_opens_fetch_the_window_once(cache: InstanceCache) -> None:
    downloads = Downloads()
    ahead = ReadAhead(cache, downloads, window=8, workers=4)
    try:
        ahead.opened("S", SOPS, 0, SIZE)
        ahead.opened("S", SOPS, 1, SIZE)
        wait_for(lambda: all(cache.peek(s) is not None for s in SOPS[2:10]))
        ahead.opened("S", SOPS, 2, SIZE)
        wait_for(lambda: cache.peek(SOPS[10]) is not None)
        time.sleep(0.1)
        assert set(downloads.calls) == set(SOPS[2:11])
        assert all(n == 1 for n in downloads.calls.values())
        assert cache.peek(SOPS[11]) is None
    finally:
        ahead.close()


def test_a_jump_resets_the_pattern(cache: InstanceCache) -> None:
    downloads = Downloads()
    ahead = ReadAhead(cache, downloads, window=8, workers=4)
    try:
        ahead.opened("S", SOPS, 50, SIZE)
        ahead.opened("S", SOPS, 10, SIZE)  # backwards: no pattern
        ahead.opened("S", SOPS, 90, SIZE)  # far ahead: no pattern
        time.sleep(0.2)
        assert downloads.calls == {}
    finally:
        ahead.close()


def test_window_is_bounded_by_bytes_and_series_end(cache: InstanceCache) -> None:
    downloads = Downloads()
    ahead = ReadAhead(cache, downloads, window=32, workers=4, max_bytes=3 * SIZE)
    try:
        ahead.opened("S", SOPS, 96, SIZE)
        ahead.opened("S", SOPS, 97, SIZE)
        wait_for(lambda: len(downloads.calls) == 2)
        time.sleep(0.1)
        assert set(downloads.calls) == {SOPS[98], SOPS[99]}
    finally:
        ahead.close()


def test_reader_and_readahead_share_one_download(cache: InstanceCache) -> None:
    downloads = Downloads(delay=0.2)
    ahead = ReadAhead(cache, downloads, window=4, workers=4)
    try:
        ahead.opened("S", SOPS, 0, SIZE)
        ahead.opened("S", SOPS, 1, SIZE)
        time.sleep(0.05)  # read-ahead of SOPS[2] is under way
        cache.fetch(SOPS[2], lambda out: downloads("S", SOPS[2], out))
        assert downloads.calls[SOPS[2]] == 1
    finally:
        ahead.close()


def test_failures_are_swallowed_and_close_is_prompt(cache: InstanceCache) -> None:
    downloads = Downloads(fail=True)
    ahead = ReadAhead(cache, downloads, window=8, workers=2)
    ahead.opened("S", SOPS, 0, SIZE)
    ahead.opened("S", SOPS, 1, SIZE)
    wait_for(lambda: len(downloads.calls) >= 1)
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 5
    assert all(cache.peek(s) is None for s in SOPS)
    ahead.opened("S", SOPS, 2, SIZE)  # after close: nothing scheduled, no error


def test_window_zero_turns_it_off(cache: InstanceCache) -> None:
    downloads = Downloads()
    ahead = ReadAhead(cache, downloads, window=0)
    for i in range(10):
        ahead.opened("S", SOPS, i, SIZE)
    time.sleep(0.1)
    assert downloads.calls == {}
    ahead.close()
