"""Is a downloaded file the complete DICOM instance that was asked for? Checked before it enters the cache.

:func:`check_instance` demands the 128-byte preamble and ``DICM``, a file meta group with a transfer syntax,
every data element of the data set whole up to the last byte of the file (a body cut short without a
Content-Length ends inside an element, or leaves a sequence open), pydicom able to read it, and the
SOPInstanceUID asked for. pydicom alone is not enough: it reads a file cut inside a value without complaint.
The element walk reads only headers (values are skipped), so a large instance costs little.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from pathlib import Path
from typing import IO

from nbiafs.errors import BadResponseError

_PREAMBLE = 128
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_SOP_INSTANCE_UID = (0x0008, 0x0018)
_MAX_DEPTH = 64


class _TruncatedError(Exception):
    pass


class _Walker:
    """Walks data elements of a buffer, recording the top-level values of a few tags."""

    def __init__(self, buf: bytes | mmap.mmap, *, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        self.endian = "<" if little else ">"
        self.found: dict[tuple[int, int], bytes] = {}
        self._size = len(buf)
        self._structs = {fmt: struct.Struct(self.endian + fmt) for fmt in ("HH", "I", "H")}

    def _read(self, pos: int, fmt: str) -> tuple[int, ...]:
        packer = self._structs[fmt]
        if pos + packer.size > self._size:
            raise _TruncatedError(f"element header at byte {pos} runs past the end")
        return packer.unpack_from(self.buf, pos)

    def walk(self, pos: int, end: int, depth: int, *, explicit: bool, stop: int | None = None) -> int:
        """Elements from ``pos`` to ``end``, or to the delimiter ``stop`` (an element of group FFFE)."""
        if depth > _MAX_DEPTH:
            raise BadResponseError("sequences nested too deeply")
        while pos < end:
            group, elem = self._read(pos, "HH")
            if group == 0xFFFE:
                (length,) = self._read(pos + 4, "I")
                pos += 8
                if elem == stop:
                    return pos
                raise BadResponseError(f"unexpected delimiter (FFFE,{elem:04X}) at byte {pos - 8}")
            vr = b""
            if explicit:
                vr = bytes(self.buf[pos + 4 : pos + 6])
                if len(vr) < 2:
                    raise _TruncatedError("element header cut")
                if vr in _LONG_VRS:
                    (length,) = self._read(pos + 8, "I")
                    pos += 12
                else:
                    (length,) = self._read(pos + 6, "H")
                    pos += 8
            else:
                (length,) = self._read(pos + 4, "I")
                pos += 8
            if length == _UNDEFINED:
                # A sequence, encapsulated pixel data, or UN holding an implicit little-endian sequence.
                inner = explicit and vr != b"UN"
                pos = self._items(pos, end, depth + 1, explicit=inner)
                continue
            if pos + length > end:
                raise _TruncatedError(
                    f"element ({group:04X},{elem:04X}) needs {length} bytes, the file ends first"
                )
            if depth == 0 and (group, elem) == _SOP_INSTANCE_UID:
                self.found[(group, elem)] = bytes(self.buf[pos : pos + length])
            pos += length
        if stop is not None:
            raise _TruncatedError("a sequence or item is not closed")
        return pos

    def _items(self, pos: int, end: int, depth: int, *, explicit: bool) -> int:
        while True:
            group, elem = self._read(pos, "HH")
            (length,) = self._read(pos + 4, "I")
            pos += 8
            if group != 0xFFFE:
                raise BadResponseError(f"item expected at byte {pos - 8}")
            if elem == _SEQ_END:
                return pos
            if elem != _ITEM:
                raise BadResponseError(f"unexpected (FFFE,{elem:04X}) at byte {pos - 8}")
            if length == _UNDEFINED:
                pos = self.walk(pos, end, depth, explicit=explicit, stop=_ITEM_END)
            else:
                if pos + length > end:
                    raise _TruncatedError("an item runs past the end of the file")
                pos += length


def check_complete(path: Path) -> None:
    """Raise BadResponseError unless ``path`` holds a complete DICOM file (whatever its SOPInstanceUID)."""
    check_instance(path, None)


def complete_sop_instance_uid(data: bytes) -> str:
    """The SOPInstanceUID of the complete DICOM file ``data`` (its header's, else the file meta's), by the
    same element walk as :func:`check_instance`. BadResponseError if ``data`` is not a complete DICOM file."""
    if len(data) < _PREAMBLE + 4:
        raise BadResponseError(f"not DICOM: {len(data)} bytes")
    sop = _check(data, len(data), None)
    if not sop:
        raise BadResponseError("the file carries no SOPInstanceUID")
    return sop


def read_sop_instance_uid(fp: IO[bytes]) -> str | None:
    """The SOPInstanceUID in the header of the DICOM file ``fp`` (read from its start, stopping before the
    pixel data), else its MediaStorageSOPInstanceUID, or None when it is not readable DICOM. Rewinds ``fp``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=1024)
        value = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
    except (
        InvalidDicomError,
        ValueError,
        EOFError,
        struct.error,
        KeyError,
        NotImplementedError,
        AttributeError,
    ):
        value = None
    finally:
        fp.seek(0)
    return str(value).strip("\0 ") if value else None


def check_instance(path: Path, sop_instance_uid: str | None) -> None:
    """Raise BadResponseError unless ``path`` holds a complete DICOM file of ``sop_instance_uid`` (None: any)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < _PREAMBLE + 4:
                raise BadResponseError(f"not DICOM: {size} bytes")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _check(buf, size, sop_instance_uid)
        _pydicom_reads(path)
    except OSError as exc:
        raise BadResponseError(f"cannot read the downloaded instance: {exc}") from exc


def _check(buf: mmap.mmap | bytes, size: int, sop_instance_uid: str | None) -> str | None:
    """Walk the file; BadResponseError unless complete (and of ``sop_instance_uid`` when given). Returns
    the SOPInstanceUID found."""
    if buf[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise BadResponseError("not DICOM: no 'DICM' after the 128-byte preamble")
    pos = _PREAMBLE + 4
    syntax = meta_sop = None
    try:
        while pos + 8 <= size:
            group, elem = struct.unpack_from("<HH", buf, pos)
            if group != 0x0002:
                break
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", buf, pos + 8)
                start = pos + 12
            else:
                (length,) = struct.unpack_from("<H", buf, pos + 6)
                start = pos + 8
            if length == _UNDEFINED or start + length > size:
                raise _TruncatedError("the file meta information is cut")
            value = bytes(buf[start : start + length]).rstrip(b"\0 ").decode("ascii", "replace")
            if elem == 0x0010:
                syntax = value
            elif elem == 0x0003:
                meta_sop = value
            pos = start + length
        if syntax is None:
            raise BadResponseError("not DICOM: no file meta information with a transfer syntax")
        if syntax in _DEFLATED:
            try:
                body: bytes | mmap.mmap = zlib.decompress(bytes(buf[pos:]), -zlib.MAX_WBITS)
            except zlib.error as exc:
                raise _TruncatedError(f"deflated data set unreadable: {exc}") from None
            pos = 0
        else:
            body = buf
        walker = _Walker(body, explicit=syntax != _IMPLICIT_LE, little=syntax != _EXPLICIT_BE)
        walker.walk(pos, len(body), 0, explicit=walker.explicit)
    except _TruncatedError as exc:
        raise BadResponseError(f"incomplete DICOM file ({size} bytes): {exc}") from None
    except struct.error as exc:
        raise BadResponseError(f"incomplete DICOM file ({size} bytes): {exc}") from None
    raw = walker.found.get(_SOP_INSTANCE_UID)
    sop = raw.rstrip(b"\0 ").decode("ascii", "replace") if raw is not None else meta_sop
    if sop_instance_uid is not None and sop != sop_instance_uid:
        raise BadResponseError(f"the file holds SOPInstanceUID {sop!r}, not {sop_instance_uid!r}")
    return sop


def _pydicom_reads(path: Path) -> None:
    """pydicom parses the whole data set (values over 4 KiB deferred, not loaded)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        pydicom.dcmread(path, defer_size=4096)
    except (InvalidDicomError, ValueError, EOFError, struct.error, KeyError, NotImplementedError) as exc:
        raise BadResponseError(f"pydicom cannot read the file: {exc}") from None
