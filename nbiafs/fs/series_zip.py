"""A series fetched as one getImage ZIP, each instance filed in the disk cache as soon as its member lands.

getImage streams a ZIP (no Content-Length, DEFLATE members with data descriptors) whose members are in
database order and named ``00000001.dcm``...; so a member's name and position say nothing about which
instance it holds: :func:`file_series` reads each member's SOPInstanceUID from its DICOM header. The ZIP is
unpacked as it arrives with ``stream-unzip`` (which checks each member's CRC and sizes); every member goes
through the same trust check as a getSingleImage download (the caller's ``store``: complete DICOM, the
SOPInstanceUID asked for) and a member whose SOPInstanceUID is not one of the series' listed instances is
dropped. What the ZIP does not bring (a cut stream, a missing or refused member) is the caller's to fetch
one by one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

from stream_unzip import UnzipError, stream_unzip

from nbiafs.errors import BadResponseError, CacheError, NbiaError
from nbiafs.fs.dicomcheck import complete_sop_instance_uid, read_sop_instance_uid
from nbiafs.fs.instance_cache import Claim

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY = 4 << 20
"""Bytes of one member held in memory before it spills to an anonymous temporary file."""

Store = Callable[[str, str, IO[bytes], int], "Path | None"]
"""``store(sop_uid, key, member, size)``: file one member (checked); its path, or None if another download
of it is under way. Raises BadResponseError when the check refuses it, CacheError when it cannot be cached."""


def dicom_members(
    chunks: Iterable[bytes], spill_dir: Path | None = None
) -> Iterator[tuple[str, IO[bytes], int]]:
    """``(name, file, size)`` for each ``.dcm`` member of a ZIP stream, as soon as the member is whole
    (``file`` is valid until the next member; it is rewound). Other members (LICENSE, md5hashes.csv) are
    skipped. Raises UnzipError (stream_unzip's) for a damaged or cut ZIP, and what ``chunks`` raises."""
    for raw_name, _size, member in stream_unzip(chunks):
        name = raw_name.decode("utf-8", "replace")
        if not name.lower().endswith(".dcm"):
            for _ in member:
                pass
            continue
        with tempfile.SpooledTemporaryFile(
            max_size=SPOOL_IN_MEMORY, dir=str(spill_dir) if spill_dir else None
        ) as spool:
            size = 0
            for piece in member:
                spool.write(piece)
                size += len(piece)
            spool.seek(0)
            yield name, spool, size


def file_series(
    series_uid: str,
    chunks: Iterable[bytes],
    keys: Mapping[str, str],
    store: Store,
    claim: Claim,
    *,
    spill_dir: Path | None = None,
) -> set[str]:
    """Unpack the ZIP ``chunks`` of ``series_uid``, filing each member whose SOPInstanceUID is a key of
    ``keys`` (SOPInstanceUID -> cache key) with ``store`` and handing it to ``claim``'s waiters at once.

    Returns the SOPInstanceUIDs filed (or found cached). Never raises for what the ZIP brings (a damaged
    ZIP, a cut stream, a refused member, a request error): it logs and returns what it filed; the claim's
    keys left undelivered are the caller's. CacheError (the disk) is raised.
    """
    filed: set[str] = set()
    members = 0
    source = iter(chunks)
    try:
        for name, member, size in dicom_members(source, spill_dir):
            members += 1
            sop = _sop_of(member, size)
            key = keys.get(sop) if sop is not None else None
            if sop is None or key is None:
                log.warning(
                    "series %s: ZIP member %s holds %s, not a listed instance; dropped",
                    series_uid,
                    name,
                    sop or "no readable SOPInstanceUID",
                )
                continue
            if sop in filed:
                continue
            try:
                path = store(sop, key, member, size)
            except BadResponseError as exc:
                log.warning("series %s: ZIP member %s (%s) refused: %s", series_uid, name, sop, exc)
                claim.release([key])
                continue
            if path is None:  # another download of it is under way: its waiters join that one
                claim.release([key])
                continue
            filed.add(sop)
            claim.deliver(key, path)
    except (UnzipError, NbiaError) as exc:
        if isinstance(exc, CacheError):
            raise
        log.info(
            "series %s: the ZIP stopped after %d members (%s: %s); the rest one by one",
            series_uid,
            members,
            type(exc).__name__,
            exc,
        )
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return filed


def _sop_of(member: IO[bytes], size: int) -> str | None:
    """The SOPInstanceUID in a member's header: the element walk for a member held in memory, pydicom
    (stopping before the pixels) for a larger one; None when unreadable."""
    if size > SPOOL_IN_MEMORY:
        return read_sop_instance_uid(member)
    member.seek(0)
    data = member.read()
    member.seek(0)
    try:
        return complete_sop_instance_uid(data)
    except BadResponseError as exc:
        log.debug("ZIP member unreadable: %s", exc)
        return None


def copy_member(member: IO[bytes]) -> Callable[[IO[bytes]], int]:
    """A writer for :meth:`~nbiafs.fs.instance_cache.InstanceCache.store` copying ``member``."""

    def write(out: IO[bytes]) -> int:
        member.seek(0)
        start = out.tell()
        shutil.copyfileobj(member, out, 1 << 20)
        return out.tell() - start

    return write
