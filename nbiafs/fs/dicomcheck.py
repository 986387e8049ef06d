"""Is a downloaded file the complete DICOM instance that was asked for? Checked before it enters the cache.

:func:`check_instance` demands the 128-byte preamble and ``DICM``, a file meta group with a transfer syntax,
every data element of the data set whole up to the last byte of the file (a body cut short without a
Content-Length ends inside an element, or leaves a sequence open), and the SOPInstanceUID asked for. The
element walk reads only headers (values are skipped), so a large instance costs little; it also refuses what
made pydicom's reader fail (a file meta element of unknown VR, a transfer syntax that is not a UID, an
explicit VR that is not two capital letters, a Specific Character Set that is not printable ASCII), so a file
it accepts is one pydicom reads.
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
_KNOWN_VRS = _LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
     b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)  # fmt: skip
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99",)  # Deflated Explicit VR Little Endian: the data set is deflated
_SOP_INSTANCE_UID = (0x0008 << 16) | 0x0018
_CHARSET = (0x0008 << 16) | 0x0005
_MAX_DEPTH = 64
_MMAP_FROM = 1 << 20
"""Files at least this large are checked through mmap, smaller ones read whole."""
_UID_CHARS = b"0123456789."
_PRINTABLE = bytes(range(0x20, 0x7F))
_META_HEADER = struct.Struct("<HH2sH")
_LE_U32 = struct.Struct("<I")
_STRUCTS = {
    endian: tuple(struct.Struct(endian + fmt).unpack_from for fmt in ("HH2sH", "HHI", "I")) for endian in "<>"
}


class _TruncatedError(Exception):
    pass


class _Walker:
    """Walks data elements of a buffer, keeping the top-level SOPInstanceUID and Specific Character Set."""

    def __init__(self, buf: bytes | mmap.mmap | memoryview, *, little: bool) -> None:
        self.buf = buf
        self._explicit, self._implicit, self._u32 = _STRUCTS["<" if little else ">"]
        self.found: dict[int, bytes] = {}

    def walk(
        self,
        pos: int,
        end: int,
        depth: int,
        *,
        explicit: bool,
        stop: int | None = None,
        last_group: int = 0xFFFF,
    ) -> int:
        """Elements from ``pos`` to ``end``, or to the delimiter ``stop`` (an element of group FFFE), or to the
        first element of a group after ``last_group``."""
        if depth > _MAX_DEPTH:
            raise BadResponseError("sequences nested too deeply")
        buf, u32, found = self.buf, self._u32, self.found
        explicit_header, implicit_header = self._explicit, self._implicit
        long_vrs, known_vrs = _LONG_VRS, _KNOWN_VRS
        vr = b""
        while pos < end:
            if pos + 8 > end:
                raise _TruncatedError(f"element header at byte {pos} runs past the end")
            if explicit:
                group, elem, vr, length = explicit_header(buf, pos)
            else:
                group, elem, length = implicit_header(buf, pos)
            if group > last_group and group != 0xFFFE:
                return pos
            if group == 0xFFFE:
                pos += 8
                if elem == stop:
                    return pos
                raise BadResponseError(f"unexpected delimiter (FFFE,{elem:04X}) at byte {pos - 8}")
            if not explicit:
                pos += 8
            elif vr in long_vrs:
                if pos + 12 > end:
                    raise _TruncatedError(f"element header at byte {pos} runs past the end")
                (length,) = u32(buf, pos + 8)
                pos += 12
            elif vr in known_vrs or (vr.isalpha() and vr.isupper()):
                pos += 8
            else:
                raise BadResponseError(f"element ({group:04X},{elem:04X}) has no VR ({vr!r}) at byte {pos}")
            if length == _UNDEFINED:
                # A sequence, encapsulated pixel data, or UN holding an implicit little-endian sequence.
                pos = self._items(pos, end, depth + 1, explicit=explicit and vr != b"UN")
                continue
            if pos + length > end:
                raise _TruncatedError(
                    f"element ({group:04X},{elem:04X}) needs {length} bytes, the file ends first"
                )
            if depth == 0 and group == 0x0008:
                tag = (group << 16) | elem
                if tag == _CHARSET and explicit and vr != b"CS":
                    raise BadResponseError(f"Specific Character Set of VR {vr!r}, not CS")
                if tag in (_SOP_INSTANCE_UID, _CHARSET):
                    found[tag] = bytes(buf[pos : pos + length])
            pos += length
        if stop is not None:
            raise _TruncatedError("a sequence or item is not closed")
        return pos

    def _items(self, pos: int, end: int, depth: int, *, explicit: bool) -> int:
        buf, header = self.buf, self._implicit
        while True:
            if pos + 8 > end:
                raise _TruncatedError(f"item header at byte {pos} runs past the end")
            group, elem, length = header(buf, pos)
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


def header_sop_instance_uid(data: bytes | mmap.mmap | memoryview) -> str:
    """The SOPInstanceUID of the DICOM file ``data``, read from its header: the file meta and the elements up to
    group 0008 are walked, not the rest, so ``data`` may be incomplete (check it before trusting it).
    BadResponseError if that header is not DICOM or carries no SOPInstanceUID."""
    if len(data) < _PREAMBLE + 4:
        raise BadResponseError(f"not DICOM: {len(data)} bytes")
    sop = _check(data, len(data), None, header_only=True)
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
            if size < _MMAP_FROM:
                f.seek(0)
                _check(f.read(), size, sop_instance_uid)
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _check(buf, size, sop_instance_uid)
    except OSError as exc:
        raise BadResponseError(f"cannot read the downloaded instance: {exc}") from exc


def _check(
    buf: mmap.mmap | bytes | memoryview, size: int, sop_instance_uid: str | None, *, header_only: bool = False
) -> str | None:
    """Walk the file (``header_only``: up to group 0008); BadResponseError unless complete (and of
    ``sop_instance_uid`` when given). Returns the SOPInstanceUID found."""
    if buf[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise BadResponseError("not DICOM: no 'DICM' after the 128-byte preamble")
    pos = _PREAMBLE + 4
    syntax = meta_sop = None
    try:
        while pos + 8 <= size:
            group, elem, vr, length = _META_HEADER.unpack_from(buf, pos)
            if group != 0x0002:
                break
            if vr not in _KNOWN_VRS:
                raise BadResponseError(f"not DICOM: file meta element (0002,{elem:04X}) has VR {vr!r}")
            if vr in _LONG_VRS:
                if pos + 12 > size:
                    raise _TruncatedError("the file meta information is cut")
                (length,) = _LE_U32.unpack_from(buf, pos + 8)
                start = pos + 12
            else:
                start = pos + 8
            if length == _UNDEFINED or start + length > size:
                raise _TruncatedError("the file meta information is cut")
            raw = bytes(buf[start : start + length])
            if elem == 0x0000 and (vr != b"UL" or length != 4):
                raise BadResponseError("not DICOM: a file meta group length that is not 4 bytes")
            if elem == 0x0010:
                raw = raw.rstrip(b"\0 ")
                if not raw or len(raw) > 64 or raw.translate(None, _UID_CHARS):
                    raise BadResponseError(f"not DICOM: transfer syntax {raw!r} is not a UID")
                syntax = raw.decode("ascii")
            elif elem == 0x0003:
                meta_sop = raw.rstrip(b"\0 ").decode("ascii", "replace")
            pos = start + length
        if syntax is None:
            raise BadResponseError("not DICOM: no file meta information with a transfer syntax")
        if syntax in _DEFLATED:
            try:
                body: bytes | mmap.mmap | memoryview = zlib.decompress(bytes(buf[pos:]), -zlib.MAX_WBITS)
            except zlib.error as exc:
                raise _TruncatedError(f"deflated data set unreadable: {exc}") from None
            pos = 0
        else:
            body = buf
        walker = _Walker(body, little=syntax != _EXPLICIT_BE)
        walker.walk(
            pos, len(body), 0, explicit=syntax != _IMPLICIT_LE, last_group=0x0008 if header_only else 0xFFFF
        )
    except _TruncatedError as exc:
        raise BadResponseError(f"incomplete DICOM file ({size} bytes): {exc}") from None
    except struct.error as exc:
        raise BadResponseError(f"incomplete DICOM file ({size} bytes): {exc}") from None
    charset = walker.found.get(_CHARSET)
    if charset is not None and charset.rstrip(b"\0 ").translate(None, _PRINTABLE):
        raise BadResponseError(f"Specific Character Set {charset!r} is not printable ASCII")
    raw_sop = walker.found.get(_SOP_INSTANCE_UID)
    sop = raw_sop.rstrip(b"\0 ").decode("ascii", "replace") if raw_sop is not None else meta_sop
    if sop_instance_uid is not None and sop != sop_instance_uid:
        raise BadResponseError(f"the file holds SOPInstanceUID {sop!r}, not {sop_instance_uid!r}")
    return sop
