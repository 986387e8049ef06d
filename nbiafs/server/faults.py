"""Hostile fault modes: which faults a request gets, and the altered answers they send.

The knobs are in :class:`~nbiafs.server.config.ServerConfig` (``trickle_rate``, ``drop_rate``,
``truncate_rate``, ``corrupt_rate``, ``wrong_sop_rate``, ``html_rate``, ``huge_json_rate``, ``blackhole``,
``fault_scope``); the HTTP layer (:mod:`nbiafs.server.handler`) asks :func:`in_scope` and rolls the rates,
then uses the helpers here to alter what it sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from nbiafs.server.archive import Archive, SeriesInfo
from nbiafs.server.config import ServerConfig

ZIP_ENDPOINTS = frozenset({"getImage", "getImageWithMD5Hash", "getDCMImage"})
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
CORRUPT_BYTES = 16
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Scheduled maintenance</title></head>\n"
    b"<body><h1>The Cancer Imaging Archive is down for maintenance</h1>\n"
    b"<p>Please try again later.</p></body></html>\n"
)
HUGE_PIECE = 256 * 1024


def in_scope(config: ServerConfig, fault: str, route_kind: str, endpoint: str, endpoint_kind: str) -> bool:
    """Whether ``fault`` may hit a request to ``endpoint`` (``route_kind``: token/logout/api/metadata;
    ``endpoint_kind``: the endpoint's kind, rows/image/zip/..., or ``""``)."""
    for name in config.scope(fault):
        if name == "all" or name == endpoint:
            return True
        if name == "token" and route_kind == "token":
            return True
        if route_kind != "api":
            continue
        if name == "api":
            return True
        if name == "image" and endpoint_kind == "image":
            return True
        if name == "zip" and endpoint_kind == "zip":
            return True
        if name == "metadata" and endpoint_kind == "rows":
            return True
    return False


def corrupt(data: bytes) -> bytes:
    """``data`` with ``CORRUPT_BYTES`` bytes inverted, length kept: in the middle of the pixel data when there
    is some, else in the middle of the body (a DICOM reader finds nothing wrong with the result)."""
    if not data:
        return data
    at = data.rfind(PIXEL_DATA_TAG)
    start = at + 12 if at >= 0 and at + 12 < len(data) else 0  # tag, VR, reserved, 4-byte length
    middle = start + (len(data) - start) // 2
    lo = max(start, min(middle, len(data) - CORRUPT_BYTES))
    hi = min(len(data), lo + CORRUPT_BYTES)
    return data[:lo] + bytes(b ^ 0xFF for b in data[lo:hi]) + data[hi:]


def other_instance(archive: Archive, sop_uid: str) -> str | None:
    """Another SOPInstanceUID of the same series as ``sop_uid`` (else of any series), or None."""
    found = archive.instance_index.get(sop_uid)
    if found is not None:
        uids = [i.sop_instance_uid for i in found[0].instances]
        if len(uids) > 1:
            return uids[(uids.index(sop_uid) + 1) % len(uids)]
    for _series, inst in archive.iter_instances():
        if inst.sop_instance_uid != sop_uid:
            return inst.sop_instance_uid
    return None


def other_series(archive: Archive, series: SeriesInfo) -> SeriesInfo | None:
    """Another series with instances (the next one in the archive's order), or None."""
    every = [s for s in archive.iter_series() if s.instances]
    for index, candidate in enumerate(every):
        if candidate.series_instance_uid == series.series_instance_uid:
            rest = every[index + 1 :] + every[:index]
            return rest[0] if rest else None
    return every[0] if every else None


def huge_json(body: bytes, target: int) -> Iterator[bytes]:
    """A JSON list of at least ``target`` bytes made of ``body``'s rows repeated (or filler rows if it has
    none), in pieces of about ``HUGE_PIECE`` bytes; never the whole answer in memory."""
    try:
        rows = json.loads(body)
    except ValueError:
        rows = None
    if not isinstance(rows, list) or not rows:
        rows = [{"Filler": "x" * 200}]
    encoded = [json.dumps(row).encode() for row in rows]
    yield b"["
    sent = 1
    piece = bytearray()
    index = 0
    while sent < target:
        if index:
            piece += b","
        piece += encoded[index % len(encoded)]
        index += 1
        if len(piece) >= HUGE_PIECE:
            sent += len(piece)
            yield bytes(piece)
            piece.clear()
    piece += b"]"
    yield bytes(piece)
