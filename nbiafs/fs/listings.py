"""The listing cache: every metadata answer the tree is built from, kept in memory and on disk, asked once.

:class:`ListingCache` has one typed method per request the tree makes (collections, patients of a collection,
studies and series of a patient, the series of a filter, SOPInstanceUIDs of a series); each returns a
:class:`Listing`, the rows together with the time they were fetched.

Every answer is kept in memory (a cachetools TLRU cache, so an answer loaded from disk expires when its own
fetch time plus ``ttl`` is reached) and, with a :class:`~nbiafs.fs.listing_store.MetaStore`, on disk in a
namespace of the client's :attr:`~nbiafs.fs.protocols.ArchiveClient.scope` (server URL and user), so a
remount lists with no request while the answers are fresh and accounts never share listings. Concurrent
requests for the same answer make one request (single flight, :mod:`nbiafs.fs.flight`). A caller that needs
an answer newer than the one cached (to see newly published data) passes ``fresh_after``.

A series filter (a manifest or a cart) is served by one ``getSeries?SeriesInstanceUID=`` per filtered series,
``FILTER_WORKERS`` at a time, each cached like any other answer; a series that is unknown or invisible to the
account is simply absent.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import TLRUCache

from nbiafs.api.records import Patient, Series, Study
from nbiafs.errors import AccessDeniedError, NotFoundError
from nbiafs.fs.flight import FLIGHT_WAIT, SingleFlight
from nbiafs.fs.listing_store import MetaStore, decode_records, encode_records
from nbiafs.fs.protocols import ArchiveClient

log = logging.getLogger(__name__)

FILTER_WORKERS = 8
"""Concurrent getSeries requests when resolving a series filter."""

# Memory bound: what falls out is read back from the metastore (no request) or, without one, asked again.
_MEMORY_ROWS = 250_000  # rows (records or UIDs) kept in memory across all answers
_SEP = "\x1f"

R = TypeVar("R", bound="str | Patient | Study | Series")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Listing(Generic[R]):
    """One answer: its rows as the server sent them, and when (seconds since the epoch) they were fetched."""

    fetched_at: float
    rows: Sequence[R]


class ListingCache:
    """Typed, cached metadata requests of one client. Thread-safe.

    ``ttl``: seconds an answer stays fresh (memory and disk). ``clock``: the time source, seconds since the
    epoch (the store's fetch times are compared with it). Every method takes ``fresh_after``: a cached answer
    fetched before it is not used. Methods raise what the client raises (NbiaError subclasses), and
    RequestTimeoutError if another thread's identical request outlasts ``FLIGHT_WAIT``.
    """

    def __init__(
        self,
        client: ArchiveClient,
        store: MetaStore | None,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._store = store.scoped(client.scope) if store is not None else None
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: TLRUCache[str, Listing[Any]] = TLRUCache(
            maxsize=_MEMORY_ROWS,
            ttu=lambda _k, v, _now: v.fetched_at + ttl,
            timer=clock,
            getsizeof=lambda v: 1 + len(v.rows),
        )
        self._flights: SingleFlight[str, Listing[Any]] = SingleFlight("listing")

    # --- one method per request ---------------------------------------------------------------------------

    def collections(self, fresh_after: float = -math.inf) -> Listing[str]:
        """getCollectionValues."""
        return self._answer(_key("collections"), str, self._client.collections, fresh_after)

    def patients(self, collection: str, fresh_after: float = -math.inf) -> Listing[Patient]:
        """getPatient?Collection=``collection``."""
        return self._answer(
            _key("patients", collection),
            Patient,
            lambda: self._client.patients(collection=collection),
            fresh_after,
        )

    def studies(self, collection: str, patient_id: str, fresh_after: float = -math.inf) -> Listing[Study]:
        """getPatientStudy?Collection=``collection``&PatientID=``patient_id``."""
        return self._answer(
            _key("studies", collection, patient_id),
            Study,
            lambda: self._client.studies(collection, patient_id=patient_id),
            fresh_after,
        )

    def series(self, collection: str, patient_id: str, fresh_after: float = -math.inf) -> Listing[Series]:
        """getSeries?Collection=``collection``&PatientID=``patient_id`` (every study of the patient)."""
        return self._answer(
            _key("series", collection, patient_id),
            Series,
            lambda: self._client.series(collection=collection, patient_id=patient_id),
            fresh_after,
        )

    def sop_instance_uids(self, series_uid: str, fresh_after: float = -math.inf) -> Listing[str]:
        """getSOPInstanceUIDs?SeriesInstanceUID=``series_uid``."""
        return self._answer(
            _key("sops", series_uid),
            str,
            lambda: self._client.sop_instance_uids(series_uid),
            fresh_after,
        )

    def filtered_series(self, uids: Collection[str], fresh_after: float = -math.inf) -> Listing[Series]:
        """The series of ``uids`` that exist and the account may see, sorted by UID.

        One getSeries?SeriesInstanceUID= each, ``FILTER_WORKERS`` at a time, each cached; ``fetched_at`` is
        that of the oldest answer.
        """
        ordered = sorted(uids)
        if not ordered:
            return Listing(self._clock(), ())

        def one(uid: str) -> Listing[Series]:
            try:
                return self._answer(
                    _key("series-uid", uid),
                    Series,
                    lambda: self._client.series(series_instance_uid=uid),
                    fresh_after,
                )
            except (NotFoundError, AccessDeniedError) as exc:
                # An invisible series is simply absent, as it is from any listing.
                log.info("series %s of the filter is not available: %s", uid, exc)
                return Listing(self._clock(), ())

        if len(ordered) == 1:
            answers = [one(ordered[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(FILTER_WORKERS, len(ordered))) as pool:
                answers = list(pool.map(one, ordered))
        found = [
            s
            for uid, answer in zip(ordered, answers, strict=True)
            for s in answer.rows
            if s.series_instance_uid == uid
        ]
        return Listing(min(a.fetched_at for a in answers), tuple(found))

    # --- memory, disk, single flight ----------------------------------------------------------------------

    def _answer(
        self, key: str, kind: type[R], load: Callable[[], Iterable[R]], fresh_after: float
    ) -> Listing[R]:
        """The answer of ``key``: from memory, else the store, else one request shared by every thread."""
        hit = self._remembered(key, kind, fresh_after)
        if hit is not None:
            return hit

        def lead() -> Listing[R]:
            # Another leader may have finished between our cache check and this flight.
            again = self._remembered(key, kind, fresh_after)
            if again is not None:
                return again
            log.debug("listing %r from the server", key.replace(_SEP, "/"))
            answer = Listing(self._clock(), tuple(load()))
            with self._lock:
                remember(self._answers, key, answer)
            if self._store is not None:
                self._store.put(key, encode_records(answer.rows), fetched_at=answer.fetched_at)
            return answer

        return self._flights.run(key, lead, FLIGHT_WAIT)

    def _remembered(self, key: str, kind: type[R], fresh_after: float) -> Listing[R] | None:
        with self._lock:
            hit = self._answers.get(key)
        if hit is not None and hit.fetched_at >= fresh_after:
            return hit  # only ever stored by ``_answer`` with the same key, hence the same kind
        if self._store is None:
            return None
        stored = self._store.get(key, self._ttl, now=self._clock())
        if stored is None or stored[0] < fresh_after:
            return None
        try:
            answer = Listing(stored[0], _typed(decode_records(stored[1]), kind))
        except ValueError as exc:
            log.warning("stored listing %r unreadable (%s); asking the server", key, exc)
            return None
        with self._lock:
            remember(self._answers, key, answer)
        return answer


def remember(cache: TLRUCache[K, V], key: K, value: V) -> None:
    """Insert into a size-bounded cache; a value larger than the whole cache is simply not kept."""
    try:
        cache[key] = value
    except ValueError:
        log.debug("listing %r too large to keep in memory", key)


def _typed(rows: Sequence[object], kind: type[R]) -> tuple[R, ...]:
    """``rows`` if every one is a ``kind``; ValueError otherwise (a stored row of the wrong type)."""
    typed = tuple(row for row in rows if isinstance(row, kind))
    if len(typed) != len(rows):
        raise ValueError(f"a stored row is not a {kind.__name__}")
    return typed


def _key(kind: str, *parts: str) -> str:
    return _SEP.join((kind, *parts))
