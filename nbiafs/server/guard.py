"""Who is calling, and what a caller the server cannot identify gets instead of an answer (facts §2).

Keycloak era (production): each endpoint asks Keycloak about the token itself, so the failure depends on
the endpoint (its ``guard``): an empty 200, a 204, a bodiless 401, or a 500 with the NullPointerException
text when there is no header at all. ``Authorization: Bearer undefined`` is the guest. Spring era: a
filter guards v2 and the unversioned API and answers JSON 401s with ``WWW-Authenticate`` before any
endpoint runs; a token may also come as the ``access_token`` query parameter.

v1 (and v4 getSeriesSize) ignore tokens; v4 treats a missing header as the guest in both eras.

Guards (``Endpoint.guard``), and what a missing / invalid token gets in the Keycloak era: ``public`` (no
check), ``apikey`` (v3, checked elsewhere), ``list`` (v2 lists: empty / empty), ``meta204`` (v2
getSeriesMetaData: 204 / 204), ``strict`` (v2 getCollectionValues and images, the unversioned API: 500 /
bodiless 401), ``advtags`` (unversioned getDicomTags: 500 / 500), ``v4list`` (guest / empty), ``v4json``
(guest / ``[]``), ``v4strict`` (guest / bodiless 401), ``v4tags`` (guest / 500).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from nbiafs.server.auth import TokenStore
from nbiafs.server.config import GUEST_USER
from nbiafs.server.replies import JSON, PROCESS_ERROR, Reply, empty, jackson, null_500, text

SPRING_JSON = "application/json;charset=UTF-8"
# Guards the Spring-era filter applies to (v2 and the unversioned API).
SPRING_GUARDED = frozenset({"list", "meta204", "strict", "advtags"})


@dataclass(frozen=True)
class Caller:
    """The account a request runs as: a user name, the guest, or None (anonymous: public data)."""

    user: str | None

    @property
    def name(self) -> str:
        return self.user or ""


ANONYMOUS = Caller(None)
GUEST = Caller(GUEST_USER)


def spring_refusal(error: str, description: str) -> Reply:
    """Spring Security OAuth2's 401: JSON body and a ``WWW-Authenticate`` challenge."""
    body = json.dumps({"error": error, "error_description": description}, separators=(",", ":"))
    challenge = f'Bearer realm="oauth", error="{error}", error_description="{description}"'
    return Reply(401, body.encode(), SPRING_JSON, {"WWW-Authenticate": challenge})


def spring_token(headers: Mapping[str, str], params: Mapping[str, list[str]]) -> str | None:
    """The token a Spring-era request carries (``Authorization: Bearer`` or ``?access_token=``)."""
    value = headers.get("Authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    values = params.get("access_token")
    return values[0] if values else None


def spring_caller(tokens: TokenStore, token: str | None) -> Caller | Reply:
    """The Spring filter's verdict on ``token``."""
    if token is None:
        return spring_refusal("unauthorized", "Full authentication is required to access this resource")
    state = tokens.check(token)
    if state.state == "valid":
        return Caller(state.user)
    if state.state == "expired":
        return spring_refusal("invalid_token", f"Access token expired: {token}")
    return spring_refusal("invalid_token", f"Invalid access token: {token}")


def _keycloak_failure(guard: str, missing: bool) -> Reply:
    """What a Keycloak-era endpoint answers a missing (``missing``) or invalid/expired token."""
    if guard in ("list", "v4list"):
        return empty()
    if guard == "meta204":
        return Reply(204)
    if guard == "v4json":
        return jackson([])
    if guard in ("advtags", "v4tags"):
        return text(500, PROCESS_ERROR, JSON)
    if missing:  # strict: the user lookup dereferences the absent header
        return null_500()
    return Reply(401)


def identify(
    era: str, guard: str, tokens: TokenStore, headers: Mapping[str, str], params: Mapping[str, list[str]]
) -> Caller | Reply:
    """The caller of a request to an endpoint with ``guard``, or the refusal to answer with."""
    if guard in ("public", "apikey"):
        return ANONYMOUS
    v4 = guard.startswith("v4")
    if era == "spring" and not v4:
        return spring_caller(tokens, spring_token(headers, params))
    value = headers.get("Authorization")
    if value is None:
        return GUEST if v4 else _keycloak_failure(guard, missing=True)
    if value.strip().lower() == "bearer undefined":
        return GUEST
    state = tokens.check(value[7:].strip())
    if state.state == "valid":
        return Caller(state.user)
    return _keycloak_failure(guard, missing=False)
