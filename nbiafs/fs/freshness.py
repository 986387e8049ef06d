"""Live freshness: ask the server what changed, and make only the affected listings be asked again.

Every ``interval`` seconds while the server is reachable, a background thread asks getUpdatedSeries for the
series released since the last check (the server compares with release dates, by day, so each check asks
from a day before the last one and ignores series it has already seen). For each new series it marks its
patient as changed (the study and series listings of that patient), and its collection (the patient
listing) or the root (the collection list) only when the listings held do not name that patient or
collection yet: the tree then lists those directories again the next time they
are looked at, and nothing else. A series published on the server so appears within one interval, with no
remount, while the listing TTL can stay long.

Hand-written because the change feed is NBIA's own (getUpdatedSeries); the thread and its wake-ups are the
standard library's.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from cachetools import LRUCache

from nbiafs.api.records import Series
from nbiafs.errors import NbiaError
from nbiafs.fs.offline import Connectivity

log = logging.getLogger(__name__)

_SEEN_MAX = 1_000_000  # series UIDs remembered as already handled
_OVERLAP = dt.timedelta(days=1)  # release dates are compared by day: ask from a day before the last check


class Changes:
    """When each part of the tree was last said to have changed (wall-clock seconds). Thread-safe.

    Keys: ``()`` the root (the collection list), ``(collection,)`` a collection's patient list,
    ``(collection, patient_id)`` a patient's studies and their series.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: dict[tuple[str, ...], float] = {}

    def mark(self, key: tuple[str, ...], when: float) -> None:
        with self._lock:
            self._at[key] = max(when, self._at.get(key, -math.inf))

    def since(self, key: tuple[str, ...]) -> float:
        """When ``key`` last changed (``-inf``: never said to)."""
        with self._lock:
            return self._at.get(key, -math.inf)


class FreshnessPoller:
    """The background thread that turns getUpdatedSeries into :class:`Changes` marks.

    ``updated_series(since_date)`` is the client's getUpdatedSeries; ``knows(collection, patient_id)`` says
    whether the listings held already name the collection (in the root) and the patient (in the collection).
    ``start`` is when the first check counts from (seconds since the epoch: the oldest listing the tree may
    hold). The thread never raises: a failed check is logged and tried at the next tick.
    """

    def __init__(
        self,
        updated_series: Callable[[dt.date], Sequence[Series]],
        changes: Changes,
        connectivity: Connectivity,
        knows: Callable[[str, str], tuple[bool, bool]],
        *,
        interval: float,
        start: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._updated_series = updated_series
        self._changes = changes
        self._connectivity = connectivity
        self._knows = knows
        self.interval = interval
        self._clock = clock
        self._last = start
        self._seen: LRUCache[str, bool] = LRUCache(maxsize=_SEEN_MAX)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread (a no-op when ``interval`` is 0 or it runs already)."""
        if self.interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nbiafs-freshness", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (it is never in the middle of anything that must finish)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._connectivity.online:
                continue  # the offline probe brings it back; then the next tick catches up
            try:
                self.check()
            except NbiaError as exc:
                log.info("could not ask the server what changed: %s", exc)
            except Exception:  # a background thread has nobody to raise to
                log.exception("checking for changes failed unexpectedly")

    def check(self) -> int:
        """Ask once what changed since the last check; returns how many new series were found."""
        now = self._clock()
        since = dt.datetime.fromtimestamp(self._last, dt.timezone.utc).date() - _OVERLAP
        found = self._connectivity.call(lambda: self._updated_series(since))
        fresh = 0
        for series in found:
            uid = series.series_instance_uid
            if uid in self._seen:
                continue
            self._seen[uid] = True
            fresh += 1
            collection, patient = series.collection or "", series.patient_id or ""
            in_root, in_collection = self._knows(collection, patient)
            if not in_root:
                self._changes.mark((), now)
            if not in_collection:
                self._changes.mark((collection,), now)
            self._changes.mark((collection, patient), now)
        self._last = now
        if fresh:
            log.info(
                "the server published %d series since the last check; listing their directories again", fresh
            )
        return fresh
