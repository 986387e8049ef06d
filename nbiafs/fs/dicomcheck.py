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

    def _read(self, pos: int, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if pos + size > len(self.buf):
            raise _TruncatedError(f"element header at byte {pos} runs past the end")
        return struct.unpack_from(self.endian + fmt, self.buf, pos)

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


def check_instance(path: Path, sop_instance_uid: str) -> None:
    """Raise BadResponseError unless ``path`` holds a complete DICOM file of ``sop_instance_uid``."""
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


def _check(buf: mmap.mmap, size: int, sop_instance_uid: str) -> None:
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
    if sop != sop_instance_uid:
        raise BadResponseError(f"the file holds SOPInstanceUID {sop!r}, not {sop_instance_uid!r}")


def _pydicom_reads(path: Path) -> None:
    """pydicom parses the whole data set (values over 4 KiB deferred, not loaded)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        pydicom.dcmread(path, defer_size=4096)
    except (InvalidDicomError, ValueError, EOFError, struct.error, KeyError, NotImplementedError) as exc:
        raise BadResponseError(f"pydicom cannot read the file: {exc}") from None
