"""A series fetched as one series ZIP, each instance filed in the disk cache once its MD5 is verified.

The ZIP (getImage with ``IncludeMD5=Yes`` on v4, getImageWithMD5Hash on v1/v2, plain getImage on v3) streams
with no Content-Length, DEFLATE members with data descriptors, in database order, named ``00000001.dcm``...;
so a member's name and position say nothing about which instance it holds: :func:`file_series` reads each
member's SOPInstanceUID from its DICOM header. The ZIP is unpacked as it arrives with ``stream-unzip`` (which
checks each member's CRC and sizes), and each member's MD5 is computed as its bytes arrive.

Verification. A CRC only says that the ZIP was not damaged after it was made: a server that altered an
instance's bytes zips the altered bytes with matching CRCs. So no member is served before its MD5 matches the
server's. Each member is staged (:class:`Staging`: in memory up to ``STAGE_IN_MEMORY`` bytes in all, beyond
that in an anonymous temporary file), not filed under its final name and not handed to the claim's waiters,
until ``md5hashes.csv`` (``Filename,MD5Hash``, the ZIP's last member, rows in no useful order) arrives; then
every member whose MD5 matches its row is filed at once. A member a reader is waiting for (``waiting``) is
not kept waiting for the whole ZIP: one getMD5HashForImage (``md5_of``) is asked for it and it is filed and
released at once when it matches (an empty answer: it waits for the CSV). A member whose MD5 differs is
dropped (never cached), logged as an error naming its SOPInstanceUID, and its claim released, so that the
instance comes by getSingleImage. A member without a row is dropped too. What a cut ZIP staged without its
CSV is dropped (it comes by getSingleImage). A whole ZIP that brought no ``md5hashes.csv`` (v3, or a server
that ignores the request) has its members checked as a getSingleImage download is: with ``verify`` by
``md5_of`` (no MD5 known: accepted), else accepted.

Every member filed also goes through the same trust check as a getSingleImage download (the caller's
``store``: complete DICOM, the SOPInstanceUID asked for), and a member whose SOPInstanceUID is not one of the
series' listed instances is dropped. What the ZIP does not bring (a cut stream, a missing, altered or refused
member) is the caller's to fetch one by one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import mmap
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stream_unzip import UnzipError, stream_unzip

from nbiafs.errors import BadResponseError, CacheError, NbiaError
from nbiafs.fs.dicomcheck import header_sop_instance_uid
from nbiafs.fs.instance_cache import Claim

log = logging.getLogger(__name__)

MD5_MEMBER = "md5hashes.csv"
"""The member that carries the other members' MD5s (last in the ZIP)."""
STAGE_IN_MEMORY = 32 << 20
"""Bytes of staged members (all together) held in memory; further members go to anonymous temporary files."""
UNZIP_CHUNK = 1 << 20
"""Bytes per piece of an unpacked member (fewer, larger pieces: less work per member)."""

Store = Callable[[str, str, IO[bytes], int], "Path | None"]
"""``store(sop_uid, key, member, size)``: file one member (checked); its path, or None if another download
of it is under way. Raises BadResponseError when the check refuses it, CacheError when it cannot be cached."""

Md5Of = Callable[[str], "str | None"]
"""``md5_of(sop_uid)``: the server's MD5 of one instance (one request), None when it knows none."""


@dataclass
class Staged:
    """One member held until its MD5 is verified: ``file`` (rewound), its ``size`` and ``md5`` (hex)."""

    name: str
    file: IO[bytes]
    size: int
    md5: str
    in_memory: int
    sop: str = ""
    key: str = ""


class Staging:
    """Where members wait for their verification: in memory while all of them together stay within
    ``memory`` bytes, else in anonymous temporary files in ``spill_dir`` (None: the system's)."""

    def __init__(self, spill_dir: Path | None = None, memory: int = STAGE_IN_MEMORY) -> None:
        self._dir = str(spill_dir) if spill_dir else None
        self._memory = memory
        self.in_memory = 0

    def stage(self, name: str, pieces: Iterable[bytes]) -> Staged:
        """Take in one member, computing its MD5 as the pieces arrive. CacheError if it cannot be written."""
        digest = hashlib.md5(usedforsecurity=False)
        held: list[bytes] = []
        spill: IO[bytes] | None = None
        size = 0
        try:
            for piece in pieces:
                digest.update(piece)
                size += len(piece)
                if spill is None and self.in_memory + size <= self._memory:
                    held.append(piece)
                    continue
                if spill is None:
                    spill = tempfile.TemporaryFile(dir=self._dir)  # noqa: SIM115 (Staged owns it)
                    spill.writelines(held)
                    held = []
                spill.write(piece)
            if spill is not None:
                spill.seek(0)
                return Staged(name, spill, size, digest.hexdigest(), 0)
        except OSError as exc:
            if spill is not None:
                spill.close()
            raise CacheError(f"cannot stage ZIP member {name}: {exc}") from exc
        except BaseException:
            if spill is not None:
                spill.close()
            raise
        self.in_memory += size
        # A BytesIO made from bytes shares them: the member is held once, not copied again.
        return Staged(
            name, io.BytesIO(held[0] if len(held) == 1 else b"".join(held)), size, digest.hexdigest(), size
        )

    def discard(self, staged: Staged) -> None:
        """Free a member's bytes (filed or dropped)."""
        staged.file.close()
        self.in_memory -= staged.in_memory
        staged.in_memory = 0


def parse_md5_csv(data: bytes) -> dict[str, str]:
    """``md5hashes.csv`` (``Filename,MD5Hash``, a header, unquoted; quotes tolerated) as member name -> MD5
    (lowercase hex). Rows that are not a name and 32 hex digits are skipped."""
    hashes: dict[str, str] = {}
    for row in csv.reader(io.StringIO(data.decode("utf-8", "replace"))):
        if len(row) < 2:
            continue
        name, digest = row[0].strip(), row[1].strip().lower()
        if len(digest) == 32 and all(c in "0123456789abcdef" for c in digest):
            hashes[name] = digest
    return hashes


def file_series(
    series_uid: str,
    chunks: Iterable[bytes],
    keys: Mapping[str, str],
    store: Store,
    claim: Claim,
    *,
    md5_of: Md5Of | None = None,
    waiting: Callable[[], Set[str]] | None = None,
    verify: bool = False,
    spill_dir: Path | None = None,
) -> set[str]:
    """Unpack the ZIP ``chunks`` of ``series_uid``, filing each verified member whose SOPInstanceUID is a key
    of ``keys`` (SOPInstanceUID -> cache key; members verified together are filed in its order) with ``store``
    and handing it to ``claim``'s waiters at once.

    ``md5_of``: one instance's MD5 from the server, asked for a staged member a reader is waiting for
    (``waiting()``: the SOPInstanceUIDs readers wait for now) and, with ``verify``, for the members of a ZIP
    that brought no ``md5hashes.csv`` (see the module's docstring).

    Returns the SOPInstanceUIDs filed (or found cached). Never raises for what the ZIP brings (a damaged
    ZIP, a cut stream, an altered or refused member, a request error): it logs and returns what it filed; the
    claim's keys left undelivered are the caller's. CacheError (the disk) is raised.
    """
    return _Filing(series_uid, keys, store, claim, md5_of, waiting, verify, Staging(spill_dir)).run(chunks)


class _Filing:
    """One ZIP's members from staging to the cache (see :func:`file_series`)."""

    def __init__(
        self,
        series_uid: str,
        keys: Mapping[str, str],
        store: Store,
        claim: Claim,
        md5_of: Md5Of | None,
        waiting: Callable[[], Set[str]] | None,
        verify: bool,
        staging: Staging,
    ) -> None:
        self.series_uid = series_uid
        self.keys = keys
        self.store = store
        self.claim = claim
        self.md5_of = md5_of
        self.waiting = waiting
        self.verify = verify
        self.staging = staging
        self.staged: dict[str, Staged] = {}  # SOPInstanceUID -> member, in ZIP order
        self.asked: set[str] = set()  # members whose MD5 was asked of md5_of already
        self.filed: set[str] = set()

    def run(self, chunks: Iterable[bytes]) -> set[str]:
        source = iter(chunks)
        members = 0
        hashes: dict[str, str] | None = None
        complete = False
        try:
            try:
                for raw_name, _size, pieces in stream_unzip(self._watching(source), chunk_size=UNZIP_CHUNK):
                    name = raw_name.decode("utf-8", "replace")
                    if name.rsplit("/", 1)[-1].lower() == MD5_MEMBER:
                        hashes = parse_md5_csv(b"".join(pieces))
                        continue
                    if not name.lower().endswith(".dcm"):
                        for _ in pieces:
                            pass
                        continue
                    members += 1
                    self._take(self.staging.stage(name, pieces))
                    self._release_waited()
                complete = True
            except (UnzipError, NbiaError) as exc:
                if isinstance(exc, CacheError):
                    raise
                log.info(
                    "series %s: the ZIP stopped after %d members (%s: %s); %d landed unverified (no "
                    "md5hashes.csv yet) and come one by one with the rest",
                    self.series_uid,
                    members,
                    type(exc).__name__,
                    exc,
                    len(self.staged),
                )
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
            if complete:
                self._commit(hashes)
        finally:
            for staged in self.staged.values():  # what was not verified: dropped, the caller's to fetch
                self.staging.discard(staged)
                self.claim.release([staged.key])
            self.staged.clear()
        return self.filed

    def _watching(self, source: Iterator[bytes]) -> Iterator[bytes]:
        """``source``, releasing waited-for members between its pieces."""
        for chunk in source:
            yield chunk
            self._release_waited()

    def _take(self, staged: Staged) -> None:
        """Stage a member under its SOPInstanceUID, or drop it (not a listed instance, or a duplicate)."""
        sop = _sop_of(staged.file, staged.size)
        key = self.keys.get(sop) if sop is not None else None
        if sop is None or key is None:
            log.warning(
                "series %s: ZIP member %s holds %s, not a listed instance; dropped",
                self.series_uid,
                staged.name,
                sop or "no readable SOPInstanceUID",
            )
            self.staging.discard(staged)
            return
        if sop in self.filed or sop in self.staged:
            self.staging.discard(staged)
            return
        staged.sop, staged.key = sop, key
        self.staged[sop] = staged

    def _release_waited(self) -> None:
        """File at once each staged member a reader waits for whose MD5 the server confirms (one request)."""
        if self.md5_of is None or self.waiting is None or not self.staged:
            return
        wanted = [sop for sop in self.waiting() if sop in self.staged and sop not in self.asked]
        for sop in wanted:
            self.asked.add(sop)
            expected = self._ask(sop)
            if expected is None:
                continue  # it waits for md5hashes.csv
            staged = self.staged.pop(sop)
            if expected == staged.md5:
                self._file(staged)
            else:
                self._refuse(staged, expected, "getMD5HashForImage")

    def _ask(self, sop: str) -> str | None:
        assert self.md5_of is not None
        try:
            return self.md5_of(sop)
        except NbiaError as exc:
            if isinstance(exc, CacheError):
                raise
            log.info("series %s: no MD5 for %s from the server (%s)", self.series_uid, sop, exc)
            return None

    def _commit(self, hashes: dict[str, str] | None) -> None:
        """The whole ZIP has landed: file every staged member its MD5 vouches for, drop the others."""
        if hashes is None and self.staged:
            log.warning(
                "series %s: its ZIP brought no md5hashes.csv; its members are checked as getSingleImage "
                "downloads are%s",
                self.series_uid,
                " (one MD5 request each)" if self.verify and self.md5_of is not None else "",
            )
        # In the order of ``keys`` (the listing's, which a reader walking the series follows), not the ZIP's.
        for sop in [sop for sop in self.keys if sop in self.staged]:
            staged = self.staged.pop(sop)
            if hashes is not None:
                expected = hashes.get(staged.name, hashes.get(staged.name.rsplit("/", 1)[-1]))
                if expected is None:
                    log.warning(
                        "series %s: md5hashes.csv has no row for ZIP member %s (%s); dropped",
                        self.series_uid,
                        staged.name,
                        sop,
                    )
                    self._drop(staged)
                    continue
                source = MD5_MEMBER
            elif self.verify and self.md5_of is not None:
                expected, source = self._ask(sop), "getMD5HashForImage"
            else:
                expected, source = None, ""
            if expected is None or expected == staged.md5:
                self._file(staged)
            else:
                self._refuse(staged, expected, source)

    def _file(self, staged: Staged) -> None:
        """Store a verified member and hand it to its waiters."""
        try:
            path = self.store(staged.sop, staged.key, staged.file, staged.size)
        except BadResponseError as exc:
            log.warning(
                "series %s: ZIP member %s (%s) refused: %s", self.series_uid, staged.name, staged.sop, exc
            )
            path = None
        finally:
            self.staging.discard(staged)
        if path is None:  # refused, or another download of it is under way: its waiters join that one
            self.claim.release([staged.key])
            return
        self.filed.add(staged.sop)
        self.claim.deliver(staged.key, path)

    def _refuse(self, staged: Staged, expected: str, source: str) -> None:
        log.error(
            "series %s: ZIP member %s is not the bytes of instance %s: MD5 %s, %s says %s; dropped, never "
            "cached (it comes by getSingleImage)",
            self.series_uid,
            staged.name,
            staged.sop,
            staged.md5,
            source,
            expected,
        )
        self._drop(staged)

    def _drop(self, staged: Staged) -> None:
        self.staging.discard(staged)
        self.claim.release([staged.key])


def _sop_of(member: IO[bytes], size: int) -> str | None:
    """The SOPInstanceUID in a member's header (its completeness is the store's check), None when unreadable.
    Leaves ``member`` rewound."""
    try:
        if isinstance(member, io.BytesIO):
            return header_sop_instance_uid(member.getvalue())
        member.seek(0)
        with mmap.mmap(member.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return header_sop_instance_uid(buf)
    except (BadResponseError, OSError, ValueError) as exc:
        log.debug("ZIP member unreadable: %s", exc)
        return None
    finally:
        member.seek(0)


def copy_member(member: IO[bytes]) -> Callable[[IO[bytes]], int]:
    """A writer for :meth:`~nbiafs.fs.instance_cache.InstanceCache.store` copying ``member``."""

    def write(out: IO[bytes]) -> int:
        if isinstance(member, io.BytesIO):
            return out.write(member.getvalue())
        member.seek(0)
        start = out.tell()
        shutil.copyfileobj(member, out, 1 << 20)
        return out.tell() - start

    return write
