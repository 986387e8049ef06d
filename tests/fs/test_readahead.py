"""Read-ahead across a series: what a sequential reader triggers, and what it must not."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pytest

from nbiafs.errors import ServerError
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.readahead import ReadAhead
from tests.fs.helpers import Calls, wait_for

SOPS = tuple(f"1.2.3.{i}" for i in range(100))
SIZE = 1000


class Downloads:
    """A fake getSingleImage: counts calls per SOPInstanceUID, optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: Calls[str] = Calls()
        self.delay = delay
        self.fail = fail

    def __call__(self, series_uid: str, sop_uid: str, out: BinaryIO) -> int:
        self.calls.add(sop_uid)
        time.sleep(self.delay)
        if self.fail:
            raise ServerError("injected", status=503)
        return out.write(sop_uid.encode().ljust(SIZE, b"\0"))


Make = Callable[..., tuple[ReadAhead, Downloads]]


@pytest.fixture
def make(cache: InstanceCache) -> Iterator[Make]:
    """``make(window=..., delay=..., fail=..., **options)`` -> a ReadAhead over ``cache`` and its downloads.

    Every ReadAhead made is closed afterwards.
    """
    made: list[ReadAhead] = []

    def factory(*, delay: float = 0.0, fail: bool = False, **options: Any) -> tuple[ReadAhead, Downloads]:
        downloads = Downloads(delay=delay, fail=fail)
        ahead = ReadAhead(
            lambda series, sop: cache.fetch(sop, lambda out: downloads(series, sop, out)),
            lambda sop: cache.peek(sop) is not None,
            **options,
        )
        made.append(ahead)
        return ahead, downloads

    yield factory
    for ahead in made:
        ahead.close()


def test_one_open_fetches_nothing_ahead(make: Make) -> None:
    ahead, downloads = make(window=8, workers=4)
    ahead.opened("S", SOPS, 0, SIZE)
    time.sleep(0.2)
    assert downloads.calls == {}


def test_sequential_opens_fetch_the_window_once(make: Make, cache: InstanceCache) -> None:
    ahead, downloads = make(window=8, workers=4)
    ahead.opened("S", SOPS, 0, SIZE)
    ahead.opened("S", SOPS, 1, SIZE)
    wait_for(lambda: all(cache.peek(s) is not None for s in SOPS[2:10]))
    ahead.opened("S", SOPS, 2, SIZE)
    wait_for(lambda: cache.peek(SOPS[10]) is not None)
    time.sleep(0.1)
    assert set(downloads.calls) == set(SOPS[2:11])
    assert all(n == 1 for n in downloads.calls.values())
    assert cache.peek(SOPS[11]) is None


def test_a_jump_resets_the_pattern(make: Make) -> None:
    ahead, downloads = make(window=8, workers=4)
    ahead.opened("S", SOPS, 50, SIZE)
    ahead.opened("S", SOPS, 10, SIZE)  # backwards: no pattern
    ahead.opened("S", SOPS, 90, SIZE)  # far ahead: no pattern
    time.sleep(0.2)
    assert downloads.calls == {}


def test_window_is_bounded_by_bytes_and_series_end(make: Make) -> None:
    ahead, downloads = make(window=32, workers=4, max_bytes=3 * SIZE)
    ahead.opened("S", SOPS, 96, SIZE)
    ahead.opened("S", SOPS, 97, SIZE)
    wait_for(lambda: len(downloads.calls) == 2)
    time.sleep(0.1)
    assert set(downloads.calls) == {SOPS[98], SOPS[99]}


def test_reader_and_readahead_share_one_download(make: Make, cache: InstanceCache) -> None:
    ahead, downloads = make(delay=0.2, window=4, workers=4)
    ahead.opened("S", SOPS, 0, SIZE)
    ahead.opened("S", SOPS, 1, SIZE)
    wait_for(lambda: SOPS[2] in downloads.calls)  # read-ahead of SOPS[2] is under way
    cache.fetch(SOPS[2], lambda out: downloads("S", SOPS[2], out))
    assert downloads.calls[SOPS[2]] == 1


def test_failures_are_swallowed_and_close_is_prompt(make: Make, cache: InstanceCache) -> None:
    ahead, downloads = make(fail=True, window=8, workers=2)
    ahead.opened("S", SOPS, 0, SIZE)
    ahead.opened("S", SOPS, 1, SIZE)
    wait_for(lambda: len(downloads.calls) >= 1)
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 5
    assert all(cache.peek(s) is None for s in SOPS)
    ahead.opened("S", SOPS, 2, SIZE)  # after close: nothing scheduled, no error


def test_window_zero_turns_it_off(make: Make) -> None:
    ahead, downloads = make(window=0)
    for i in range(10):
        ahead.opened("S", SOPS, i, SIZE)
    time.sleep(0.1)
    assert downloads.calls == {}
