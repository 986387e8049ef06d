"""The archive as a tree of paths: ``/<Collection>/<PatientID>/<study>/<series>/<SOPInstanceUID>.dcm``.

:class:`ArchiveTree` resolves a path one directory level at a time, listing at most the directories on the
path, never the whole archive. Which request lists which directory (``C`` a collection, ``P`` a PatientID):

========== ================================================= ==============================================
directory  request                                           note
========== ================================================= ==============================================
root       getCollectionValues                               filtered by ``collections``
collection getPatient?Collection=C
patient    getPatientStudy?Collection=C&PatientID=P          names need StudyDate/StudyID/StudyDescription
study      getSeries?Collection=C&PatientID=P                ONE request serves every study of the patient
series     getSOPInstanceUIDs?SeriesInstanceUID=S
========== ================================================= ==============================================

With ``TreeSettings.series_filter`` (a manifest or a cart) the root, collection and study levels come from one
``getSeries?SeriesInstanceUID=`` per filtered series (run 8 at a time, each cached), so no whole collection is
ever listed; a patient's entry then carries only its PatientID and Collection (getPatient is not asked), and a
patient directory still asks getPatientStudy for that one patient.

Caches. Every answer comes through a :class:`~nbiafs.fs.listings.ListingCache` (memory, disk, single flight;
see there). The directories derived from the answers are kept in memory until their oldest answer expires. A
name missing from a listing that is older than ``negative_ttl`` causes one re-listing (to see newly published
data); a name still missing is remembered as missing for ``negative_ttl`` seconds, so repeated probes
(``.git``, ``desktop.ini``) cost nothing.

Sizes and times. Directories have size 0. An instance's size is exact when the disk cache holds it, else
``ceil(FileSize / ImageCount)`` of its series (``DEFAULT_INSTANCE_SIZE`` when the series gives neither), with
``exact_size=False``; no image is downloaded to stat a file. ``mtime`` comes from the data, never from the
clock: a series (and its instances) uses its release date (DateReleased, else TimeStamp), else its SeriesDate,
else its study's StudyDate; a study its StudyDate; the root, collections, patients and anything without a
date use the Unix epoch. Dates carry no time zone and are read as UTC.

Offline (:mod:`nbiafs.fs.offline`). When the server cannot be reached the tree serves every listing it holds
(memory or disk, whatever its age), answers a name missing from a held listing with NotFoundError at once, and
raises UnavailableError at once for a listing or an instance never cached; a background probe brings it back.

Fetch strategy. Opening an instance downloads it (getSingleImage). When a reader walks a series (the second
consecutive open in listing order, see :mod:`~nbiafs.fs.readahead`), a series of small instances
(``FileSize / ImageCount`` under ``ZIP_MAX_AVERAGE``) is streamed as one series ZIP with its members' MD5s
(md5hashes.csv, last) whose members are filed, each under the SOPInstanceUID read from its header, once
their MD5s are verified (:mod:`~nbiafs.fs.series_zip`): all at once when md5hashes.csv arrives, or, for a
member a reader has waited ``EARLY_MD5_AFTER`` seconds for, as soon as one getMD5HashForImage confirms it.
The ZIP claims the series' instances in the disk cache, so a reader waiting for one is released when its
member is filed, and what the ZIP does not bring (or brings altered) is fetched one by one.
``TreeSettings.verify_md5`` checks each getSingleImage download against getMD5HashForImage too. Larger
instances are read ahead one by one, ``WIDE_WINDOW`` times ``readahead`` ahead. A reader that walks from
one series into the next has the ``SERIES_AHEAD`` series after it listed and started. Every background
request runs in one :class:`~nbiafs.fs.background.BackgroundPool` of ``max_connections - 2`` threads, in the
order a depth-first walker reaches them, so a reader's own request never queues behind them in the client's
pool.

Listing prefetch. Listing a patient lists its first study (one getSeries serves all its studies) and that
study's first series; listing a study lists its first series. Listing two sibling directories in a row is a
walk of their parent: its whole subtree is listed in the background (at most ``LISTINGS_AHEAD`` directories
ahead of the walker, one request per directory). ``readahead`` 0 turns every prefetch off.

Instances are cached under ``<hash of the server's API URL>_<SOPInstanceUID>`` (two mounts of one server share
them, another server cannot supply them) and only once :func:`~nbiafs.fs.dicomcheck.check_instance` accepts
the download as the complete DICOM instance asked for.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

from cachetools import LRUCache, TLRUCache, TTLCache

from nbiafs.api.records import Patient, Series, Study
from nbiafs.errors import BadResponseError, NbiaError, NotFoundError, UnavailableError
from nbiafs.fs import names
from nbiafs.fs.background import BackgroundPool, Priority, background_slots
from nbiafs.fs.dicomcheck import check_instance
from nbiafs.fs.freshness import Changes, FreshnessPoller
from nbiafs.fs.instance_cache import Claim
from nbiafs.fs.listing_store import MetaStore
from nbiafs.fs.listings import Listing, ListingCache, remember
from nbiafs.fs.offline import PROBE_INTERVAL, Connectivity
from nbiafs.fs.protocols import ArchiveClient, InstanceStore, Md5Source, SeriesStreamer
from nbiafs.fs.readahead import ReadAhead
from nbiafs.fs.series_zip import copy_member, file_series
from nbiafs.settings import ClientSettings, TreeSettings

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_SIZE = 512 * 1024
"""Bytes shown for an uncached instance whose series gives no FileSize/ImageCount."""

XATTR_PREFIX = "user.nbia."

# Memory bounds: a directory that falls out is derived again from its (cached) answers.
_MEMORY_DIRS = 250_000  # directory entries kept in memory across all derived directories
_NEGATIVE_MAX = 100_000
_EPOCH = 0.0
_STALE_DIR_KEEP = 5.0  # seconds a directory built from an expired (offline) listing is kept in memory

_R = TypeVar("_R", Study, Series)

ZIP_MAX_AVERAGE = 256 * 1024
"""A series whose instances average fewer bytes than this (FileSize / ImageCount) is fetched as one getImage
ZIP when a reader walks it; larger ones instance by instance (getSingleImage), many at once."""
EARLY_MD5_AFTER = 0.3
"""Seconds a reader waits for an instance a series ZIP has staged (unverified) before the ZIP asks the server
for that instance's MD5 (one small request) to release it without waiting for md5hashes.csv at its end."""
WIDE_WINDOW = 2
"""Read-ahead of instance-by-instance series fetches this many times ``TreeSettings.readahead`` ahead."""
SERIES_AHEAD = 2
"""Series fetched ahead of a reader that walks from one series to the next (listing and first instances)."""
LISTINGS_AHEAD = 256
"""Directories a walk's listing prefetch may run ahead of the walker."""
_LEVELS = 4  # collection, patient, study, series: the directories above instances
_FAR = 1 << 30  # the position of a name not (yet) in a listing
_FAST_PATHS = 65_536  # resolved paths the warm path remembers (see "fast paths" in ArchiveTree)
_MEMORY_POSITIONS = 4096  # series directories whose walk position is remembered (see _series_position)
_FAST_TOUCH = 60.0  # seconds between two uses of a warm instance counted by the disk cache's LRU


@dataclass(frozen=True)
class Node:
    """What ``stat`` needs about one path. ``size`` in bytes; ``mtime`` in seconds since the epoch."""

    kind: str  # "root" | "collection" | "patient" | "study" | "series" | "instance"
    name: str  # the directory entry name ("" for the root)
    is_dir: bool
    size: int  # bytes; exact for cached instances, else an estimate (FileSize / ImageCount); 0 for dirs
    exact_size: bool  # False while size is an estimate
    mtime: float  # seconds since the epoch, stable across mounts


@dataclass(frozen=True)
class _Entry:
    """A resolved path component and what is needed to list or describe it."""

    kind: str
    name: str
    collection: str = ""
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    record: Patient | Study | Series | None = field(default=None, compare=False)
    series: Series | None = field(default=None, compare=False)  # an instance's series
    mtime: float = _EPOCH


_ROOT = _Entry(kind="root", name="")


@dataclass(frozen=True)
class _Dir:
    """A derived directory listing: entries by name, and when its oldest source answer was fetched."""

    entries: dict[str, _Entry]
    names: tuple[str, ...]  # sorted: the order of readdir
    fetched_at: float
    expires: float
    refreshable: bool = True  # whether re-listing can reveal a missing name (False for filter-built dirs)
    stale: bool = False  # built from an expired listing (served while offline): rebuilt once back online
    # A series directory's instances in readdir order, and each name's index there (for read-ahead).
    sop_uids: tuple[str, ...] = ()
    positions: dict[str, int] | None = None


def _timestamp(value: dt.datetime | dt.date | None) -> float | None:
    """Seconds since the epoch of a naive date read as UTC, or None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.timestamp()
        return float(calendar.timegm(value.timetuple())) + value.microsecond / 1e6
    return float(calendar.timegm(value.timetuple()))


def _series_mtime(series: Series, study_mtime: float) -> float:
    for value in (series.date_released, series.timestamp, series.series_date):
        stamp = _timestamp(value)
        if stamp is not None:
            return stamp
    return study_mtime


def _estimate(series: Series | None) -> int:
    """ceil(FileSize / ImageCount) bytes, or DEFAULT_INSTANCE_SIZE."""
    size, count = (series.file_size, series.image_count) if series is not None else (None, None)
    if size is not None and count is not None and size > 0 and count > 0:
        return max(1, math.ceil(size / count))
    return DEFAULT_INSTANCE_SIZE


def _xattr_value(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return str(value).encode()
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "replace")


def _xattr_key(field_name: str) -> str | None:
    key = "".join(ch for ch in field_name if not ch.isspace() and ch != "\x00")
    if not key:
        return None
    return names.truncate_utf8(XATTR_PREFIX + key)


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _study_name(study: Study, tail: int = names.UID_TAIL) -> str:
    return names.descriptive_study_name(
        study.study_instance_uid, study.study_date, study.study_id, study.study_description, tail=tail
    )


def _series_name(series: Series, tail: int = names.UID_TAIL) -> str:
    return names.descriptive_series_name(
        series.series_instance_uid, series.series_number, series.series_description, tail=tail
    )


class ArchiveTree:
    """Paths to nodes, listings, xattrs and instance files, resolved on demand. Thread-safe.

    ``store`` keeps listings on disk across mounts (None: memory only); the tree scopes it by the client's
    server and user. ``clock`` is the time source (seconds since the epoch) for listing ages and TTLs;
    ``probe_interval`` the seconds between probes of an unreachable server.
    Every method raises :class:`~nbiafs.errors.NotFoundError` for a path that does not exist (or is not a
    directory, for :meth:`listdir`; or not an instance, for :meth:`open_instance`), and lets the client's
    other :class:`~nbiafs.errors.NbiaError` (server down, timeout, access denied) through.
    """

    def __init__(
        self,
        client: ArchiveClient,
        cache: InstanceStore,
        store: MetaStore | None,
        settings: TreeSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.settings = settings or TreeSettings()
        self._client = client
        self._cache = cache
        self._clock = clock
        self.connectivity = Connectivity(client.collections, interval=probe_interval)
        self._listings = ListingCache(
            client,
            store,
            ttl=self.settings.listing_ttl,
            negative_ttl=self.settings.negative_ttl,
            clock=clock,
            connectivity=self.connectivity,
        )
        server = client.scope.split("|", 1)[0]  # "<api url>|<user>": instances depend on the server only
        self._server_key = hashlib.sha256(server.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self._lock = threading.Lock()
        self._dirs: TLRUCache[tuple[str, ...], _Dir] = TLRUCache(
            maxsize=_MEMORY_DIRS,
            ttu=lambda _k, v, _now: v.expires,
            timer=clock,
            getsizeof=lambda v: 1 + len(v.names),
        )
        self._negative: TTLCache[tuple[str, ...], bool] = TTLCache(
            maxsize=_NEGATIVE_MAX, ttl=self.settings.negative_ttl or 1e-9, timer=clock
        )
        wanted = self.settings.collections
        self._wanted = None if wanted is None else {c.casefold() for c in wanted}
        bound = cache.max_bytes
        self._ahead_bytes = bound // 4 if bound else None
        self._streamer = client if isinstance(client, SeriesStreamer) else None
        self._hasher = client if isinstance(client, Md5Source) else None
        self._md5_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nbiafs-md5")
        # SOPInstanceUID -> (readers waiting for it, since when: time.monotonic())
        self._opening: dict[str, tuple[int, float]] = {}
        self._opening_lock = threading.Lock()
        self.background = BackgroundPool(background_slots(_max_connections(client)), "nbiafs-background")
        self._readahead = ReadAhead(
            self._prefetch,
            self._cached,
            window=self.settings.readahead * WIDE_WINDOW,
            max_bytes=self._ahead_bytes,
            pool=self.background,
            whole=self._whole_series,
        )
        self._walk_lock = threading.Lock()
        self._closing = threading.Event()
        self._series_seen: LRUCache[str, tuple[tuple[str, ...], Series | None]] = LRUCache(maxsize=1024)
        self._zipped: LRUCache[str, bool] = LRUCache(maxsize=1024)  # series streamed as a ZIP
        self._walked: LRUCache[tuple[str, ...], bool] = LRUCache(maxsize=1024)  # series a reader walked
        self._listed: LRUCache[tuple[str, ...], bool] = LRUCache(maxsize=4096)  # directories listed
        self._building: dict[tuple[str, ...], int] = {}  # directories being built now -> by how many threads
        self._dir_walks: LRUCache[tuple[str, ...], _DirWalk] = LRUCache(maxsize=64)
        # The warm path's resolutions (see the section "fast paths" at the end of the class).
        self._fast: LRUCache[str, ArchiveTree._Resolved] = LRUCache(maxsize=_FAST_PATHS)
        self._fast_lock = threading.Lock()
        self._positions: dict[tuple[str, ...], Priority] = {}  # series directory -> _position (a plain dict:
        # its get and set are atomic, and a lost insert only costs a recomputation)
        self.changes = Changes()
        self._freshness = FreshnessPoller(
            client.updated_series,
            self.changes,
            self.connectivity,
            self._listings.knows,
            interval=self.settings.poll_interval,
            start=clock() - self.settings.listing_ttl,
            clock=clock,
        )
        self._freshness.start()

    def close(self) -> None:
        """Stop background work (downloads under way finish or time out) and probing. Unusable afterwards."""
        self._closing.set()
        self._freshness.close()
        self._md5_pool.shutdown(wait=False, cancel_futures=True)
        self.connectivity.close()
        self._readahead.close()
        self.background.close()

    def _cached(self, sop_uid: str) -> bool:
        return self._cache.peek(self.instance_key(sop_uid)) is not None

    def instance_key(self, sop_uid: str) -> str:
        """The instance cache's key of ``sop_uid`` on this server."""
        return f"{self._server_key}_{sop_uid}"

    # --- public API ---------------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        """The node at ``path``. Lists each parent directory on the path (cached) and nothing else."""
        entry = self._resolve(path)
        if entry.kind == "instance":
            exact = self._cache.peek(self.instance_key(entry.sop_uid))
            if exact is not None:
                return Node(entry.kind, entry.name, False, exact, True, entry.mtime)
            return Node(entry.kind, entry.name, False, _estimate(entry.series), False, entry.mtime)
        return Node(entry.kind, entry.name, True, 0, True, entry.mtime)

    def listdir(self, path: str) -> list[str]:
        """The entry names of the directory at ``path``, sorted. NotFoundError if it is not a directory."""
        parts = _split(path)
        entry = self._resolve_parts(parts)
        if entry.kind == "instance":
            raise NotFoundError(f"not a directory: {path}")
        listing = self._dir(tuple(parts), entry)
        if self.settings.readahead and self.connectivity.online:
            self._note_listdir(tuple(parts), listing)
        return list(listing.names)

    def xattrs(self, path: str) -> dict[str, bytes]:
        """``user.nbia.<Field>`` -> UTF-8 bytes: a directory's API row; a file's UIDs and series fields.

        And nbiafs's own ``user.nbiafs.*``: the root's ``cache_dir`` and ``cache_max_bytes``; an instance's
        ``key`` (its instance cache key) and ``cached`` (``1`` or ``0``, from a peek at the cache)."""
        entry = self._resolve(path)
        fields: dict[str, Any] = {}
        if entry.kind == "collection":
            fields["Collection"] = entry.collection
        elif entry.kind in ("patient", "study", "series") and entry.record is not None:
            fields.update(entry.record.raw)
            fields.setdefault("Collection", entry.collection)
            fields.setdefault("PatientID", entry.patient_id)
            if entry.kind in ("study", "series"):
                fields.setdefault("StudyInstanceUID", entry.study_uid)
            if entry.kind == "series":
                fields.setdefault("SeriesInstanceUID", entry.series_uid)
        elif entry.kind == "instance":
            fields.update(
                SOPInstanceUID=entry.sop_uid,
                SeriesInstanceUID=entry.series_uid,
                StudyInstanceUID=entry.study_uid,
                PatientID=entry.patient_id,
                Collection=entry.collection,
            )
            series = entry.series
            if series is not None:
                fields.update(
                    Modality=series.modality,
                    SeriesDescription=series.series_description,
                    SeriesNumber=series.series_number,
                    BodyPartExamined=series.body_part_examined,
                    Manufacturer=series.manufacturer,
                    LicenseName=series.license_name,
                    LicenseURI=series.license_uri,
                )
        out: dict[str, bytes] = {}
        for key, value in fields.items():
            name = _xattr_key(str(key))
            data = _xattr_value(value)
            if name is not None and data is not None:
                out[name] = data
        # nbiafs's own, for `nbiafs prefetch` and `nbiafs cache unpin`: where the cache is, and for an
        # instance its cache key and whether it is cached (a peek: nothing is downloaded).
        if entry.kind == "root":
            directory = getattr(self._cache, "directory", None)
            if directory is not None:
                out["user.nbiafs.cache_dir"] = str(directory).encode("utf-8", "surrogateescape")
            if self._cache.max_bytes is not None:
                out["user.nbiafs.cache_max_bytes"] = str(self._cache.max_bytes).encode()
        elif entry.kind == "instance":
            key = self.instance_key(entry.sop_uid)
            out["user.nbiafs.key"] = key.encode("utf-8", "surrogateescape")
            out["user.nbiafs.cached"] = b"1" if self._cache.peek(key) is not None else b"0"
        return out

    def open_instance(self, path: str) -> tuple[Path, bool]:
        """The local file of the instance at ``path`` and whether it was downloaded by this call.

        Downloads it (getSingleImage, one download however many threads open it) if not cached; a cached one
        needs no request (its path resolves through listings served whatever their age while offline). The
        file returned for an instance larger than the cache is not kept: open it at once. NotFoundError if
        ``path`` is not an instance; AccessDeniedError if the server refuses it; BadResponseError if the
        answer is not the complete DICOM instance asked for; UnavailableError at once while offline;
        CacheError (NoSpaceError for a full disk) if it cannot be cached; other client errors pass.
        """
        parts = _split(path)
        entry = self._resolve_parts(parts)
        if entry.kind != "instance":
            raise NotFoundError(f"not an instance: {path}")
        self._note_open(tuple(parts[:-1]), entry)
        cached = self._cache.get(self.instance_key(entry.sop_uid))
        if cached is not None:
            return cached, False
        if not self.connectivity.online:
            raise UnavailableError(f"offline, and {path} is not in the cache")
        sop = entry.sop_uid
        with self._opening_lock:  # a series ZIP staging it may verify it early (see _waiting)
            count, since = self._opening.get(sop, (0, time.monotonic()))
            self._opening[sop] = (count + 1, since)
        try:
            return self._fetch(entry.series_uid, sop, _estimate(entry.series))
        finally:
            with self._opening_lock:
                count, since = self._opening.pop(sop)
                if count > 1:
                    self._opening[sop] = (count - 1, since)

    def _waiting(self) -> frozenset[str]:
        """The SOPInstanceUIDs a reader has waited for ``EARLY_MD5_AFTER`` seconds or more: a series ZIP that
        staged one asks its MD5 rather than keep the reader waiting for md5hashes.csv."""
        if not self._opening:
            return frozenset()
        before = time.monotonic() - EARLY_MD5_AFTER
        with self._opening_lock:
            return frozenset(sop for sop, (_count, since) in self._opening.items() if since <= before)

    def _fetch(self, series_uid: str, sop_uid: str, expected: int) -> tuple[Path, bool]:
        fetched = False
        md5: Future[str | None] | None = None

        def download(out: BinaryIO) -> int:
            nonlocal fetched, md5
            fetched = True
            if self.settings.verify_md5 and self._hasher is not None:
                # Asked beside the download, so the check adds a request but no round trip.
                md5 = self._md5_pool.submit(self._instance_md5, sop_uid)
            log.debug("downloading instance %s of series %s", sop_uid, series_uid)
            return self.connectivity.call(lambda: self._client.download_instance(series_uid, sop_uid, out))

        def check(local: Path) -> None:
            check_instance(local, sop_uid)
            if md5 is not None:
                self._check_md5(local, sop_uid, md5.result())

        local = self._cache.fetch(self.instance_key(sop_uid), download, expected=expected, check=check)
        return local, fetched

    def _instance_md5(self, sop_uid: str) -> str | None:
        """The server's MD5 of one instance (getMD5HashForImage / getM5HashForImage); None: none known."""
        hasher = self._hasher
        if hasher is None:
            return None
        return self.connectivity.call(lambda: hasher.instance_md5(sop_uid))

    def _check_md5(self, local: Path, sop_uid: str, expected: str | None) -> None:
        """``verify_md5``: BadResponseError unless the download's MD5 is ``expected``, the server's (None: none
        known, accepted)."""
        if expected is None:
            return
        digest = hashlib.md5(usedforsecurity=False)
        with open(local, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != expected:
            log.error(
                "instance %s: getSingleImage brought bytes with MD5 %s, the server's MD5 of it is %s; refused",
                sop_uid,
                digest.hexdigest(),
                expected,
            )
            raise BadResponseError(
                f"instance {sop_uid}: the bytes downloaded do not have the server's MD5 ({expected})"
            )

    def _prefetch(self, series_uid: str, sop_uid: str) -> None:
        """Read-ahead's fetch: nothing while offline."""
        if self.connectivity.online and not self._cached(sop_uid):
            self._fetch(series_uid, sop_uid, 0)

    def _note_open(self, series_parts: tuple[str, ...], entry: _Entry, listing: _Dir | None = None) -> None:
        """Tell read-ahead which instance of its series (in readdir order) is being opened (``listing``: the
        series' listing, if the caller holds it)."""
        if listing is None:
            with self._lock:
                listing = self._dirs.get(series_parts)
        if listing is None or listing.positions is None:
            return
        index = listing.positions.get(entry.name)
        if index is None:
            return
        if entry.series_uid not in self._series_seen:  # a read, no LRU update: cheap without the lock
            with self._walk_lock:
                self._series_seen[entry.series_uid] = (series_parts, entry.series)
        started = self._readahead.opened(
            entry.series_uid,
            listing.sop_uids,
            index,
            _estimate(entry.series),
            self._series_position(series_parts),
        )
        if index == len(listing.sop_uids) - 1 and len(series_parts) == _LEVELS:
            with self._walk_lock:  # read to its end (a series of one instance is never "walked")
                self._walked[series_parts] = True
        if started and len(series_parts) == _LEVELS:
            with self._walk_lock:
                self._walked[series_parts] = True
            self.background.submit(
                self._position(series_parts) + (-1,),
                lambda: self._walk_ahead(series_parts),
                key=("walk-ahead", series_parts),
            )

    # --- fetch strategy -----------------------------------------------------------------------------------

    def _series_position(self, parts: tuple[str, ...]) -> Priority:
        """:meth:`_position` of a series directory, remembered (it orders background work only, so one
        computed before a re-listing of its parents is still good enough); every open asks it."""
        position = self._positions.get(parts)
        if position is None:
            position = self._position(parts)
            if len(self._positions) >= _MEMORY_POSITIONS:
                self._positions.clear()
            self._positions[parts] = position
        return position

    def _position(self, parts: Sequence[str]) -> Priority:
        """Where ``parts`` is in a depth-first walk of the tree: each name's index in its listing (held in
        memory), the background pool's priority."""
        position: list[int] = []
        for depth in range(len(parts)):
            with self._lock:
                listing = self._dirs.get(tuple(parts[:depth]))
            if listing is None:
                position.append(_FAR)
                continue
            index = bisect.bisect_left(listing.names, parts[depth])
            found = index < len(listing.names) and listing.names[index] == parts[depth]
            position.append(index if found else _FAR)
        return tuple(position)

    def _zip_worthy(self, series: Series | None) -> bool:
        """Whether ``series`` is fetched as one getImage ZIP: small instances, and it fits read-ahead's bound."""
        if self._streamer is None or series is None:
            return False
        size, count = series.file_size, series.image_count
        if not size or not count or size <= 0 or count <= 0:
            return False
        if self._ahead_bytes is not None and size > self._ahead_bytes:
            return False
        return size / count < ZIP_MAX_AVERAGE

    def _whole_series(self, series_uid: str, sop_uids: Sequence[str], start: int) -> bool:
        """Read-ahead's question when a reader starts walking a series: stream it as a ZIP (True), or not."""
        with self._walk_lock:
            seen = self._series_seen.get(series_uid)
        if seen is None or not self._zip_worthy(seen[1]):
            return False
        self._start_zip(seen[0], series_uid, sop_uids)
        return True

    def _start_zip(self, parts: tuple[str, ...], series_uid: str, sop_uids: Sequence[str]) -> None:
        """Claim the series' uncached instances and queue its ZIP (once per series; what a ZIP did not bring
        is fetched one by one by its job)."""
        with self._walk_lock:
            if self._zipped.get(series_uid):
                return
            self._zipped[series_uid] = True
        keys = {sop: self.instance_key(sop) for sop in sop_uids}
        claim = self._cache.claim(keys.values())
        if not claim.keys:
            return
        priority = self._position(parts)
        queued = self.background.submit(
            priority,
            lambda: self._zip_job(series_uid, sop_uids, keys, claim, priority),
            key=("zip", series_uid),
        )
        if not queued:
            claim.release()

    def _zip_job(
        self, series_uid: str, sop_uids: Sequence[str], keys: dict[str, str], claim: Claim, priority: Priority
    ) -> None:
        """Stream the series' ZIP into the cache (each member once its MD5 is verified), then queue
        getSingleImage for what it did not bring."""
        try:
            if self.connectivity.online and self._streamer is not None and claim.keys:
                log.debug("streaming series %s as one ZIP (%d instances wanted)", series_uid, len(claim.keys))

                def store(sop: str, key: str, member: IO[bytes], size: int) -> Path | None:
                    def check(local: Path) -> None:
                        check_instance(local, sop)

                    return self._cache.store(key, copy_member(member), expected=size, check=check)

                stream = self._streamer.stream_series(series_uid)
                file_series(
                    series_uid,
                    self._until_closed(stream),
                    keys,
                    store,
                    claim,
                    md5_of=self._instance_md5 if self._hasher is not None else None,
                    waiting=self._waiting,
                    verify=self.settings.verify_md5,
                    spill_dir=getattr(self._cache, "directory", None),
                )
        finally:
            claim.release()
            for index, sop in enumerate(sop_uids):
                if not self._cached(sop):
                    self.background.submit(
                        (*priority, index), self._fetch_job(series_uid, sop), key=("instance", sop)
                    )

    def _until_closed(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, abandoned (and closed) when the tree closes."""
        try:
            for chunk in chunks:
                if self._closing.is_set():
                    raise UnavailableError("the mount is closing")
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _fetch_job(self, series_uid: str, sop_uid: str) -> Callable[[], None]:
        return lambda: self._prefetch(series_uid, sop_uid)

    def _walk_ahead(self, parts: tuple[str, ...]) -> None:
        """A reader started walking the series at ``parts``: if it came from the series before it (in listing
        order), list and start fetching the next ``SERIES_AHEAD`` series."""
        previous = next(self._series_from(parts, -1), None)
        with self._walk_lock:
            came_along = previous is not None and previous in self._walked
        if not came_along:
            return
        budget = self._ahead_bytes
        for following in itertools.islice(self._series_from(parts, 1), SERIES_AHEAD):
            entry = self._resolve_parts(following)
            series = entry.series
            if budget is not None and series is not None and series.file_size:
                budget -= series.file_size
                if budget < 0:
                    return
            listing = self._dir(following, entry)
            if not listing.sop_uids:
                continue
            with self._walk_lock:
                self._series_seen[entry.series_uid] = (following, series)
            if self._zip_worthy(series):
                self._start_zip(following, entry.series_uid, listing.sop_uids)
                continue
            priority = self._position(following)
            for index, sop in enumerate(listing.sop_uids[: self.background.workers]):
                if not self._cached(sop):
                    self.background.submit(
                        (*priority, index), self._fetch_job(entry.series_uid, sop), key=("instance", sop)
                    )

    def _listdir_parts(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        return self._dir(parts, self._resolve_parts(parts)).names

    def _series_from(self, parts: tuple[str, ...], step: int) -> Iterator[tuple[str, ...]]:
        """Series paths after (``step`` 1) or before (-1) the series at ``parts``, nearest first, within its
        collection; lists directories lazily, as the caller takes them."""

        def below(prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
            if len(prefix) == _LEVELS:
                yield prefix
                return
            names = self._listdir_parts(prefix)
            for name in names if step > 0 else reversed(names):
                yield from below((*prefix, name))

        if len(parts) != _LEVELS:
            return
        for level in range(_LEVELS - 1, 0, -1):
            parent = parts[:level]
            names = self._listdir_parts(parent)
            index = bisect.bisect_left(names, parts[level])
            if index >= len(names) or names[index] != parts[level]:
                return
            for name in names[index + 1 :] if step > 0 else reversed(names[:index]):
                yield from below((*parent, name))

    # --- listing prefetch ---------------------------------------------------------------------------------

    def _note_listdir(self, parts: tuple[str, ...], listing: _Dir) -> None:
        """A directory was listed: prefetch what a walker will list next."""
        depth = len(parts)
        walk: _DirWalk | None = None
        with self._walk_lock:
            self._listed[parts] = True
            for cut in range(1, depth):
                walk = self._dir_walks.get(parts[:cut])
                if walk is not None:
                    walk.walker_listed()
                    break
            else:
                walk = None
        if walk is None and 1 <= depth - 1 < _LEVELS:
            parent = parts[:-1]
            with self._walk_lock:
                walking = parent in self._listed and self._listed_sibling_before(parent, parts[-1])
                if walking and parent not in self._dir_walks:
                    walk = self._dir_walks[parent] = _DirWalk(self)
                else:
                    walk = None
            if walk is not None:
                log.debug("walk of %s detected: prefetching its listings", "/" + "/".join(parent))
                self._prefetch_children(parent, walk)
        if 2 <= depth < _LEVELS and listing.names:
            # A copy goes down into the first child next: list it now (a study: its first series' SOPs).
            first = (*parts, listing.names[0])
            self._queue_listing(first, None, chain=depth == 2)

    def _listed_sibling_before(self, parent: tuple[str, ...], name: str) -> bool:
        with self._lock:
            listing = self._dirs.get(parent)
        if listing is None:
            return False
        index = bisect.bisect_left(listing.names, name)
        return any((*parent, sibling) in self._listed for sibling in listing.names[max(0, index - 2) : index])

    def _prefetch_children(self, parent: tuple[str, ...], walk: _DirWalk | None) -> None:
        if len(parent) >= _LEVELS:
            return
        try:
            names = self._listdir_parts(parent)
        except NbiaError as exc:
            log.debug("prefetch of %s stopped: %s", "/" + "/".join(parent), exc)
            return
        for name in names:  # those listed already cost nothing but a look in memory
            self._queue_listing((*parent, name), walk)

    def _queue_listing(self, parts: tuple[str, ...], walk: _DirWalk | None, *, chain: bool = False) -> None:
        """List ``parts`` in the background (then, for a walk, queue its children; with ``chain``, its first
        child)."""

        def job() -> None:
            if walk is not None and not walk.may_run(job_key, lambda: self._position(parts), job):
                return
            if not self.connectivity.online:
                return
            if len(parts) == _LEVELS and parts in self._building:
                return  # being listed by another thread: no need to hold a worker waiting for it
            entry = self._resolve_parts(parts)
            if entry.kind == "instance":
                return
            listing = self._dir(parts, entry)
            if walk is not None:
                self._prefetch_children(parts, walk)
            elif chain and listing.names and len(parts) < _LEVELS:
                self._queue_listing((*parts, listing.names[0]), None)

        job_key = ("list", parts, walk is not None)  # a walk's job goes on to the children: never merged
        self.background.submit(self._position(parts), job, key=job_key)

    # --- resolution ---------------------------------------------------------------------------------------

    def _resolve(self, path: str) -> _Entry:
        return self._resolve_parts(_split(path))

    def _resolve_parts(self, parts: Sequence[str]) -> _Entry:
        entry = _ROOT
        for depth, part in enumerate(parts):
            if entry.kind == "instance":
                raise NotFoundError(f"not a directory: /{'/'.join(parts[:depth])}")
            parent = tuple(parts[:depth])
            listing = self._dir(parent, entry)
            child = listing.entries.get(part)
            if child is None:
                child = self._miss(parent, entry, part, listing)
            entry = child
        return entry

    def _miss(self, parent: tuple[str, ...], entry: _Entry, part: str, listing: _Dir) -> _Entry:
        """A name not in a listing: negative cache, else one re-listing if the listing is old enough."""
        key = (*parent, part)
        with self._lock:
            known_missing = self._negative.get(key, False)
        where = "/" + "/".join(key)
        if known_missing:
            raise NotFoundError(f"no such entry: {where}")
        now = self._clock()
        old = now - listing.fetched_at >= self.settings.negative_ttl
        if listing.refreshable and old and self.connectivity.online:
            log.debug(
                "%s not in a listing fetched %.0f s ago; listing again", where, now - listing.fetched_at
            )
            try:
                fresh = self._dir(parent, entry, fresh_after=now)
            except UnavailableError as exc:  # offline now: the listing held is the answer
                log.debug("%s: cannot list again (%s); not found", where, exc)
                raise NotFoundError(f"no such entry: {where}") from None
            child = fresh.entries.get(part)
            if child is not None:
                return child
        with self._lock:
            self._negative[key] = True
        raise NotFoundError(f"no such entry: {where}")

    def _dir(self, parts: tuple[str, ...], entry: _Entry, fresh_after: float = -math.inf) -> _Dir:
        # A directory the server said changed (live freshness) is listed again once.
        fresh_after = max(fresh_after, self.changes.since(_change_key(entry)))
        with self._lock:
            cached = self._dirs.get(parts)
        fresh = cached is not None and cached.fetched_at >= fresh_after
        if cached is not None and fresh and not (cached.stale and self.connectivity.online):
            return cached
        with self._lock:
            self._building[parts] = self._building.get(parts, 0) + 1
        try:
            built = self._build(entry, fresh_after)
        finally:
            with self._lock:
                count = self._building.pop(parts)
                if count > 1:
                    self._building[parts] = count - 1
        with self._lock:
            remember(self._dirs, parts, built)
        return built

    def _build(self, entry: _Entry, fresh_after: float) -> _Dir:
        kind = entry.kind
        if kind == "root":
            return self._build_root(fresh_after)
        if kind == "collection":
            return self._build_collection(entry, fresh_after)
        if kind == "patient":
            return self._build_patient(entry, fresh_after)
        if kind == "study":
            return self._build_study(entry, fresh_after)
        if kind == "series":
            return self._build_series(entry, fresh_after)
        raise NotFoundError(f"not a directory: {entry.name}")

    def _make_dir(
        self,
        wanted: dict[str, tuple[str, _Entry]],
        fetched_at: float,
        widen: Callable[[str, int], str] | None = None,
        refreshable: bool = True,
    ) -> _Dir:
        """``{key: (wanted name, entry)}`` -> a listing with unique names (see :func:`names.unique_names`)."""
        final = names.unique_names({k: name for k, (name, _e) in wanted.items()}, widen)
        entries: dict[str, _Entry] = {}
        for key, (_name, child) in wanted.items():
            name = final[key]
            entries[name] = child if child.name == name else replace(child, name=name)
        ttl = self.settings.listing_ttl if entries else self.settings.negative_ttl
        # A directory built from an expired listing (served while offline) is kept a few seconds.
        now = self._clock()
        expires = max(fetched_at + ttl, now + min(_STALE_DIR_KEEP, ttl))
        return _Dir(
            entries=entries,
            names=tuple(sorted(entries)),
            fetched_at=fetched_at,
            expires=expires,
            refreshable=refreshable,
            stale=fetched_at + ttl <= now,
        )

    def _make_named_dir(
        self,
        records: Iterable[_R],
        uid: Callable[[_R], str],
        describe: Callable[[_R, int], str],
        child: Callable[[_R, str], _Entry],
        fetched_at: float,
        refreshable: bool = True,
    ) -> _Dir:
        """A study or series directory: one entry per UID, named by the layout.

        ``describe(record, tail)`` is the descriptive name keeping ``tail`` digits of the UID (widened when
        names clash); ``child(record, name)`` the entry.
        """
        descriptive = self.settings.layout == "descriptive"
        by_uid: dict[str, _R] = {}
        wanted: dict[str, tuple[str, _Entry]] = {}
        for record in records:
            key = uid(record)
            if not key or key in wanted:
                continue
            by_uid[key] = record
            name = describe(record, names.UID_TAIL) if descriptive else names.uid_name(key)
            wanted[key] = (name, child(record, name))

        def widen(key: str, digits: int) -> str:
            return describe(by_uid[key], digits)

        return self._make_dir(wanted, fetched_at, widen if descriptive else None, refreshable)

    # --- the five kinds of directory ----------------------------------------------------------------------

    def _wants_collection(self, collection: str) -> bool:
        return self._wanted is None or collection.casefold() in self._wanted

    def _filtered(self, fresh_after: float) -> Listing[Series] | None:
        """The series of the series filter, or None without one."""
        uids = self.settings.series_filter
        return None if uids is None else self._listings.filtered_series(uids, fresh_after)

    def _build_root(self, fresh_after: float) -> _Dir:
        filtered = self._filtered(fresh_after)
        if filtered is not None:
            fetched_at = filtered.fetched_at
            collections = {s.collection for s in filtered.rows if s.collection}
        else:
            answer = self._listings.collections(fresh_after)
            fetched_at = answer.fetched_at
            collections = {c for c in answer.rows if c}
        wanted: dict[str, tuple[str, _Entry]] = {}
        for collection in collections:
            if self._wants_collection(collection):
                child = _Entry(kind="collection", name=names.safe_name(collection), collection=collection)
                wanted[collection] = (child.name, child)
        root = self._make_dir(wanted, fetched_at, refreshable=filtered is None)
        # Directories below collections the root no longer lists are unreachable: forget them.
        with self._lock:
            for key in [k for k in self._dirs if k and k[0] not in root.entries]:
                self._dirs.pop(key, None)
        return root

    def _build_collection(self, entry: _Entry, fresh_after: float) -> _Dir:
        collection = entry.collection
        patients: list[Patient]
        filtered = self._filtered(fresh_after)
        if filtered is not None:
            fetched_at = filtered.fetched_at
            ids = sorted({s.patient_id for s in filtered.rows if s.collection == collection and s.patient_id})
            patients = [
                Patient(patient_id=p, collection=collection, raw={"PatientID": p, "Collection": collection})
                for p in ids
            ]
        else:
            # A collection getCollectionValues lists has patients: an empty answer is doubtful.
            answer = self._listings.patients(collection, fresh_after, expect_rows=True)
            fetched_at = answer.fetched_at
            patients = [p for p in answer.rows if _same(p.collection, collection)]
        wanted: dict[str, tuple[str, _Entry]] = {}
        for patient in patients:
            if patient.patient_id in wanted:
                continue
            child = _Entry(
                kind="patient",
                name=names.safe_name(patient.patient_id),
                collection=collection,
                patient_id=patient.patient_id,
                record=patient,
            )
            wanted[patient.patient_id] = (child.name, child)
        return self._make_dir(wanted, fetched_at, refreshable=filtered is None)

    def _build_patient(self, entry: _Entry, fresh_after: float) -> _Dir:
        collection, patient_id = entry.collection, entry.patient_id
        answer = self._listings.studies(collection, patient_id, fresh_after, expect_rows=True)
        fetched_at = answer.fetched_at
        studies = [
            s for s in answer.rows if _same(s.patient_id, patient_id) and _same(s.collection, collection)
        ]
        filtered = self._filtered(fresh_after)
        if filtered is not None:
            fetched_at = min(fetched_at, filtered.fetched_at)
            keep = {
                s.study_instance_uid
                for s in filtered.rows
                if s.collection == collection and s.patient_id == patient_id
            }
            studies = [s for s in studies if s.study_instance_uid in keep]

        def child(study: Study, name: str) -> _Entry:
            return _Entry(
                kind="study",
                name=name,
                collection=collection,
                patient_id=patient_id,
                study_uid=study.study_instance_uid,
                record=study,
                mtime=_timestamp(study.study_date) or _EPOCH,
            )

        return self._make_named_dir(studies, lambda s: s.study_instance_uid, _study_name, child, fetched_at)

    def _build_study(self, entry: _Entry, fresh_after: float) -> _Dir:
        collection, patient_id, study_uid = entry.collection, entry.patient_id, entry.study_uid
        study = entry.record if isinstance(entry.record, Study) else None
        expect = study is not None and (study.series_count or 0) > 0
        answer = self._filtered(fresh_after) or self._listings.series(
            collection, patient_id, fresh_after, expect_rows=expect
        )
        series_list = [
            s
            for s in answer.rows
            if s.study_instance_uid == study_uid
            and _same(s.patient_id, patient_id)
            and _same(s.collection, collection)
        ]

        def child(series: Series, name: str) -> _Entry:
            return _Entry(
                kind="series",
                name=name,
                collection=collection,
                patient_id=patient_id,
                study_uid=study_uid,
                series_uid=series.series_instance_uid,
                record=series,
                series=series,
                mtime=_series_mtime(series, entry.mtime),
            )

        return self._make_named_dir(
            series_list,
            lambda s: s.series_instance_uid,
            _series_name,
            child,
            answer.fetched_at,
            refreshable=self.settings.series_filter is None,
        )

    def _build_series(self, entry: _Entry, fresh_after: float) -> _Dir:
        series_uid = entry.series_uid
        expect = entry.series is not None and (entry.series.image_count or 0) > 0
        answer = self._listings.sop_instance_uids(series_uid, fresh_after, expect_rows=expect)
        wanted: dict[str, tuple[str, _Entry]] = {}
        for sop in answer.rows:
            if not sop or sop in wanted:
                continue
            child = _Entry(
                kind="instance",
                name=names.instance_name(sop),
                collection=entry.collection,
                patient_id=entry.patient_id,
                study_uid=entry.study_uid,
                series_uid=series_uid,
                sop_uid=sop,
                series=entry.series,
                mtime=entry.mtime,
            )
            wanted[sop] = (child.name, child)
        listing = self._make_dir(wanted, answer.fetched_at)
        return replace(
            listing,
            sop_uids=tuple(listing.entries[name].sop_uid for name in listing.names),
            positions={name: i for i, name in enumerate(listing.names)},
        )

    # --- fast paths -------------------------------------------------------------------------------------
    # The FUSE adapter's warm path (getattr, getxattr, open of a cached instance): one look in a path ->
    # resolution LRU instead of a walk through every listing on the path. Read-only: a miss resolves exactly
    # as lookup() does (and may list). A resolution is used while every listing on its path is unexpired and
    # its parent's listing is still the one it came from (a re-listing or an eviction of the parent forgets
    # it); a re-listing higher up (a name missing from a grandparent) is seen when the path's listings
    # expire, as the kernel's own entry cache would see it.

    class _Resolved:
        """A resolved path: its entry, the listing it came from, until when it holds, and what was derived."""

        __slots__ = ("entry", "parent", "listing", "expires", "size", "fields", "local", "touched")

        def __init__(self, entry: _Entry, parent: tuple[str, ...], listing: _Dir, expires: float) -> None:
            self.entry = entry
            self.parent = parent
            self.listing = listing
            self.expires = expires
            self.size: int | None = None  # an instance's exact size, once seen in the cache (never changes)
            self.fields: dict[str, bytes] | None = None  # its user.nbia.* attributes
            self.local: Path | None = None  # an instance's cached file, as the disk cache last gave it
            self.touched = -math.inf  # when the disk cache last counted a use of it (clock seconds)

    def _resolved(self, path: str) -> ArchiveTree._Resolved | None:
        """The resolution of ``path`` (None for the root); NotFoundError and the client's errors as lookup."""
        now = self._clock()
        with self._fast_lock:
            hit = self._fast.get(path)
        if hit is not None and now < hit.expires:
            with self._lock:
                current = self._dirs.get(hit.parent)
            if current is hit.listing:
                return hit
        parts = _split(path)
        if not parts:
            return None
        entry = _ROOT
        expires = math.inf
        listing: _Dir | None = None
        for depth, part in enumerate(parts):
            if entry.kind == "instance":
                raise NotFoundError(f"not a directory: /{'/'.join(parts[:depth])}")
            parent = tuple(parts[:depth])
            listing = self._dir(parent, entry)
            expires = -math.inf if listing.stale else min(expires, listing.expires)
            child = listing.entries.get(part)
            if child is None:  # found only by a re-listing: resolve afresh next time
                child = self._miss(parent, entry, part, listing)
                expires = -math.inf
            entry = child
        assert listing is not None
        resolved = ArchiveTree._Resolved(entry, tuple(parts[:-1]), listing, expires)
        if expires > now:
            with self._fast_lock:
                self._fast[path] = resolved
        return resolved

    def fast_lookup(self, path: str) -> Node:
        """:meth:`lookup` through the resolution cache. An instance once seen in the disk cache keeps its
        exact size (its bytes never change), even if the cache evicts it later."""
        resolved = self._resolved(path)
        if resolved is None:
            return Node(_ROOT.kind, _ROOT.name, True, 0, True, _ROOT.mtime)
        entry = resolved.entry
        if entry.kind != "instance":
            return Node(entry.kind, entry.name, True, 0, True, entry.mtime)
        size = resolved.size
        if size is None:
            size = self._cache.peek(self.instance_key(entry.sop_uid))
            if size is None:
                return Node(entry.kind, entry.name, False, _estimate(entry.series), False, entry.mtime)
            resolved.size = size
        return Node(entry.kind, entry.name, False, size, True, entry.mtime)

    def fast_xattr(self, path: str, name: str) -> bytes | None:
        """The value of the extended attribute ``name`` of ``path`` (None: it has none). The API's fields
        (``user.nbia.<Field>``, fixed for an entry) are built once per resolution; other names ask
        :meth:`xattrs`."""
        if not name.startswith(XATTR_PREFIX):
            return self.xattrs(path).get(name)
        resolved = self._resolved(path)
        if resolved is None:
            return self.xattrs(path).get(name)
        fields = resolved.fields
        if fields is None:
            fields = {k: v for k, v in self.xattrs(path).items() if k.startswith(XATTR_PREFIX)}
            resolved.fields = fields
        return fields.get(name)

    def open_cached(self, path: str, *, recheck: bool = False) -> Path | None:
        """The cached file of the instance at ``path`` (read-ahead is told of the open, as by
        :meth:`open_instance`), or None when it is not in the disk cache: then call :meth:`open_instance`
        (nothing was noted). NotFoundError if ``path`` is not an instance.

        The file's path is remembered, and the disk cache asked (a use counted for its LRU) at most every
        ``_FAST_TOUCH`` seconds per path: the caller opens the file at once, and if it is gone (evicted)
        asks again with ``recheck``."""
        resolved = self._resolved(path)
        if resolved is None or resolved.entry.kind != "instance":
            raise NotFoundError(f"not an instance: {path}")
        entry = resolved.entry
        local = resolved.local
        now = self._clock()
        if recheck or local is None or now - resolved.touched >= _FAST_TOUCH:
            local = self._cache.get(self.instance_key(entry.sop_uid))
            resolved.local, resolved.touched = local, now
            if local is None:
                return None
        self._note_open(resolved.parent, entry, resolved.listing)
        return local


def _same(value: str | None, expected: str) -> bool:
    """A row's field matches (the server filters Collection/PatientID case-insensitively; we do not)."""
    return value is None or value == expected


def _max_connections(client: object) -> int:
    """The client's connection limit (``ClientSettings.max_connections``), or the default."""
    settings = getattr(client, "settings", None)
    if isinstance(settings, ClientSettings):
        return settings.max_connections
    return ClientSettings().max_connections


class _DirWalk:
    """A walker's listing prefetch under one directory: it runs at most ``LISTINGS_AHEAD`` listings ahead of
    the walker; the rest wait until the walker lists more."""

    def __init__(self, tree: ArchiveTree) -> None:
        self._tree = tree
        self._lock = threading.Lock()
        self._ahead = 0
        self._parked: list[tuple[tuple[Any, ...], Priority, Callable[[], None]]] = []

    def may_run(
        self, key: tuple[Any, ...], priority: Callable[[], Priority], job: Callable[[], None]
    ) -> bool:
        """Whether a listing job may run now; if not, it is parked (at ``priority()``) until the walker catches
        up."""
        with self._lock:
            if self._ahead < LISTINGS_AHEAD:
                self._ahead += 1
                return True
        parked = (key, priority(), job)
        with self._lock:
            self._parked.append(parked)
        return False

    def walker_listed(self) -> None:
        """The walker listed a directory below: one more listing may run ahead."""
        with self._lock:
            self._ahead = max(0, self._ahead - 1)
            resumed = self._parked.pop(0) if self._parked else None
        if resumed is not None:
            key, priority, job = resumed
            self._tree.background.submit(priority, job, key=key)


def _change_key(entry: _Entry) -> tuple[str, ...]:
    """The :class:`Changes` key whose marks make ``entry``'s listing stale (a series' instances never change)."""
    if entry.kind == "root":
        return ()
    if entry.kind == "collection":
        return (entry.collection,)
    if entry.kind in ("patient", "study"):
        return (entry.collection, entry.patient_id)
    return ("", "", "")  # never marked
