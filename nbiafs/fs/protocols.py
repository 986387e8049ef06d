"""What the filesystem layer needs from the layers below it, as :class:`typing.Protocol` types.

:class:`ArchiveClient` is the part of :class:`nbiafs.api.client.NbiaClient` the tree uses; :class:`InstanceStore`
the part of :class:`nbiafs.fs.instance_cache.InstanceCache` the tree and read-ahead use. Both classes satisfy
them structurally (no inheritance), and so do the fakes of the tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from nbiafs.api.records import Patient, Series, Study

if TYPE_CHECKING:
    from nbiafs.fs.instance_cache import Claim

Writer = Callable[[BinaryIO], int]
"""``download(out) -> bytes written``: writes one instance to ``out``."""

Check = Callable[[Path], None]
"""``check(path)``: raises (BadResponseError) if a finished download must not be cached."""


class ArchiveClient(Protocol):
    """The metadata and image requests of one server and account.

    Every method raises :class:`~nbiafs.errors.NbiaError` subclasses by meaning (NotFoundError,
    AccessDeniedError, UnavailableError, ServerError, ...). Row filters are case-insensitive on the server.
    """

    @property
    def scope(self) -> str:
        """What separates this client's view of the archive from others' (server URL and account)."""
        ...

    def renew_token(self) -> bool:
        """Get a new token now (an empty answer looked like a dead token's). False when there is no token
        (anonymous or API key), True once a new one is in use."""
        ...

    def collections(self) -> Sequence[str]:
        """Every collection name the account may see (getCollectionValues)."""
        ...

    def patients(self, collection: str | None = None) -> Sequence[Patient]:
        """getPatient rows of ``collection``."""
        ...

    def studies(self, collection: str, patient_id: str | None = None) -> Sequence[Study]:
        """getPatientStudy rows of one collection (and patient)."""
        ...

    def series(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
    ) -> Sequence[Series]:
        """getSeries rows matching every filter given."""
        ...

    def updated_series(self, since: dt.date) -> Sequence[Series]:
        """Series released after the day ``since`` (getUpdatedSeries), for live freshness."""
        ...

    def sop_instance_uids(self, series_instance_uid: str) -> Sequence[str]:
        """The SOPInstanceUIDs of one series ([] when unknown or invisible)."""
        ...

    def download_instance(self, series_instance_uid: str, sop_instance_uid: str, out: BinaryIO) -> int:
        """getSingleImage into ``out``; returns bytes written. AccessDeniedError for a restricted one."""
        ...


@runtime_checkable
class SeriesStreamer(Protocol):
    """A client that can stream a whole series as getImage's ZIP (the tree uses it when the client has it)."""

    def stream_series(self, series_instance_uid: str) -> Iterator[bytes]:
        """The ZIP body in pieces as they arrive; raises NbiaError subclasses (midway too)."""
        ...


@runtime_checkable
class Md5Source(Protocol):
    """A client that can ask the server for one instance's MD5 (getMD5HashForImage / getM5HashForImage)."""

    def instance_md5(self, sop_instance_uid: str) -> str | None:
        """32 lowercase hex digits, or None when the server knows none; raises NbiaError subclasses."""
        ...


class InstanceStore(Protocol):
    """A disk cache of instance files by key (the tree's keys: server hash and SOPInstanceUID), with single
    flight per key."""

    @property
    def max_bytes(self) -> int | None:
        """The bound in bytes this process keeps the cache within (None: unbounded)."""
        ...

    def peek(self, key: str) -> int | None:
        """Size in bytes of ``key``'s file if cached, else None; counts nothing."""
        ...

    def get(self, key: str) -> Path | None:
        """The cached file of ``key`` (a hit counted), or None."""
        ...

    def fetch(self, key: str, download: Writer, *, expected: int = 0, check: Check | None = None) -> Path:
        """The cached file of ``key``, calling ``download`` (once across threads) if it is not cached.

        ``expected``: the probable size (room is made for it); ``check(path)`` must accept the download or it
        is not cached. A file larger than ``max_bytes`` is returned but not kept: open it at once.
        Raises what ``download`` and ``check`` raise, RequestTimeoutError after waiting too long for another download,
        CacheError (NoSpaceError when the disk is full) when the file cannot be written.
        """
        ...

    def store(self, key: str, write: Writer, *, expected: int = 0, check: Check | None = None) -> Path | None:
        """File ``key`` from ``write`` (checked) unless cached (its path) or being downloaded (None)."""
        ...

    def claim(self, keys: Iterable[str]) -> Claim:
        """Promise to bring ``keys``: fetches of them wait for the claim's delivery or release."""
        ...
