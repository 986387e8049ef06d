"""Read-ahead across the instances of a series.

A DICOM series is hundreds of small files, and ``cp -r``, ``tar`` or a DICOM tool walks them one at a time,
so a cold read pays one request round trip per file. When a reader opens instances of one series in listing
order, :class:`ReadAhead` has the next ``window`` instances downloaded into the disk cache in the background
(by a :class:`~nbiafs.fs.background.BackgroundPool`), so the round trips overlap. The disk cache's single
flight means a file the reader opens while its read-ahead is still running waits for that one download
instead of starting another.

Read-ahead starts only on the second consecutive open in one series, so opening a single file (a viewer
showing one slice) never downloads its neighbours. At that moment ``whole(series_uid, sop_uids, index)`` is
asked whether the series is fetched some other way (the tree streams small-instance series as one ZIP); if
so, no instance of that series is fetched one by one. It is hand-written because no library schedules
downloads from a file-open pattern.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from cachetools import LRUCache

from nbiafs.fs.background import BackgroundPool, Priority

log = logging.getLogger(__name__)

Fetch = Callable[[str, str], object]
"""``fetch(series_uid, sop_uid)``: bring one instance into the disk cache."""
Cached = Callable[[str], bool]
"""``cached(sop_uid)``: whether the disk cache holds the instance."""
Whole = Callable[[str, Sequence[str], int], bool]
"""``whole(series_uid, sop_uids, index)``: take over the whole series from ``index`` on (True), or not."""

WORKERS = 6
"""Read-ahead downloads at once when ReadAhead has a pool of its own."""

_SERIES_TRACKED = 1024  # series whose reading position is remembered


class _State(NamedTuple):
    """Where a reader is in one series."""

    last: int  # index of the instance last opened
    scheduled: int  # highest index scheduled so far
    walking: bool  # a walk was detected (second consecutive open)
    wholesale: bool  # ``whole`` took the series over


class ReadAhead:
    """Background prefetch of the instances that follow the ones a reader opens. Thread-safe.

    ``window`` instances at most are fetched ahead of the reader (0 turns read-ahead off), never more than
    ``max_bytes`` (estimated, None: no bound) ahead, so read-ahead cannot evict what is being read. Jobs go
    to ``pool`` (else a pool of ``workers`` threads of its own), each with the priority ``priority + (i,)``
    for the instance at index ``i`` (see :meth:`opened`).
    """

    def __init__(
        self,
        fetch: Fetch,
        cached: Cached,
        *,
        window: int,
        workers: int = WORKERS,
        max_bytes: int | None = None,
        pool: BackgroundPool | None = None,
        whole: Whole | None = None,
    ) -> None:
        self.window = max(0, window)
        self._fetch_one = fetch
        self._cached = cached
        self._max_bytes = max_bytes
        self._whole = whole
        self._lock = threading.Lock()
        self._positions: LRUCache[str, _State] = LRUCache(maxsize=_SERIES_TRACKED)
        self._own_pool = pool is None and self.window > 0
        self._pool = pool
        if pool is None and self.window:
            self._pool = BackgroundPool(workers, "nbiafs-readahead")
        self._closed = False

    def opened(
        self, series_uid: str, sop_uids: Sequence[str], index: int, estimate: int, priority: Priority = ()
    ) -> bool:
        """The reader opened ``sop_uids[index]`` of a series listed as ``sop_uids``; schedule what follows.

        ``estimate`` is the expected size of one instance in bytes (bounds the bytes fetched ahead);
        ``priority`` the series' position for the pool. Returns True when this open started a walk of the
        series (the second consecutive open).
        """
        if self._pool is None or self._closed or not self.window:
            return False
        window = self.window
        if self._max_bytes is not None and estimate > 0:
            window = min(window, max(0, self._max_bytes // estimate))
        with self._lock:
            state = self._positions.get(series_uid)
            if state is None or not state.last < index <= state.last + 1 + window // 2:
                # The first open in this series, or a jump (backwards or far ahead): no pattern yet.
                wholesale = state.wholesale if state is not None else False
                self._positions[series_uid] = _State(index, index, False, wholesale)
                return False
            started = not state.walking
            ask_whole = started and not state.wholesale and self._whole is not None
            if state.wholesale or ask_whole:
                self._positions[series_uid] = _State(index, max(state.scheduled, index), True, True)
                start = end = 0
            else:
                start = max(index + 1, state.scheduled + 1)
                end = min(len(sop_uids), index + 1 + window)
                self._positions[series_uid] = _State(index, max(state.scheduled, end - 1), True, False)
        if ask_whole:
            assert self._whole is not None
            if self._whole(series_uid, sop_uids, index + 1):
                return True
            start, end = index + 1, min(len(sop_uids), index + 1 + window)
            with self._lock:  # not taken over: one by one after all
                self._positions[series_uid] = _State(index, end - 1, True, False)
        for i in range(start, end):
            sop_uid = sop_uids[i]
            if not self._cached(sop_uid):
                self._pool.submit((*priority, i), self._job(series_uid, sop_uid), key=("instance", sop_uid))
        return started

    def _job(self, series_uid: str, sop_uid: str) -> Callable[[], None]:
        def run() -> None:
            if self._closed or self._cached(sop_uid):
                return
            self._fetch_one(series_uid, sop_uid)

        return run

    def close(self) -> None:
        """Stop scheduling; a pool of its own drops what has not started and waits for downloads under way."""
        self._closed = True
        if self._own_pool and self._pool is not None:
            self._pool.close()
