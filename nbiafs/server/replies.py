"""Answers as the live servers word them: the ``Reply`` value, its stock bodies, and Tomcat's error pages.

A ``Reply`` with ``content_type=None`` carries no Content-Type header, as the live server's empty answers
(``Response.ok().build()``) and bodiless 204/401s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROCESS_ERROR = "Server was not able to process your request"
NULL_500 = PROCESS_ERROR + "\nnull"  # an exception with no message (NullPointerException), 48 bytes
JSON = "application/json"
TEXT = "text/plain"
XML = "application/xml"
MANIFEST = "application/x-nbia-manifest-file"


def _java(value: str | None) -> str:
    """A string as Java concatenates it (``null`` for None)."""
    return "null" if value is None else value


def not_granted(series_uid: str | None) -> str:
    """The access text of getImage (v2, v4) and getDicomTags for a refused or unknown series."""
    return (
        f"The user has not been granted the access to image with given SeriesInstanceUID,{_java(series_uid)}. "
        "Please contact System Admin to resolve this issue."
    )


def not_public(series_uid: str | None) -> str:
    """v1 getImage's (and getDCMImage's) access text."""
    return f"Image with given SeriesInstanceUID,{_java(series_uid)}, is not in public domain."


@dataclass
class Reply:
    """One complete answer: status, body, Content-Type (None: no header) and extra headers."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def empty() -> Reply:
    """200 with no body and no Content-Type: the live server's "no rows"."""
    return Reply(200)


def text(status: int, body: str, content_type: str | None = TEXT) -> Reply:
    return Reply(status, body.encode("utf-8"), content_type)


def bad_request(sentence: str, content_type: str | None = JSON) -> Reply:
    """400 with a plain sentence (labelled ``application/json`` by the live server)."""
    return text(400, sentence, content_type)


def null_500() -> Reply:
    """500 ``text/plain`` ``Server was not able to process your request\\nnull``."""
    return text(500, NULL_500)


def jackson(value: Any, status: int = 200) -> Reply:
    """A Jackson-serialised answer: compact, nulls kept as ``null``."""
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text(status, body, JSON)


_TOMCAT_STYLE = (
    "body {font-family:Tahoma,Arial,sans-serif;} h1, h2, h3, b {color:white;background-color:#525D76;} "
    "h1 {font-size:22px;} h2 {font-size:16px;} h3 {font-size:14px;} p {font-size:12px;} a {color:black;} "
    ".line {height:1px;background-color:#525D76;border:none;}"
)
_TOMCAT_TEXT = {
    404: (
        "Not Found",
        "The origin server did not find a current representation for the target resource or is not willing "
        "to disclose that one exists.",
    ),
    405: (
        "Method Not Allowed",
        "The method received in the request-line is known by the origin server but not supported by the "
        "target resource.",
    ),
}


def tomcat_error(status: int, allow: str | None = None) -> Reply:
    """Tomcat's HTML error page for 404 or 405 (with ``Allow``)."""
    title, description = _TOMCAT_TEXT[status]
    page = (
        f'<!doctype html><html lang="en"><head><title>HTTP Status {status} – {title}</title>'
        f'<style type="text/css">{_TOMCAT_STYLE}</style></head><body><h1>HTTP Status {status} – {title}</h1>'
        f'<hr class="line" /><p><b>Type</b> Status Report</p><p><b>Description</b> {description}</p>'
        '<hr class="line" /><h3>Apache Tomcat/9.0.98</h3></body></html>'
    )
    headers = {"Content-Language": "en"}
    if allow:
        headers["Allow"] = allow
    return Reply(status, page.encode("utf-8"), "text/html;charset=utf-8", headers)
