"""Rendering answer rows as ``format=json|csv|xml|html``.

No rows is an EMPTY body in every format (HTTP 200), as on the live server. JSON is compact, with numbers and
booleans as such. CSV has a header of every key in order of first appearance. XML element names are the keys
with characters XML does not allow in names replaced by ``_`` (``Series UID`` becomes ``Series_UID``).
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from typing import Any
from xml.sax.saxutils import escape

Row = dict[str, Any]

CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=UTF-8",
    "xml": "application/xml",
    "html": "text/html; charset=UTF-8",
}


class UnknownFormatError(ValueError):
    """A ``format`` value none of json, csv, xml, html (the live server answers 500)."""


def render(rows: list[Row], fmt: str, root: str = "rows") -> tuple[bytes, str]:
    """The body and Content-Type for ``rows`` in ``fmt`` (case-insensitive); raises UnknownFormatError."""
    fmt = fmt.lower()
    if fmt not in CONTENT_TYPES:
        raise UnknownFormatError(fmt)
    if not rows:
        return b"", CONTENT_TYPES[fmt]
    if fmt == "json":
        body = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    elif fmt == "csv":
        body = _csv(rows)
    elif fmt == "xml":
        body = _xml(rows, root)
    else:
        body = _html(rows, root)
    return body.encode("utf-8"), CONTENT_TYPES[fmt]


def _keys(rows: list[Row]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _csv(rows: list[Row]) -> str:
    keys = _keys(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    for row in rows:
        writer.writerow([_text(row[k]) if k in row else "" for k in keys])
    return out.getvalue()


def _xml_name(key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    return name if re.match(r"[A-Za-z_]", name) else "_" + name


def _xml(rows: list[Row], root: str) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', f"<{_xml_name(root)}>"]
    for row in rows:
        fields = "".join(f"<{_xml_name(k)}>{escape(_text(v))}</{_xml_name(k)}>" for k, v in row.items())
        parts.append(f"<row>{fields}</row>")
    parts.append(f"</{_xml_name(root)}>")
    return "\n".join(parts) + "\n"


def _html(rows: list[Row], title: str) -> str:
    keys = _keys(rows)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_text(row.get(k, '')))}</td>" for k in keys) + "</tr>\n"
        for row in rows
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="UTF-8"><title>{html.escape(title)}</title></head>'
        f"<body><table>\n<tr>{head}</tr>\n{body}</table></body></html>\n"
    )
