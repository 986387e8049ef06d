"""The exit statuses of ``nbiafs`` (documented in ``nbiafs mount --help`` and contrib/README.md).

``RestartPreventExitStatus=3`` in the systemd unit keeps systemd from restarting a mount whose settings or
credentials are wrong: trying again cannot help until a person changes them.
"""

from __future__ import annotations

from nbiafs.errors import AuthenticationError, ConfigError, NbiaError

OK = 0
"""Success; for a mount: a clean stop (unmounted, or SIGTERM/SIGINT/SIGHUP)."""
FAILURE = 1
"""The mount failed (mountpoint, libfuse, kernel) or a runtime error (server unreachable, ...)."""
USAGE = 2
"""Bad command line (argparse)."""
CONFIG = 3
"""Configuration or credentials: an unknown collection or profile, a bad option value, refused credentials,
an unusable cache directory, libfuse missing."""

EPILOG = """\
exit status:
  0  success; for a mount, a clean stop (unmounted, or SIGTERM, SIGINT, SIGHUP)
  1  the mount failed (mountpoint, /dev/fuse, libfuse, kernel) or a runtime error
  2  usage error (unknown option, missing argument)
  3  configuration or credential error (bad setting, unknown collection, refused login, libfuse missing):
     trying again will not help until it is changed"""


def status_of(exc: NbiaError) -> int:
    """The exit status for an error that ended a command."""
    if isinstance(exc, (ConfigError, AuthenticationError)):
        return CONFIG
    return FAILURE


class StopRequested(BaseException):
    """SIGTERM, SIGINT or SIGHUP before a mount serves (while serving, the FUSE layer catches them): a clean
    stop, exit status 0. A BaseException, so that no ``except Exception`` takes it for a failure."""


def stop_on_signals() -> None:
    """Make SIGTERM, SIGINT and SIGHUP raise :class:`StopRequested` (main thread only)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise StopRequested(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
