"""What the filesystem layer needs from the layers below it, as :class:`typing.Protocol` types.

:class:`ArchiveClient` is the part of :class:`nbiafs.api.client.NbiaClient` the tree uses; :class:`InstanceStore`
the part of :class:`nbiafs.fs.instance_cache.InstanceCache` the tree and read-ahead use. Both classes satisfy
them structurally (no inheritance), and so do the fakes of the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from nbiafs.api.records import Patient, Series, Study

Writer = Callable[[BinaryIO], int]
"""``download(out) -> bytes written``: writes one instance to ``out``."""


class ArchiveClient(Protocol):
    """The metadata and image requests of one server and account.

    Every method raises :class:`~nbiafs.errors.NbiaError` subclasses by meaning (NotFoundError,
    AccessDeniedError, UnavailableError, ServerError, ...). Row filters are case-insensitive on the server.
    """

    @property
    def scope(self) -> str:
        """What separates this client's view of the archive from others' (server URL and account)."""
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

    def sop_instance_uids(self, series_instance_uid: str) -> Sequence[str]:
        """The SOPInstanceUIDs of one series ([] when unknown or invisible)."""
        ...

    def download_instance(self, series_instance_uid: str, sop_instance_uid: str, out: BinaryIO) -> int:
        """getSingleImage into ``out``; returns bytes written. AccessDeniedError for a restricted one."""
        ...


class InstanceStore(Protocol):
    """A disk cache of instance files keyed by SOPInstanceUID, with single flight per key."""

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

    def fetch(self, key: str, download: Writer) -> Path:
        """The cached file of ``key``, calling ``download`` (once across threads) if it is not cached.

        Raises what ``download`` raises, RequestTimeoutError after waiting too long for another download,
        CacheError (NoSpaceError when the disk is full) when the file cannot be written.
        """
        ...
