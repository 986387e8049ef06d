"""NBIA Data Retriever ``.tcia`` manifest files.

A manifest is a few ``key=value`` header lines, the line ``ListOfSeriesToDownload=``, then one
SeriesInstanceUID per line::

    downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
    includeAnnotation=true
    noOfrRetry=4
    databasketId=manifest-1600709154662.tcia
    manifestVersion=3.0
    ListOfSeriesToDownload=
    1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192

A UTF-8 byte order mark, CRLF or CR line ends, surrounding spaces and blank lines are accepted. Series that
are listed twice are kept once, in their first position.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from nbiafs.errors import ConfigError

log = logging.getLogger(__name__)

LIST_HEADER = "ListOfSeriesToDownload"

# A DICOM UID: numeric components separated by dots, at most 64 characters (PS3.5 section 9.1).
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX = 64
_MAX_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: the header fields (``None`` when absent) and the series, in file order."""

    series_instance_uids: tuple[str, ...]
    download_server_url: str | None = None
    include_annotation: bool | None = None
    no_of_retry: int | None = None
    databasket_id: str | None = None
    manifest_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict, compare=False)
    """Every header line as written (keys as in the file), including ones this module does not know."""

    @property
    def series_filter(self) -> frozenset[str]:
        """The series as a set, ready for ``TreeSettings.series_filter``."""
        return frozenset(self.series_instance_uids)


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise ConfigError(f"manifest header {key}={value!r} is not true or false")


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"manifest header {key}={value!r} is not a whole number") from None


def parse_manifest(text: str, *, source: str = "manifest", allow_empty: bool = False) -> Manifest:
    """Parse the text of a ``.tcia`` manifest.

    Raises :class:`~nbiafs.errors.ConfigError` (naming ``source`` and the line) when the text is not a
    manifest: no ``ListOfSeriesToDownload=`` line, a header line without ``=``, a series line that is not a
    UID, a bad ``includeAnnotation``/``noOfrRetry`` value, or no series at all (unless ``allow_empty``).
    """
    text = text.removeprefix("\ufeff")
    headers: dict[str, str] = {}
    series: dict[str, None] = {}  # an ordered set
    in_list = False
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip().removeprefix("\ufeff")
        if not line:
            continue
        if in_list:
            if not _UID.fullmatch(line) or len(line) > _UID_MAX:
                raise ConfigError(f"{source}, line {number}: {line[:80]!r} is not a SeriesInstanceUID")
            series.setdefault(line, None)
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"{source}, line {number}: expected key=value before {LIST_HEADER}=")
        if key == LIST_HEADER:
            in_list = True
            value = value.strip()
            if value:
                # Tolerate a first UID written on the header line itself.
                if not _UID.fullmatch(value) or len(value) > _UID_MAX:
                    raise ConfigError(f"{source}, line {number}: {value[:80]!r} is not a SeriesInstanceUID")
                series.setdefault(value, None)
            continue
        headers[key] = value.strip()
    if not in_list:
        raise ConfigError(f"{source}: not a .tcia manifest (no {LIST_HEADER}= line)")
    if not series and not allow_empty:
        raise ConfigError(f"{source}: the manifest lists no series")
    include = headers.get("includeAnnotation")
    retry = headers.get("noOfrRetry")
    manifest = Manifest(
        series_instance_uids=tuple(series),
        download_server_url=headers.get("downloadServerUrl") or None,
        include_annotation=None if include in (None, "") else _parse_bool("includeAnnotation", include),
        no_of_retry=None if retry in (None, "") else _parse_int("noOfrRetry", retry),
        databasket_id=headers.get("databasketId") or None,
        manifest_version=headers.get("manifestVersion") or None,
        headers=headers,
    )
    log.debug("%s: %d series", source, len(manifest.series_instance_uids))
    return manifest


def load_manifest(path: str | Path) -> Manifest:
    """Read and parse a manifest file (UTF-8, optional BOM). ConfigError if unreadable or not a manifest."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_MANIFEST_BYTES:
        raise ConfigError(f"{path}: too large for a manifest")
    if b"\x00" in data:
        raise ConfigError(f"{path}: binary data, not a .tcia manifest")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text, not a .tcia manifest") from None
    return parse_manifest(text, source=str(path))
