"""The archive server's own exceptions (it imports nothing from the rest of nbiafs)."""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the archive server raises on purpose."""


class ServerConfigError(ServerError):
    """The server cannot start: an unusable data directory, a taken address or a bad knob."""


class UnknownObjectError(ServerError, KeyError):
    """An archive lookup by UID found nothing."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown object"
