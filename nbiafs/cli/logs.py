"""Logging for the command line: the ``-v`` / ``--log-file`` options and the process's one handler.

Library modules only create loggers (``logging.getLogger(__name__)``); this is the only module that installs a
handler.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from nbiafs.errors import ConfigError


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``-v`` (repeatable) and ``--log-file``, for subcommands that want them."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-file", metavar="FILE", help="write the log to FILE instead of standard error")


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
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
