"""``nbiafs serve``: run the bundled NBIA-compatible archive server until Ctrl-C or SIGTERM.

Passwords never come from the command line: ``--user NAME`` takes its password from ``--password-file FILE``
(lines ``NAME:PASSWORD``) or, failing that, from the environment variable ``NBIA_SERVE_PASSWORD``. Every
``--user`` may see the restricted collection. v3 API keys come from ``NBIA_SERVE_API_KEYS`` (comma-separated).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from nbiafs.cli.logs import add_logging_options
from nbiafs.errors import ConfigError
from nbiafs.server import RESTRICTED_COLLECTION, ArchiveServer, ServerConfig, ServerConfigError

PASSWORD_ENV = "NBIA_SERVE_PASSWORD"
API_KEYS_ENV = "NBIA_SERVE_API_KEYS"


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the bundled NBIA-compatible archive server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0 = any free port; default 8080)")
    p.add_argument("--port-file", metavar="FILE", help="write the bound port to FILE once listening")
    p.add_argument("--data", metavar="DIR", help="serve a folder of real DICOM, not the synthetic archive")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive and of fault rolls")
    p.add_argument("--latency", type=float, default=0.0, metavar="S", help="seconds added to every request")
    p.add_argument("--stall", type=float, default=0.0, metavar="S", help="seconds every request stalls")
    p.add_argument("--bandwidth", type=float, metavar="BYTES_PER_S", help="per-connection body rate limit")
    p.add_argument("--error-rate-503", type=float, default=0.0, metavar="F", help="fraction answered 503")
    p.add_argument("--error-rate-429", type=float, default=0.0, metavar="F", help="fraction answered 429")
    p.add_argument("--cut-rate", type=float, default=0.0, metavar="F", help="fraction of downloads cut")
    p.add_argument("--token-lifetime", type=float, default=7200.0, metavar="S", help="access token lifetime")
    p.add_argument("--refresh-lifetime", type=float, default=7200.0, metavar="S", help="refresh lifetime")
    p.add_argument(
        "--auth-era",
        choices=("keycloak", "spring"),
        default="keycloak",
        help="how authentication failures are answered: production's current Keycloak era (default; a dead "
        "token gets 200 and no rows on list endpoints) or the older Spring era (401)",
    )
    p.add_argument(
        "--series-size-form",
        choices=("string", "integer", "float"),
        default="string",
        help='getSeriesSize TotalSizeInBytes as recorded live ("104504.0", the default) or as a number',
    )
    p.add_argument("--request-log", metavar="FILE", help="append one line per request to FILE")
    p.add_argument("--user", action="append", default=[], metavar="NAME", help="an account (repeatable)")
    p.add_argument("--password-file", metavar="FILE", help="NAME:PASSWORD lines for the --user accounts")
    add_logging_options(p)
    p.set_defaults(func=run)


def _passwords(users: list[str], password_file: str | None) -> dict[str, str]:
    """The password of every user (file first, then the environment); raises ConfigError."""
    from_file: dict[str, str] = {}
    if password_file:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read password file {password_file}: {exc.strerror}") from exc
        for line in text.splitlines():
            name, sep, password = line.partition(":")
            if sep and name.strip():
                from_file[name.strip()] = password.rstrip("\r\n")
    env = os.environ.get(PASSWORD_ENV)
    result: dict[str, str] = {}
    for user in users:
        if user in from_file:
            result[user] = from_file[user]
        elif env is not None:
            result[user] = env
        else:
            raise ConfigError(f"no password for user {user}: use --password-file or {PASSWORD_ENV}")
    return result


def build_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the parsed arguments describe; raises ConfigError."""
    users = _passwords(args.user, args.password_file)
    keys = {k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()}
    for name in ("latency", "stall", "error_rate_503", "error_rate_429", "cut_rate"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    return ServerConfig(
        users=users,
        restricted={RESTRICTED_COLLECTION: set(users)},
        api_keys=keys,
        token_lifetime=args.token_lifetime,
        refresh_lifetime=args.refresh_lifetime,
        latency=args.latency,
        stall=args.stall,
        bandwidth=args.bandwidth,
        error_rate_503=args.error_rate_503,
        error_rate_429=args.error_rate_429,
        cut_rate=args.cut_rate,
        request_log=args.request_log,
        data_dir=args.data,
        seed=args.seed,
        auth_era=args.auth_era,
        series_size_form=args.series_size_form,
    )


def _write_port_file(path: str, port: int) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="ascii")
    tmp.replace(target)  # atomic: a reader never sees a half-written port


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status."""
    config = build_config(args)
    try:
        server = ArchiveServer(config, host=args.host, port=args.port)
    except ServerConfigError as exc:
        raise ConfigError(str(exc)) from None
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
    except (ServerConfigError, OSError) as exc:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {exc}") from None
    try:
        if args.port_file:
            _write_port_file(args.port_file, server.port)
        print(f"nbiafs archive server listening on {server.url}", flush=True)
        if config.api_keys:
            print(f"v3 API: {server.url}/services/v3/TCIA/query/", flush=True)
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("nbiafs archive server stopped", file=sys.stderr, flush=True)
    return 0
