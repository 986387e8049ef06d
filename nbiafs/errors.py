"""The typed error hierarchy shared by every layer.

Only :mod:`nbiafs.fuse.adapter` turns these into errno values (see ``docs/semantics.md``)::

    NbiaError
    ├── ConfigError              bad profile, option, manifest or credentials file
    ├── AuthenticationError      the token endpoint refused the credentials (or refresh and re-login failed)
    ├── RequestError             the server answered 4xx; ``status`` and the server's own ``message``
    │   ├── BadRequestError      400 for a missing/unknown parameter
    │   ├── AccessDeniedError    401/403 after a refresh, or 400 "not been granted access"
    │   └── NotFoundError        the thing named does not exist (empty answer where one row was needed)
    ├── ServerError              5xx, or 429, still failing after every retry
    ├── NetworkError             connection refused/reset or cut mid-body, after every retry
    │   └── RequestTimeoutError  no answer (or no progress in a body) within the timeout
    └── ResponseFormatError      an answer that is not what was expected (a ZIP where JSON was expected, ...)
"""

from __future__ import annotations


class NbiaError(Exception):
    """Base of every error nbiafs raises on purpose."""


class ConfigError(NbiaError):
    """A bad option, profile, manifest or credentials file: the user must fix something."""


class AuthenticationError(NbiaError):
    """The token endpoint refused the credentials, or no valid token could be obtained."""


class RequestError(NbiaError):
    """The server answered with a 4xx status.

    ``status`` is the HTTP status, ``message`` the server's own text (plain text on NBIA), ``url`` the
    request URL with any ``api_key`` removed.
    """

    def __init__(self, message: str, *, status: int = 0, url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        code = f"HTTP {self.status}: " if self.status else ""
        return f"{code}{self.message}{where}"


class BadRequestError(RequestError):
    """HTTP 400 for a missing, malformed or (on v4) unknown parameter."""


class AccessDeniedError(RequestError):
    """The user may not see this data: a 401/403 a token refresh did not cure, or NBIA's 400 "not granted"."""


class NotFoundError(RequestError):
    """The named collection, patient, study, series or instance does not exist (or is invisible)."""


class ServerError(NbiaError):
    """The server kept failing (5xx or 429) after every retry. ``status`` is the last status seen."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NetworkError(NbiaError):
    """The connection failed (refused, reset, cut mid-body) after every retry."""


class RequestTimeoutError(NetworkError):
    """No answer, or no progress in a body, within the configured timeout (seconds)."""


class ResponseFormatError(NbiaError):
    """The answer is not what the endpoint promises (a ZIP or HTML where JSON was expected, bad JSON)."""
