"""Single flight: concurrent calls for the same key run the work once and all share its outcome.

Used by the listing cache (one request per listing however many FUSE threads list it) and the instance cache
(one download per instance per process). Written by hand: cachetools has nothing of the kind, and the PyPI
packages that do it are young one-person projects, most of them asyncio-first; this is a dict of
:class:`concurrent.futures.Future` objects behind one lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Generic, TypeVar

from nbiafs.errors import RequestTimeoutError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FLIGHT_WAIT = 900.0
"""Seconds a thread waits for another thread's (or process's) request for the same thing. That request has
its own timeouts; this only bounds the wait if something is badly wrong."""


class SingleFlight(Generic[K, V]):
    """At most one running call per key in this process; the others wait for it. Thread-safe.

    ``what`` names the work in timeout messages (e.g. ``"listing"``, ``"download"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._flights: dict[K, Future[V]] = {}

    def run(self, key: K, fn: Callable[[], V], timeout: float) -> V:
        """``fn()``, called by the first caller of ``key`` (the leader) only; every caller gets its result.

        Whatever ``fn`` raises is raised to the leader and to every follower. A follower waits at most
        ``timeout`` seconds, then raises RequestTimeoutError (the leader goes on). Once the leader is done the
        key is free: the next call runs ``fn`` again (caching results is the caller's business).
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            try:
                return flight.result(timeout=timeout)
            except FutureTimeoutError:
                raise RequestTimeoutError(
                    f"gave up waiting {timeout:g} s for another thread's {self.what} of {key!r}"
                ) from None
        try:
            result = fn()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            with self._lock:
                del self._flights[key]
