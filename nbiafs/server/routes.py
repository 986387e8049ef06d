"""Request paths to what answers them (URL layout of the live servers, facts §1).

``/nbia-api/services/v1|v2|v4/<Endpoint>``, ``/nbia-api/services/<Endpoint>`` (the unversioned advanced
API), ``/nbia-api/oauth/token`` and ``/nbia-api/services/oauth/token``, ``/nbia-api/logout``; the
``/services`` segment may be left out. The retired v3 API: ``/services/v3/TCIA/query/<Endpoint>[/metadata]``
and ``/services/v3/SharedList/query/ContentsByName[/metadata]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nbiafs.server.endpoints import SHARED_LIST, Endpoint, lookup


@dataclass(frozen=True)
class Route:
    """What a path names: ``token``, ``logout``, an ``api`` endpoint, or v3 ``metadata`` of an endpoint."""

    kind: str
    name: str
    endpoint: Endpoint | None = None


def resolve(path: str) -> Route | None:
    """The route of ``path`` (no query string), or None for an unknown path (404)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["nbia-api"]:
        rest = parts[1:]
        if rest[:1] == ["services"]:
            rest = rest[1:]
        if rest == ["oauth", "token"]:
            return Route("token", "oauth/token")
        if rest == ["logout"]:
            return Route("logout", "logout")
        if len(rest) == 2 and rest[0] in ("v1", "v2", "v4"):
            endpoint = lookup(rest[0], rest[1])
            return Route("api", rest[1], endpoint) if endpoint else None
        if len(rest) == 1:
            endpoint = lookup("adv", rest[0])
            return Route("api", rest[0], endpoint) if endpoint else None
        return None
    if parts[:2] == ["services", "v3"] and len(parts) in (5, 6) and parts[3] == "query":
        if parts[2] == "TCIA":
            endpoint = lookup("v3", parts[4])
        elif parts[2] == "SharedList" and parts[4] == SHARED_LIST.url_name:
            endpoint = SHARED_LIST
        else:
            endpoint = None
        if endpoint is None or (len(parts) == 6 and parts[5] != "metadata"):
            return None
        return Route("metadata" if len(parts) == 6 else "api", parts[4], endpoint)
    return None
