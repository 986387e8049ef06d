"""Rendering answer tables as the live servers do for ``format=json|xml|html|csv|csvquoted|csv-download``.

A ``Table`` has columns and rows of values in column order (None = SQL null). No rows: 200, empty body, no
Content-Type, whatever the format. JSON is Jettison's: compact, keys in column order, a null column left out,
``/`` written ``\\/``. XML is ``<Results><Row><Col type='java.lang.String'>…``; HTML a bare table; values in
both are ESAPI-encoded. CSV of several columns quotes everything (``csv``, ``csvquoted``, ``csv-download``);
a one-column list (``Table.single``) is unquoted with a null as a blank line and knows no ``csvquoted``.
Any other format: 500 ``Server was not able to process your request`` typed ``application/xml``.
"""

from __future__ import annotations

import html.entities
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nbiafs.server.replies import JSON, PROCESS_ERROR, XML, Reply, empty, text

CSV_DOWNLOAD_HEADER = {"Content-Disposition": 'attachment; filename="SeriesMetaData.csv"'}


class Stamp(str):
    """A date value the server holds as a ``java.sql.Timestamp`` (only its XML ``type`` differs)."""


@dataclass
class Table:
    """Rows of one answer. ``single``: a one-column value list (the live server's ``List<String>`` answers)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    single: bool = False


def render(table: Table, fmt: str | None) -> Reply:
    """The answer for ``table`` in ``fmt`` (None: JSON), per the rules above."""
    if not table.rows:
        return empty()
    kind = (fmt or "json").lower()
    if kind == "json":
        return text(200, jettison(table), JSON)
    if kind == "html":
        return text(200, _html(table), "text/html")
    if kind == "xml":
        return text(200, _xml(table), XML)
    if table.single:
        if kind == "csv":
            return text(200, _csv_plain(table), "text/csv")
        if kind == "csv-download":
            reply = text(200, _csv_plain(table), "application/force-download")
            reply.headers.update(CSV_DOWNLOAD_HEADER)
            return reply
    elif kind in ("csv", "csvquoted", "csv-download"):
        reply = text(200, csv_quoted(table), "text/csv")
        if kind == "csv-download":
            reply.headers.update(CSV_DOWNLOAD_HEADER)
        return reply
    return text(500, PROCESS_ERROR, XML)


# -- Java's string forms ---------------------------------------------------------------------------------


def java_double(value: float) -> str:
    """``Double.toString``: ``104504.0``, ``0.7``, ``1.0E7``."""
    if math.isnan(value) or math.isinf(value):
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN")
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(float(value))
    sign, digits, exponent = Decimal(repr(float(value))).as_tuple()
    assert isinstance(exponent, int)
    kept = list(digits)
    while len(kept) > 1 and kept[-1] == 0:
        kept.pop()
        exponent += 1
    mantissa = f"{kept[0]}." + ("".join(map(str, kept[1:])) or "0")
    return ("-" if sign else "") + f"{mantissa}E{exponent + len(kept) - 1}"


def java_string(value: Any) -> str:
    """``String.valueOf`` of a value as the server holds it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return java_double(value)
    return str(value)


def java_type(value: Any) -> str:
    """The Java class name the XML writer puts in ``type``."""
    if isinstance(value, Stamp):
        return "java.sql.Timestamp"
    if isinstance(value, bool):
        return "java.lang.Boolean"
    if isinstance(value, int):
        return "java.lang.Integer" if -(2**31) <= value < 2**31 else "java.lang.Long"
    if isinstance(value, float):
        return "java.lang.Double"
    return "java.lang.String"


# -- JSON (Jettison) -------------------------------------------------------------------------------------


def json_string(value: str) -> str:
    """A JSON string as Jettison quotes it (``/`` escaped, control characters as ``\\uXXXX``)."""
    out = ['"']
    for ch in value:
        if ch in '\\"/':
            out.append("\\" + ch)
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\r":
            out.append("\\r")
        elif ch < " " or "\x80" <= ch < "\xa0" or "\u2000" <= ch < "\u2100":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def json_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return java_double(value)
    return json_string(str(value))


def jettison(table: Table) -> str:
    """The table as a Jettison ``JSONArray`` of ``JSONObject``: nulls left out."""
    objects = []
    for row in table.rows:
        pairs = (
            f"{json_string(k)}:{json_value(v)}"
            for k, v in zip(table.columns, row, strict=True)
            if v is not None
        )
        objects.append("{" + ",".join(pairs) + "}")
    return "[" + ",".join(objects) + "]"


# -- XML and HTML (ESAPI-encoded) ------------------------------------------------------------------------

_IMMUNE = frozenset(",.-_ ")


def esapi_html(value: str) -> str:
    """ESAPI ``encodeForHTML``: alphanumerics and ``,.-_`` and space as is, the rest as entities."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _IMMUNE or (code < 0x80 and ch.isalnum()):
            out.append(ch)
        elif (code <= 0x1F and ch not in "\t\n\r") or 0x7F <= code <= 0x9F:
            out.append(" ")
        elif code in html.entities.codepoint2name:
            out.append(f"&{html.entities.codepoint2name[code]};")
        else:
            out.append(f"&#x{code:x};")
    return "".join(out)


def _cell(value: Any) -> str:
    return (
        esapi_html(value) if isinstance(value, str) and not isinstance(value, Stamp) else java_string(value)
    )


def _xml(table: Table) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results>']
    for row in table.rows:
        parts.append("<Row>")
        for column, value in zip(table.columns, row, strict=True):
            if value is not None:
                parts.append(f"<{column} type='{java_type(value)}'>{_cell(value)}</{column}>")
        parts.append("</Row>")
    parts.append("</Results>")
    return "".join(parts)


def _html(table: Table) -> str:
    parts = ["<P ALIGN='center'><TABLE BORDER=1><TR>"]
    parts.extend(f"<TH>{c}</TH>" for c in table.columns)
    parts.append("</TR>")
    for row in table.rows:
        parts.append("<TR>")
        parts.extend("<TD>&nbsp;</TD>" if v is None else f"<TD>{_cell(v)}</TD>" for v in row)
        parts.append("</TR>")
    parts.append("</TABLE></P>")
    return "".join(parts)


# -- CSV -------------------------------------------------------------------------------------------------


def csv_quoted(table: Table) -> str:
    """``FormatOutput.toCsvQuoted``, its quirk included (a null first value shifts the row)."""
    out = ['"' + '","'.join(c.replace('"', '""') for c in table.columns) + '"\n']
    for row in table.rows:
        line = []
        for i, value in enumerate(row):
            if value is None:
                line.append('","')
            else:
                line.append(('","' if i > 0 else '"') + java_string(value).replace('"', '""'))
        out.append("".join(line) + '"\n')
    return "".join(out)


def csv_plain(values: Sequence[Sequence[str | None]], columns: Sequence[str]) -> str:
    """``FormatOutput.toCsv`` of several columns: unquoted, a null as nothing (md5hashes.csv)."""
    lines = [",".join(columns)]
    lines.extend(",".join("" if v is None else v for v in row) for row in values)
    return "\n".join(lines) + "\n"


def _csv_plain(table: Table) -> str:
    out = [table.columns[0] + "\n"]
    for (value,) in table.rows:
        out.append(("\n" if value is None else java_string(value)) + "\n")
    return "".join(out)
