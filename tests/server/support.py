"""What the archive-server tests share: plain-HTTP helpers, the standard accounts and the facts' texts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import requests

from nbiafs.server import ArchiveServer, SeriesInfo

ALICE, ALICE_PASSWORD, API_KEY = "alice", "wonderland", "test-api-key"
RESTRICTED = "NBIAFS-RESTRICTED"
CT = "RIDER Synth CT"
MR = "NBIAFS-MR-Brain"
PETCR = "NBIAFS-PET-CR"
TIMEOUT = 15
NULL_500 = "Server was not able to process your request\nnull"
PROCESS_ERROR = "Server was not able to process your request"


def url(srv: ArchiveServer, prefix: str, endpoint: str) -> str:
    """The URL of ``endpoint`` on ``prefix`` (``v1``, ``v2``, ``v4``, ``adv`` = unversioned)."""
    if prefix == "adv":
        return f"{srv.url}/nbia-api/services/{endpoint}"
    return f"{srv.url}/nbia-api/services/{prefix}/{endpoint}"


def bearer(access_token: str | None) -> dict[str, str]:
    return {} if access_token is None else {"Authorization": f"Bearer {access_token}"}


def get(
    srv: ArchiveServer, prefix: str, endpoint: str, token: str | None = None, **params: str
) -> requests.Response:
    """GET ``endpoint`` with ``params`` (and a bearer token if given)."""
    return requests.get(url(srv, prefix, endpoint), params=params, headers=bearer(token), timeout=TIMEOUT)


def post(
    srv: ArchiveServer, prefix: str, endpoint: str, data: Any, token: str | None = None
) -> requests.Response:
    """POST a form (a dict, or a list of pairs for repeated fields) to ``endpoint``."""
    return requests.post(url(srv, prefix, endpoint), data=data, headers=bearer(token), timeout=TIMEOUT)


def rows(response: requests.Response) -> list[dict[str, Any]]:
    """The JSON rows of a 200 answer ([] for an empty body)."""
    assert response.status_code == 200, (response.url, response.status_code, response.text[:300])
    if not response.content:
        return []
    found: list[dict[str, Any]] = response.json()
    return found


def login(
    srv: ArchiveServer, user: str = ALICE, password: str = ALICE_PASSWORD, client_id: str = "NBIA"
) -> dict[str, Any]:
    """A password grant that must succeed; the token answer."""
    form = {"username": user, "password": password, "client_id": client_id, "grant_type": "password"}
    r = requests.post(f"{srv.url}/nbia-api/oauth/token", data=form, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def is_empty(response: requests.Response) -> bool:
    """The live server's "no rows": 200, no body, no Content-Type."""
    return response.status_code == 200 and response.content == b"" and "Content-Type" not in response.headers


def public_series(srv: ArchiveServer) -> list[SeriesInfo]:
    return [s for s in srv.archive.iter_series() if s.collection != RESTRICTED]


def series_of(srv: ArchiveServer, collection: str, modality: str) -> SeriesInfo:
    return next(s for s in srv.archive.iter_series() if s.collection == collection and s.modality == modality)


def released_after(srv: ArchiveServer, since: dt.datetime, inclusive: bool = False) -> list[SeriesInfo]:
    """Public series released after ``since`` (or at that instant, if ``inclusive``)."""
    return [
        s
        for s in public_series(srv)
        if s.date_released is not None
        and (s.date_released > since or (inclusive and s.date_released == since))
    ]
