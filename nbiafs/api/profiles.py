"""Server profiles: where an NBIA server lives, which API flavour it speaks and how it authenticates.

Named profiles: ``tcia`` (v2, OAuth, guest ``nbia_guest``), ``nlst`` (v2 on the NLST host), ``tcia-v4``
(anonymous v4; getContentsByName on v1) and ``legacy-v3`` (the old TCIA v3 API with an ``api_key``). Any other
server is described by its API URL (the flavour is read from the URL's path) and optionally its token URL.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from nbiafs.errors import ConfigError

log = logging.getLogger(__name__)

FLAVOURS = ("v1", "v2", "v3", "v4")
AUTH_KINDS = ("oauth", "api_key", "none")
GUEST_USER = "nbia_guest"

TCIA_HOST = "https://services.cancerimagingarchive.net"
NLST_HOST = "https://nlst.cancerimagingarchive.net"


@dataclass(frozen=True)
class ServerProfile:
    """One NBIA server.

    ``api_url`` is the base the endpoint names are appended to (no trailing slash), e.g.
    ``https://services.cancerimagingarchive.net/nbia-api/services/v2``. ``token_url`` and ``logout_url`` are
    set for ``auth == "oauth"``. ``contents_by_name_url`` is the full URL of the shared-cart endpoint, which
    does not always live next to the others (v1 for the v4 profile, ``/SharedList/`` for v3).
    """

    name: str
    api_url: str
    flavour: str = "v2"
    auth: str = "oauth"
    token_url: str | None = None
    logout_url: str | None = None
    contents_by_name_url: str | None = None
    guest_user: str | None = GUEST_USER

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"unknown API flavour {self.flavour!r} (one of {', '.join(FLAVOURS)})")
        if self.auth not in AUTH_KINDS:
            raise ConfigError(f"unknown authentication {self.auth!r} (one of {', '.join(AUTH_KINDS)})")
        if self.auth == "oauth" and not self.token_url:
            raise ConfigError(f"profile {self.name!r} uses OAuth but has no token URL")

    def endpoint_url(self, endpoint: str) -> str:
        """The full URL of ``endpoint`` (an endpoint name such as ``getSeries``)."""
        return f"{self.api_url}/{endpoint.lstrip('/')}"


def _named(name: str, host: str) -> ServerProfile:
    """A named profile on ``host`` (``scheme://host[:port]``, no trailing slash)."""
    nbia = f"{host}/nbia-api"
    if name in ("tcia", "nlst"):
        return ServerProfile(
            name=name,
            api_url=f"{nbia}/services/v2",
            flavour="v2",
            auth="oauth",
            token_url=f"{nbia}/oauth/token",
            logout_url=f"{nbia}/logout",
            contents_by_name_url=f"{nbia}/services/v2/getContentsByName",
        )
    if name == "tcia-v4":
        return ServerProfile(
            name=name,
            api_url=f"{nbia}/services/v4",
            flavour="v4",
            auth="none",
            contents_by_name_url=f"{nbia}/services/v1/getContentsByName",
            guest_user=None,
        )
    if name == "legacy-v3":
        return ServerProfile(
            name=name,
            api_url=f"{host}/services/v3/TCIA/query",
            flavour="v3",
            auth="api_key",
            contents_by_name_url=f"{host}/services/v3/SharedList/query/ContentsByName",
            guest_user=None,
        )
    raise ConfigError(f"unknown server profile {name!r} (one of {', '.join(PROFILE_NAMES)})")


PROFILE_NAMES = ("tcia", "nlst", "tcia-v4", "legacy-v3")
_DEFAULT_HOSTS = {"tcia": TCIA_HOST, "nlst": NLST_HOST, "tcia-v4": TCIA_HOST, "legacy-v3": TCIA_HOST}
_AUTH_OF = {"v1": "none", "v2": "oauth", "v3": "api_key", "v4": "none"}

# NBIA paths: .../nbia-api/services/v2[/], .../services/v3/TCIA/query[/], or any path with a /vN segment.
_NBIA_PATH = re.compile(r"^(?P<prefix>.*?)/services/(?P<flavour>v[1-4])(?:/|$)")
_ANY_VERSION = re.compile(r"/(?P<flavour>v[1-4])(?:/|$)")


def infer_flavour(api_url: str) -> str | None:
    """The API flavour named in ``api_url``'s path (``v1``..``v4``), or None if the path names none."""
    path = urlsplit(api_url).path
    match = _NBIA_PATH.search(path) or _ANY_VERSION.search(path)
    return match.group("flavour") if match else None


def _custom(name: str | None, api_url: str, token_url: str | None) -> ServerProfile:
    parts = urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"API URL must be an http(s) URL: {api_url!r}")
    path = parts.path.rstrip("/")
    if not path:
        # A bare server root: lay the named profile's paths (default tcia) out on this host.
        profile = _named(name or "tcia", urlunsplit((parts.scheme, parts.netloc, "", "", "")))
        return replace(profile, token_url=token_url or profile.token_url)
    flavour = infer_flavour(api_url)
    if flavour is None:
        if name is None:
            raise ConfigError(f"cannot tell the API version from {api_url!r}: give --server too")
        flavour = _named(name, TCIA_HOST).flavour
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    auth = "oauth" if token_url and flavour != "v3" else _AUTH_OF[flavour]
    # Everything in front of /services/vN is the NBIA root (``.../nbia-api``; the server root for v3).
    match = _NBIA_PATH.search(path)
    root = urlunsplit((parts.scheme, parts.netloc, match.group("prefix"), "", "")) if match else None
    cart = f"{base}/getContentsByName"
    if root and flavour == "v3":
        cart = f"{root}/services/v3/SharedList/query/ContentsByName"
    elif root and flavour == "v4":
        cart = f"{root}/services/v1/getContentsByName"
    logout = None
    if auth == "oauth":
        if not token_url:
            if root is None:
                raise ConfigError(f"cannot derive a token URL from {api_url!r}: give --token-url")
            token_url = f"{root}/oauth/token"
        logout = token_url.rsplit("/oauth/", 1)[0] + "/logout" if "/oauth/" in token_url else None
    return ServerProfile(
        name=name or "custom",
        api_url=base,
        flavour=flavour,
        auth=auth,
        guest_user=GUEST_USER if auth == "oauth" else None,
        token_url=token_url if auth == "oauth" else None,
        logout_url=logout,
        contents_by_name_url=cart,
    )


def resolve_profile(
    name: str | None = None, api_url: str | None = None, token_url: str | None = None
) -> ServerProfile:
    """The profile for a ``--server`` name and/or ``--api-url`` / ``--token-url`` (default: ``tcia``).

    ``api_url`` may be a full API base (``.../nbia-api/services/v2``, ``.../services/v3/TCIA/query``; the
    flavour is read from the path) or a bare server root (``http://127.0.0.1:8080``), on which the named
    profile's URL layout is used. Raises ConfigError for an unknown name or a URL whose flavour cannot be
    told.
    """
    if name is not None and name not in PROFILE_NAMES:
        raise ConfigError(f"unknown server profile {name!r} (one of {', '.join(PROFILE_NAMES)})")
    if api_url:
        profile = _custom(name, api_url, token_url)
    else:
        profile = _named(name or "tcia", _DEFAULT_HOSTS[name or "tcia"])
        if token_url:
            if profile.auth != "oauth":
                raise ConfigError(f"profile {profile.name!r} does not use a token URL")
            profile = replace(profile, token_url=token_url)
    log.debug("profile %s: %s (%s, auth %s)", profile.name, profile.api_url, profile.flavour, profile.auth)
    return profile
