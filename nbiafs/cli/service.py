"""systemd's readiness protocol (``sd_notify``) for ``Type=notify`` units, written by hand.

Why not a library: the protocol is one datagram to the socket named by ``NOTIFY_SOCKET`` (a leading ``@`` is
Linux's abstract namespace); the one small package for it on PyPI (sdnotify) is unmaintained, and systemd's own
Python binding needs libsystemd's headers to build. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op; errors are ignored, since a mount must never fail for want of telling systemd about it.
"""

from __future__ import annotations

import contextlib
import os
import socket

ENV = "NOTIFY_SOCKET"

_address: str | bytes | None = None
_taken = False


def _socket_address() -> str | bytes | None:
    """The socket address from the environment, read once and then removed from it (so that no child process
    of ours speaks for us)."""
    global _address, _taken
    if not _taken:
        _taken = True
        value = os.environ.pop(ENV, None)
        if value and value.startswith("@"):
            _address = b"\0" + value[1:].encode()
        elif value and value.startswith("/"):
            _address = value
    return _address


def notify(*fields: str) -> bool:
    """Send ``fields`` (``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``MAINPID=N``) to systemd; True if sent."""
    address = _socket_address()
    if address is None:
        return False
    message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message)
        return True
    return False


def take_socket() -> None:
    """Read (and unset) ``NOTIFY_SOCKET`` now: call before starting anything that might inherit it."""
    _socket_address()


def ready(mountpoint: str, pid: int | None = None) -> bool:
    """Tell systemd the mount answers; ``pid``: the process that serves it, when it is not the one started."""
    fields = ["READY=1", f"STATUS=mounted at {mountpoint}"]
    if pid is not None:
        fields.append(f"MAINPID={pid}")
    return notify(*fields)


def stopping() -> bool:
    """Tell systemd the mount is stopping."""
    return notify("STOPPING=1", "STATUS=unmounting")
