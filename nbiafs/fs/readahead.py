"""Read-ahead across the instances of a series.

A DICOM series is hundreds of small files, and ``cp -r``, ``tar`` or a DICOM tool walks them one at a time,
so a cold read pays one request round trip per file. When a reader opens instances of one series in listing
order, :class:`ReadAhead` downloads the next ``window`` instances into the disk cache in the background, a
bounded number at a time, so the round trips overlap. The disk cache's single flight means a file the reader
opens while its read-ahead is still running waits for that one download instead of starting another.

Read-ahead starts only on the second consecutive open in one series, so opening a single file (a viewer
showing one slice) never downloads its neighbours. It is hand-written because no library schedules downloads
from a file-open pattern; the thread pool is the standard library's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from cachetools import LRUCache

from nbiafs.errors import NbiaError

log = logging.getLogger(__name__)

Fetch = Callable[[str, str], object]
"""``fetch(series_uid, sop_uid)``: bring one instance into the disk cache."""
Cached = Callable[[str], bool]
"""``cached(sop_uid)``: whether the disk cache holds the instance."""

WORKERS = 6
"""Read-ahead downloads at once (per tree)."""

_SERIES_TRACKED = 1024  # series whose reading position is remembered


class ReadAhead:
    """Background prefetch of the instances that follow the ones a reader opens. Thread-safe.

    ``window`` instances at most are fetched ahead of the reader (0 turns read-ahead off; the tree passes
    :attr:`~nbiafs.settings.TreeSettings.readahead`), ``workers`` at once, and never more than ``max_bytes``
    (estimated, None: no bound) ahead, so read-ahead cannot evict what is being read.
    """

    def __init__(
        self,
        fetch: Fetch,
        cached: Cached,
        *,
        window: int,
        workers: int = WORKERS,
        max_bytes: int | None = None,
    ) -> None:
        self.window = max(0, window)
        self._fetch_one = fetch
        self._cached = cached
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        # series UID -> (index of the last instance the reader opened, highest index scheduled so far)
        self._positions: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=_SERIES_TRACKED)
        self._pool = (
            ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="nbiafs-readahead")
            if self.window
            else None
        )
        self._closed = False

    def opened(self, series_uid: str, sop_uids: Sequence[str], index: int, estimate: int) -> None:
        """The reader opened ``sop_uids[index]`` of a series listed as ``sop_uids``; schedule what follows.

        ``estimate`` is the expected size of one instance in bytes (bounds the bytes fetched ahead).
        """
        if self._pool is None or self._closed:
            return
        window = self.window
        if self._max_bytes is not None and estimate > 0:
            window = min(window, max(0, self._max_bytes // estimate))
        with self._lock:
            state = self._positions.get(series_uid)
            if state is None or not state[0] < index <= state[0] + 1 + window // 2:
                # The first open in this series, or a jump (backwards or far ahead): no pattern yet.
                self._positions[series_uid] = (index, index)
                return
            scheduled = state[1]
            start = max(index + 1, scheduled + 1)
            end = min(len(sop_uids), index + 1 + window)
            self._positions[series_uid] = (index, max(scheduled, end - 1))
        for sop_uid in sop_uids[start:end]:
            if not self._cached(sop_uid):
                try:
                    self._pool.submit(self._fetch, series_uid, sop_uid)
                except RuntimeError:  # shut down meanwhile
                    return

    def _fetch(self, series_uid: str, sop_uid: str) -> None:
        if self._closed or self._cached(sop_uid):
            return
        try:
            self._fetch_one(series_uid, sop_uid)
        except NbiaError as exc:  # the reader's own open will meet (and report) the same error
            log.debug("read-ahead of %s failed: %s", sop_uid, exc)
        except Exception:
            log.exception("read-ahead of %s failed unexpectedly", sop_uid)

    def close(self) -> None:
        """Stop scheduling, drop what has not started, wait for downloads under way (bounded by timeouts)."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
