"""Logging for the command line: the ``-v`` / ``--log-file`` options and the process's one handler.

Library modules only create loggers (``logging.getLogger(__name__)``); this is the only module that installs a
handler. Where the log goes: ``--log-file`` if given; else standard error, which under systemd is the journal
(detected by ``JOURNAL_STREAM``: the lines then carry their syslog priority, ``<3>`` ... ``<7>``, and no time,
which the journal adds); a background mount switches to syslog (``/dev/log``, the journal on systemd machines)
once it leaves the terminal (:func:`use_syslog`).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys

from nbiafs.errors import ConfigError

SYSLOG_SOCKET = "/dev/log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Python's levels as syslog priorities (sd-daemon(3): a ``<N>`` prefix on a line sent to the journal).
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``-v`` (repeatable) and ``--log-file``, for subcommands that want them."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        help="write the log to FILE (default: standard error; for a background mount, syslog/the journal "
        f"through {SYSLOG_SOCKET}, or nowhere if that does not exist)",
    )


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (between two levels: the more severe one)."""
    for level in sorted(PRIORITIES):
        if levelno <= level:
            return PRIORITIES[level]
    return 2


class JournalFormatter(logging.Formatter):
    """``<priority>name: message``, each line of a multi-line message with its own prefix."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal() -> bool:
    """Whether standard error is systemd's journal stream (``JOURNAL_STREAM=device:inode`` matches fd 2)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(2)
        return bool(ino) and (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return False


def _quiet_libraries(verbose: int) -> None:
    """urllib3 logs a warning per retry ("Retrying (...)"): nbiafs says once what failed, unless -vv."""
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def setup_logging(verbose: int = 0, log_file: str | None = None) -> None:
    """Install the one logging handler of the process (credentials are never logged by any module).

    A log file is created private (0600). Raises ConfigError if it cannot be written.
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler: logging.Handler
    if log_file:
        # Private from the start: log lines name paths, and so collections and patients, of restricted data.
        try:
            os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the log file {log_file}: {exc.strerror}") from None
        handler.setFormatter(logging.Formatter(FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter() if stderr_is_journal() else logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _quiet_libraries(verbose)


def use_syslog(ident: str = "nbiafs") -> bool:
    """Send the log to syslog (the journal) instead of standard error, unless it goes to a file; for a process
    that leaves its terminal. False (the log then goes wherever standard error goes) if there is no syslog."""
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) for h in root.handlers):
        return True
    if not os.path.exists(SYSLOG_SOCKET):
        return False
    try:
        handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
    except OSError:
        return False
    handler.ident = f"{ident}[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    return True
