"""The mount's background work (read-ahead, series ZIPs, listing prefetch): a few threads, most urgent first.

One :class:`BackgroundPool` per tree runs every background request, so background work never holds more
connections than it has workers: the tree gives it ``max_connections - 2`` (see :func:`background_slots`),
which leaves connections free for a reader's own requests (the client's pool blocks beyond
``max_connections``). Jobs carry a priority, a tuple compared in order: the tree uses a path's position in
the tree (the index of each name in its sorted directory), so jobs run in the order a depth-first walker
(``cp -r``, ``ls -R``) reaches them. A job key already queued or running is not queued again.

Hand-written because the standard library's executors are first-in first-out and cannot drop duplicates.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Hashable

from nbiafs.errors import NbiaError

log = logging.getLogger(__name__)

RESERVED_FOR_READERS = 2
"""Connections of the client's pool that background work leaves to readers."""

Priority = tuple[int, ...]


def background_slots(max_connections: int) -> int:
    """Background requests at once for a client of ``max_connections``: all but two, at least one."""
    return max(1, max_connections - RESERVED_FOR_READERS)


class BackgroundPool:
    """``workers`` threads running submitted jobs, lowest priority first (FIFO among equals). Thread-safe."""

    def __init__(self, workers: int, name: str = "nbiafs-background") -> None:
        self.workers = max(1, workers)
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[Priority, int, Hashable, Callable[[], object]]] = []
        self._keys: set[Hashable] = set()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.running = 0

    def submit(self, priority: Priority, job: Callable[[], object], key: Hashable | None = None) -> bool:
        """Queue ``job``; False when closed, or when ``key`` is already queued or running."""
        with self._cond:
            if self._closed or (key is not None and key in self._keys):
                return False
            seq = next(self._seq)
            if key is None:
                key = ("anonymous", seq)
            self._keys.add(key)
            heapq.heappush(self._heap, (priority, seq, key, job))
            if len(self._threads) < self.workers and len(self._threads) < len(self._heap) + self.running:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}")
                thread.daemon = True
                self._threads.append(thread)
                thread.start()
            self._cond.notify_all()
        return True

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._heap) + self.running

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                _priority, _seq, key, job = heapq.heappop(self._heap)
                self.running += 1
            try:
                job()
            except NbiaError as exc:  # the reader's own request will meet (and report) the same error
                log.debug("background job %r failed: %s", key, exc)
            except Exception:
                log.exception("background job %r failed unexpectedly", key)
            finally:
                with self._cond:
                    self.running -= 1
                    self._keys.discard(key)
                    self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running (for tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._heap and not self.running, timeout)

    def close(self) -> None:
        """Drop queued jobs and wait for running ones (bounded by their requests' timeouts)."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()
