"""Directory entry names: sanitising, the Data Retriever's descriptive names, uid names, de-duplication.

Every name this module returns is a valid, safe Linux directory entry: never empty, never ``.`` or ``..``, no
``/`` or NUL, at most :data:`NAME_MAX` bytes of UTF-8 (cut on a character boundary).

The descriptive layout follows the NBIA Data Retriever (CBIIT/NBIA-TCIA): the server cleans StudyID,
StudyDescription and SeriesDescription with ``replaceAll("[^a-zA-Z0-9 .-]", "")`` and turns an empty or
missing value into ``NA``; the Data Retriever then cuts descriptions to 53 characters and joins the parts
with ``-``, dropping a missing StudyDate or SeriesNumber::

    <MM-DD-YYYY>-<StudyID>-<StudyDescription>-<last 5 of StudyInstanceUID>    01-01-2000-NA-NA-30178
    <SeriesNumber as N.000000>-<SeriesDescription>-<last 5 of SeriesInstanceUID>  3000566.000000-NA-03192

Names that collide within one directory are disambiguated by :func:`unique_names` with more digits of each
entry's UID (``tail``), never from listing order, so an entry gets the same name on every mount.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

log = logging.getLogger(__name__)

NAME_MAX = 255
"""Longest directory entry name in bytes (Linux ``NAME_MAX``)."""

DESCRIPTION_MAX = 53
"""The Data Retriever cuts descriptions to this many characters."""

UID_TAIL = 5
"""Descriptive names end with this many trailing characters of the UID."""

INSTANCE_SUFFIX = ".dcm"

_NOT_DESCRIPTIVE = re.compile(r"[^A-Za-z0-9 .\-]")
_UNSAFE = re.compile(r"[/\x00]")

K = TypeVar("K", bound=Hashable)


def truncate_utf8(text: str, max_bytes: int = NAME_MAX) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, never inside a character."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def safe_name(value: str, max_bytes: int = NAME_MAX) -> str:
    """A value the server sent (collection name, PatientID, UID) as a directory entry name.

    Only ``/`` and NUL are replaced (by ``_``); spaces, quotes and case are kept. An empty name becomes ``_``,
    ``.`` and ``..`` become ``_`` and ``__``; the result is cut to ``max_bytes`` bytes.
    """
    name = _UNSAFE.sub("_", value)
    # Lone surrogates (from a badly decoded answer) cannot be encoded as UTF-8 file names.
    name = name.encode("utf-8", "replace").decode("utf-8")
    name = truncate_utf8(name, max_bytes)
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    return name


def clean_description(value: str | None) -> str:
    """The NBIA server's ``cleanStr``: keep ASCII letters, digits, space, ``.``, ``-``; empty is ``NA``."""
    if value is None:
        return "NA"
    cleaned = _NOT_DESCRIPTIVE.sub("", value)
    return cleaned if cleaned else "NA"


def format_study_date(value: dt.datetime | dt.date | None) -> str | None:
    """A study date as the Data Retriever writes it (``MM-DD-YYYY``), or ``None``."""
    if value is None:
        return None
    return f"{value.month:02d}-{value.day:02d}-{value.year:04d}"


def format_series_number(value: int | float | None) -> str | None:
    """A SeriesNumber as the Data Retriever writes it (NBIA stores a decimal): ``3`` is ``3.000000``."""
    if value is None:
        return None
    return f"{float(value):.6f}"


def _join(parts: Iterable[str | None], tail: str) -> str:
    """Parts joined by ``-``, missing ones dropped, cut so that the UID ``tail`` always survives."""
    head = "-".join(p for p in parts if p)
    room = max(0, NAME_MAX - len(tail.encode("utf-8", "replace")) - 1)
    return truncate_utf8(head, room) + "-" + tail


def descriptive_study_name(
    study_instance_uid: str,
    study_date: dt.datetime | dt.date | None = None,
    study_id: str | None = None,
    study_description: str | None = None,
    tail: int = UID_TAIL,
) -> str:
    """``<MM-DD-YYYY>-<StudyID>-<StudyDescription>-<last 5 of UID>``, as the Data Retriever names a study."""
    name = _join(
        [
            format_study_date(study_date),
            clean_description(study_id),
            clean_description(study_description)[:DESCRIPTION_MAX],
        ],
        study_instance_uid[-tail:],
    )
    return safe_name(name)


def descriptive_series_name(
    series_instance_uid: str,
    series_number: int | None = None,
    series_description: str | None = None,
    tail: int = UID_TAIL,
) -> str:
    """``<SeriesNumber>-<SeriesDescription>-<last 5 of UID>``, as the Data Retriever names a series."""
    number = format_series_number(series_number)
    name = _join(
        [number, clean_description(series_description)[:DESCRIPTION_MAX]], series_instance_uid[-tail:]
    )
    return safe_name(name)


def uid_name(uid: str) -> str:
    """A study or series directory in the "classic" layout: the UID itself (made safe)."""
    return safe_name(uid)


def instance_name(sop_instance_uid: str) -> str:
    """``<SOPInstanceUID>.dcm``; the suffix is kept even when a hostile UID must be cut to fit."""
    base = safe_name(sop_instance_uid, NAME_MAX - len(INSTANCE_SUFFIX))
    return base + INSTANCE_SUFFIX


def _suffixed(base: str, key_text: str, digits: int) -> str:
    """``base~<digits hex digits of sha256(key)>``, with ``base`` cut so the whole fits in NAME_MAX bytes.

    The last resort when more UID digits cannot separate two names (names that are not built from a UID, or
    UIDs that differ only in characters sanitising replaced). A hash of the key keeps it independent of order.
    """
    tag = "~" + hashlib.sha256(key_text.encode("utf-8", "surrogatepass")).hexdigest()[:digits]
    if base.endswith(INSTANCE_SUFFIX) and len(base) > len(INSTANCE_SUFFIX):
        # Keep ``.dcm`` last so tools still recognise the file type.
        stem = base[: -len(INSTANCE_SUFFIX)]
        return truncate_utf8(stem, NAME_MAX - len(tag) - len(INSTANCE_SUFFIX)) + tag + INSTANCE_SUFFIX
    return truncate_utf8(base, NAME_MAX - len(tag)) + tag


def unique_names(entries: Mapping[K, str], widen: Callable[[K, int], str] | None = None) -> dict[K, str]:
    """Make names unique within one directory: ``{key: wanted name}`` -> ``{key: final name}``.

    A name wanted by exactly one key is kept. When several keys want the same name, every one of them is
    renamed: with ``widen(key, n)`` (the name built with the last ``n`` characters of the key's UID instead of
    5) using the smallest ``n`` that separates the whole group, else (or without ``widen``) with a
    ``~<hex digits>`` hash of the key. The result depends only on the set of entries, never on their order.
    """
    by_name: dict[str, list[K]] = {}
    for key, name in entries.items():
        by_name.setdefault(name, []).append(key)
    result: dict[K, str] = {}
    groups: list[list[K]] = []
    for name, keys in by_name.items():
        if len(keys) == 1:
            result[keys[0]] = name
        else:
            # Sorting by the key's text makes the outcome independent of the order the server listed the rows.
            groups.append(sorted(keys, key=str))
    if not groups:
        return result
    taken = set(result.values())
    for group in sorted(groups, key=lambda g: str(g[0])):
        names = _widened(group, widen, taken) if widen is not None else None
        if names is None:
            names = {}
            for key in group:
                digits = 8
                candidate = _suffixed(entries[key], str(key), digits)
                while (candidate in taken or candidate in names.values()) and digits < 64:
                    digits += 8
                    candidate = _suffixed(entries[key], str(key), digits)
                counter = 1
                while candidate in taken or candidate in names.values():
                    # Only reachable if two keys share a str() and a full sha256: practically never.
                    candidate = _suffixed(entries[key], f"{key}#{counter}", 64)
                    counter += 1
                names[key] = candidate
        result.update(names)
        taken.update(names.values())
        log.debug("disambiguated %d entries named %r", len(group), entries[group[0]])
    return result


def _widened(group: list[K], widen: Callable[[K, int], str], taken: set[str]) -> dict[K, str] | None:
    """Names for a clashing ``group`` with more UID digits; ``None`` if no number of digits separates it."""
    longest = max(len(str(key)) for key in group)
    for digits in range(UID_TAIL + 1, longest + 1):
        names = {key: widen(key, digits) for key in group}
        values = set(names.values())
        if len(values) == len(group) and not values & taken:
            return names
    return None
