"""The listing cache: every metadata answer the tree is built from, kept in memory and on disk, asked once.

:class:`ListingCache` has one typed method per request the tree makes (collections, patients of a collection,
studies and series of a patient, the series of a filter, SOPInstanceUIDs of a series); each returns a
:class:`Listing`, the rows together with the time they were fetched.

Every answer is kept in memory (a size-bounded cachetools LRU cache; an answer is fresh until its own fetch
time plus ``ttl``, and an expired one stays to be served while the server cannot be reached) and, with a
:class:`~nbiafs.fs.listing_store.MetaStore`, on disk in a namespace of the client's
:attr:`~nbiafs.fs.protocols.ArchiveClient.scope` (server URL and user), so a remount lists with no request
while the answers are fresh and accounts never share listings. Concurrent
requests for the same answer make one request (single flight, :mod:`nbiafs.fs.flight`). A caller that needs
an answer newer than the one cached (to see newly published data) passes ``fresh_after``.

A series filter (a manifest or a cart) is served by one ``getSeries?SeriesInstanceUID=`` per filtered series,
``FILTER_WORKERS`` at a time, each cached like any other answer; a series that is unknown or invisible to the
account is simply absent.

Empty answers. Production NBIA answers most list requests made with a dead token with 200 and no rows, so an
empty answer where the parent says rows must exist (``expect_rows``: a listed collection has patients, a patient
studies, a study with SeriesCount > 0 series, a series with ImageCount > 0 instances) makes the cache renew the
token (``client.renew_token()``) and ask once more. An empty answer, doubtful or not, is never written to disk
and is kept in memory for ``negative_ttl`` seconds only.

Offline (see :mod:`nbiafs.fs.offline`). When the server cannot be reached (UnavailableError), every answer
held in memory or on disk is served whatever its age (stale-if-error); while offline no request is sent for a
listing at all: what was never cached raises UnavailableError at once.

Restricted data. A getCollectionValues answer fetched from the server drops every cached patient, study and
series listing (memory and disk) of the collections it no longer names.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from nbiafs.api.records import Patient, Series, Study
from nbiafs.errors import AccessDeniedError, NotFoundError, UnavailableError
from nbiafs.fs.flight import FLIGHT_WAIT, SingleFlight
from nbiafs.fs.listing_store import MetaStore, decode_records, encode_records
from nbiafs.fs.offline import Connectivity
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

    ``ttl``: seconds an answer stays fresh (memory and disk); ``negative_ttl``: seconds an empty answer is kept
    (memory only). ``clock``: the time source, seconds since the epoch (the store's fetch times are compared
    with it). ``connectivity``: the offline state shared with the tree (default: one of its own, probing with
    getCollectionValues). Every method takes ``fresh_after``: a cached answer fetched before it is not used
    while the server answers. Methods raise what the client raises (NbiaError subclasses; UnavailableError only
    for an answer never cached), and RequestTimeoutError if another thread's identical request outlasts
    ``FLIGHT_WAIT``.
    """

    def __init__(
        self,
        client: ArchiveClient,
        store: MetaStore | None,
        *,
        ttl: float,
        negative_ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
        connectivity: Connectivity | None = None,
    ) -> None:
        self._client = client
        self._store = store.scoped(client.scope) if store is not None else None
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self.connectivity = connectivity or Connectivity(client.collections)
        self._lock = threading.Lock()
        # Expired answers stay (within the bound) to be served while the server cannot be reached.
        self._answers: LRUCache[str, Listing[Any]] = LRUCache(
            maxsize=_MEMORY_ROWS, getsizeof=lambda v: 1 + len(v.rows)
        )
        self._flights: SingleFlight[str, Listing[Any]] = SingleFlight("listing")

    def expires(self, answer: Listing[Any]) -> float:
        """When ``answer`` stops being fresh (seconds since the epoch)."""
        return answer.fetched_at + (self._ttl if answer.rows else self._negative_ttl)

    # --- one method per request ---------------------------------------------------------------------------

    def collections(self, fresh_after: float = -math.inf) -> Listing[str]:
        """getCollectionValues; a fresh answer drops the cached listings of collections it no longer names."""
        return self._answer(
            _key("collections"), str, self._client.collections, fresh_after, on_fresh=self._forget_others
        )

    def patients(
        self, collection: str, fresh_after: float = -math.inf, *, expect_rows: bool = False
    ) -> Listing[Patient]:
        """getPatient?Collection=``collection``."""
        return self._answer(
            _key("patients", collection),
            Patient,
            lambda: self._client.patients(collection=collection),
            fresh_after,
            expect_rows=expect_rows,
        )

    def studies(
        self, collection: str, patient_id: str, fresh_after: float = -math.inf, *, expect_rows: bool = False
    ) -> Listing[Study]:
        """getPatientStudy?Collection=``collection``&PatientID=``patient_id``."""
        return self._answer(
            _key("studies", collection, patient_id),
            Study,
            lambda: self._client.studies(collection, patient_id=patient_id),
            fresh_after,
            expect_rows=expect_rows,
        )

    def series(
        self, collection: str, patient_id: str, fresh_after: float = -math.inf, *, expect_rows: bool = False
    ) -> Listing[Series]:
        """getSeries?Collection=``collection``&PatientID=``patient_id`` (every study of the patient)."""
        return self._answer(
            _key("series", collection, patient_id),
            Series,
            lambda: self._client.series(collection=collection, patient_id=patient_id),
            fresh_after,
            expect_rows=expect_rows,
        )

    def sop_instance_uids(
        self, series_uid: str, fresh_after: float = -math.inf, *, expect_rows: bool = False
    ) -> Listing[str]:
        """getSOPInstanceUIDs?SeriesInstanceUID=``series_uid``."""
        return self._answer(
            _key("sops", series_uid),
            str,
            lambda: self._client.sop_instance_uids(series_uid),
            fresh_after,
            expect_rows=expect_rows,
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
        self,
        key: str,
        kind: type[R],
        load: Callable[[], Iterable[R]],
        fresh_after: float,
        *,
        expect_rows: bool = False,
        on_fresh: Callable[[Listing[R]], None] | None = None,
    ) -> Listing[R]:
        """The answer of ``key``: from memory, else the store, else one request shared by every thread; an
        answer of any age when the server cannot be reached."""
        hit = self._remembered(key, kind, fresh_after)
        if hit is not None:
            return hit
        if not self.connectivity.online:
            return self._stale_or_raise(key, kind, None)

        fetched: list[Listing[R]] = []  # what this thread fetched as the flight's leader, to persist

        def lead() -> Listing[R]:
            # Another leader may have finished between our cache check and this flight (into memory).
            again = self._in_memory(key, fresh_after)
            if again is not None:
                return again
            where = key.replace(_SEP, "/")
            log.debug("listing %r from the server", where)
            rows = tuple(self.connectivity.call(load))
            if not rows and expect_rows:
                # Production's answer to a dead token looks like this: renew it and ask once more.
                log.info(
                    "listing %r is empty where rows must exist; renewing the token and asking again", where
                )
                if self.connectivity.call(self._client.renew_token):
                    rows = tuple(self.connectivity.call(load))
                if not rows:
                    log.warning("listing %r is still empty; kept for %g s only", where, self._negative_ttl)
            answer = Listing(self._clock(), rows)
            with self._lock:
                remember(self._answers, key, answer)
            fetched.append(answer)
            return answer

        try:
            answer = self._flights.run(key, lead, FLIGHT_WAIT)
        except UnavailableError as exc:
            return self._stale_or_raise(key, kind, exc)
        if fetched:
            # Persisted once the threads waiting for the answer have it (they find it in memory meanwhile).
            if self._store is not None and answer.rows:  # an empty answer is never kept on disk
                self._store.put(key, encode_records(answer.rows), fetched_at=answer.fetched_at)
            if on_fresh is not None:
                on_fresh(answer)
        return answer

    def _stale_or_raise(self, key: str, kind: type[R], exc: UnavailableError | None) -> Listing[R]:
        """Any cached answer of ``key`` whatever its age (the server cannot be reached), else the error."""
        stale = self._stale(key, kind)
        if stale is not None:
            log.debug(
                "server unreachable: serving %r fetched at %.0f", key.replace(_SEP, "/"), stale.fetched_at
            )
            return stale
        if exc is not None:
            raise exc
        raise UnavailableError(f"offline, and {key.replace(_SEP, '/')!r} was never listed")

    def _remembered(self, key: str, kind: type[R], fresh_after: float) -> Listing[R] | None:
        hit = self._in_memory(key, fresh_after)
        if hit is not None or self._store is None:
            return hit
        return self._stored(key, kind, self._ttl, fresh_after, self._clock())

    def _in_memory(self, key: str, fresh_after: float) -> Listing[Any] | None:
        """The fresh answer of ``key`` held in memory (stored by ``_answer`` with the same key, hence kind)."""
        now = self._clock()
        with self._lock:
            hit = self._answers.get(key)
        if hit is not None and fresh_after <= hit.fetched_at <= now + 1.0 and now < self.expires(hit):
            return hit
        return None

    def _stale(self, key: str, kind: type[R]) -> Listing[R] | None:
        now = self._clock()
        with self._lock:
            hit = self._answers.get(key)
            if hit is not None and not hit.rows and now >= self.expires(hit):
                self._answers.pop(key, None)  # an empty answer lives negative_ttl, even offline
                hit = None
        if hit is not None:
            return hit
        if self._store is None:
            return None
        return self._stored(key, kind, math.inf, -math.inf, now)

    def _stored(
        self, key: str, kind: type[R], max_age: float, fresh_after: float, now: float
    ) -> Listing[R] | None:
        assert self._store is not None
        stored = self._store.get(key, max_age, now=now)
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

    def knows(self, collection: str, patient_id: str) -> tuple[bool, bool]:
        """Whether the listings held in memory (of any age) already name ``collection`` in the root, and
        ``patient_id`` in that collection; (True, True) when nothing is held (nothing to refresh there)."""
        with self._lock:
            root = self._answers.get(_key("collections"))
            patients = self._answers.get(_key("patients", collection))
        in_root = root is None or collection in root.rows
        in_collection = patients is None or any(p.patient_id == patient_id for p in patients.rows)
        return in_root, in_collection

    def _forget_others(self, answer: Listing[str]) -> None:
        """Drop cached listings (memory and disk) of collections a fresh getCollectionValues no longer names."""
        if not answer.rows:
            return  # an empty root is not trusted to wipe the caches
        keep = set(answer.rows)

        def gone(key: str) -> bool:
            kind, _, rest = key.partition(_SEP)
            return kind in _BY_COLLECTION and rest.split(_SEP, 1)[0] not in keep

        with self._lock:
            dropped = [k for k in list(self._answers) if gone(k)]
            for k in dropped:
                self._answers.pop(k, None)
        stored = [k for k in self._store.list_keys() if gone(k)] if self._store is not None else []
        for k in stored:
            assert self._store is not None
            self._store.delete(k)
        collections = {k.split(_SEP)[1] for k in (*dropped, *stored)}
        if collections:
            log.warning(
                "collections no longer listed by the server, their cached listings dropped: %s",
                ", ".join(sorted(collections)),
            )


_BY_COLLECTION = frozenset({"patients", "studies", "series"})


def remember(cache: MutableMapping[K, V], key: K, value: V) -> None:
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
