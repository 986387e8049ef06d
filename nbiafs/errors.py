"""One error tree, by meaning, shared by the client, the filesystem layer and the command line.

Each class says what went wrong for the user, not where it was noticed, and carries the errno a filesystem
operation answers with (``errno``); only :mod:`nbiafs.fuse` turns them into errno values::

    NbiaError                    EIO     base of every error nbiafs raises on purpose
    ├── ConfigError              EINVAL  a bad option, profile, manifest, credentials file or cache directory
    │   └── FuseUnavailableError EINVAL  no usable libfuse on this machine
    ├── MountError               EIO     the mount itself failed (mountpoint, /dev/fuse, libfuse, the kernel)
    ├── NotFoundError            ENOENT  the collection, patient, study, series, instance or path does not exist
    ├── AccessDeniedError        EACCES  this account may not see or download it
    │   └── AuthenticationError  EACCES  the credentials were refused (or no valid token could be had)
    ├── UnavailableError         EIO     the server could not be reached, or the connection broke mid-answer
    │   └── RequestTimeoutError  EIO     no answer, or no progress in a body, within the deadline
    ├── ServerError              EIO     the server answered with a failure (5xx, 429) after every retry
    ├── BadRequestError          EIO     the server rejected the request's parameters (HTTP 400)
    ├── BadResponseError         EIO     an answer that is not what the endpoint promises
    └── CacheError               EIO     the local cache could not be read or written
        └── NoSpaceError         ENOSPC  no room left in the cache's file system, even after eviction

``status`` is the HTTP status the error came from (0 when none), ``url`` the request URL (never with a
credential in it).
"""

from __future__ import annotations

import errno as _errno


class NbiaError(Exception):
    """Base of every error nbiafs raises on purpose; ``errno`` is what a filesystem operation answers."""

    errno: int = _errno.EIO

    def __init__(self, message: str, *, status: int = 0, url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url

    def __str__(self) -> str:
        code = f"HTTP {self.status}: " if self.status and not self.message.startswith("HTTP ") else ""
        where = f" ({self.url})" if self.url else ""
        return f"{code}{self.message}{where}"


class ConfigError(NbiaError):
    """A bad option, profile, manifest, credentials file or cache directory: the user must fix something."""

    errno = _errno.EINVAL


class FuseUnavailableError(ConfigError):
    """No usable libfuse on this machine: the message names the package to install."""


class MountError(NbiaError):
    """The mount itself failed or cannot be undone (mountpoint unusable, /dev/fuse, libfuse or the kernel
    refused); trying again later may work, unlike a ConfigError."""


class NotFoundError(NbiaError):
    """The named collection, patient, study, series, instance or path does not exist (or is invisible)."""

    errno = _errno.ENOENT


class AccessDeniedError(NbiaError):
    """This account may not see or download the data (a refused image, a 401/403 a refresh did not cure)."""

    errno = _errno.EACCES


class AuthenticationError(AccessDeniedError):
    """The token endpoint refused the credentials, or no valid token could be obtained."""


class UnavailableError(NbiaError):
    """The server could not be reached (refused, reset, name resolution) or cut an answer short, after every
    retry. ``reached`` is True when the server did answer and only its body broke off or stalled (the server
    is up: no reason to consider it unreachable)."""

    def __init__(self, message: str, *, status: int = 0, url: str = "", reached: bool = False) -> None:
        super().__init__(message, status=status, url=url)
        self.reached = reached


class RequestTimeoutError(UnavailableError):
    """No answer, or no progress in a body, within the configured deadline (seconds)."""


class ServerError(NbiaError):
    """The server kept answering with a failure (5xx or 429) after every retry; ``status`` is the last one."""


class BadRequestError(NbiaError):
    """The server rejected the request's parameters (HTTP 400 for a missing, malformed or unknown one)."""


class BadResponseError(NbiaError):
    """The answer is not what the endpoint promises (a ZIP or HTML where JSON was expected, bad JSON, a body
    that is not the DICOM instance asked for)."""


class CacheError(NbiaError):
    """The local cache directory could not be read or written."""


class NoSpaceError(CacheError):
    """The cache's file system is full and nothing more could be evicted."""

    errno = _errno.ENOSPC
