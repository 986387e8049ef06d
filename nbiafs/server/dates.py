"""Date parameters as the live servers read them, and dates as they write them.

v1/v2 parse with a lenient Java ``SimpleDateFormat``: number-shaped nonsense is silently misread with
month and day rollover (``dd/MM/yyyy`` reads ``12/20/2014`` as 2015-08-12), anything else is unparseable.
v4 uses MySQL ``STR_TO_DATE(value, '%m-%d-%Y')``: any other shape, or an impossible date, is NULL. Callers
turn "unparseable" (``None``) into an empty answer, as the live servers do.
"""

from __future__ import annotations

import datetime as dt
import re

# The one format each version takes, as (field order, separator) for the lenient parser.
V1_V2_NEW = "yyyy/MM/dd"  # NewPatientsInCollection, NewStudiesInPatientCollection: Date=
V1_V2_UPDATED = "dd/MM/yyyy"  # getUpdatedSeries: fromDate=

_FIELD = re.compile(r"yyyy|MM|dd")
_V4 = re.compile(r"(\d{1,2})-(\d{1,2})-(\d{4})")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def parse_lenient(value: str, pattern: str) -> dt.datetime | None:
    """``value`` read by a lenient ``SimpleDateFormat(pattern)`` (midnight), or None if unparseable.

    Numbers take every digit up to the next literal; literals must match exactly; text after the pattern is
    ignored; months and days roll over (month 13 is January of the next year, day 0 the last of the month
    before). A year beyond the calendar's range saturates, so comparisons still come out as Java's would.
    """
    fields: dict[str, int] = {}
    pos = 0
    index = 0
    for match in _FIELD.finditer(pattern):
        literal = pattern[index : match.start()]
        if not value.startswith(literal, pos):
            return None
        pos += len(literal)
        digits = re.match(r"\d+", value[pos:])
        if digits is None:
            return None
        fields[match.group()] = int(digits.group())
        pos += len(digits.group())
        index = match.end()
    if not value.startswith(pattern[index:], pos):
        return None
    year, month, day = fields.get("yyyy", 1970), fields.get("MM", 1), fields.get("dd", 1)
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    try:
        return dt.datetime(year, month, 1) + dt.timedelta(days=day - 1)
    except (ValueError, OverflowError):
        return dt.datetime.min if year < 1 else dt.datetime.max


def parse_v4(value: str) -> dt.datetime | None:
    """``STR_TO_DATE(value, '%m-%d-%Y')`` (midnight), or None (SQL NULL) for any other shape."""
    match = _V4.fullmatch(value.strip())
    if match is None:
        return None
    month, day, year = (int(g) for g in match.groups())
    try:
        return dt.datetime(year, month, day)
    except ValueError:
        return None


def v1_datetime(value: dt.datetime | None) -> str | None:
    """``2003-12-12 00:00:00.0``: a ``java.sql.Timestamp`` as v1/v2 write it (time kept)."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%d %H:%M:%S") + f".{value.microsecond // 100000}"


def v4_date(value: dt.datetime | None) -> str | None:
    """``12-12-2003``: v4's ``MM-dd-yyyy`` (day only, timestamps too)."""
    return None if value is None else value.strftime("%m-%d-%Y")


def java_date(value: dt.datetime | None) -> str | None:
    """``Mon Nov 04 11:45:52 UTC 2013``: ``java.util.Date.toString()`` on a UTC server."""
    if value is None:
        return None
    clock = value.strftime("%d %H:%M:%S")
    return f"{_DAYS[value.weekday()]} {_MONTHS[value.month - 1]} {clock} UTC {value.year}"


def epoch_ms(value: dt.datetime | None) -> int | None:
    """Milliseconds since the epoch (UTC): how Jackson writes a date."""
    if value is None:
        return None
    return int(value.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
