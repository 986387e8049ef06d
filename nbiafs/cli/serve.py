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
import time
from pathlib import Path
from types import FrameType
from typing import Any

from nbiafs.cli.logs import add_logging_options
from nbiafs.errors import ConfigError
from nbiafs.server import RESTRICTED_COLLECTION, ArchiveServer, ServerConfig, ServerConfigError
from nbiafs.server.config import FAULT_GROUPS, FAULTS, TRUNCATE_STYLES
from nbiafs.settings import parse_size

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
    p.add_argument(
        "--rescan",
        type=float,
        default=0.0,
        metavar="S",
        help="with --data: look for series added to the folder every S seconds and publish them, released "
        "when they appeared (default 0: never)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive and of fault rolls")
    p.add_argument("--latency", type=float, default=0.0, metavar="S", help="seconds added to every request")
    p.add_argument("--stall", type=float, default=0.0, metavar="S", help="seconds every request stalls")
    p.add_argument("--bandwidth", type=float, metavar="BYTES_PER_S", help="per-connection body rate limit")
    p.add_argument("--error-rate-503", type=float, default=0.0, metavar="F", help="fraction answered 503")
    p.add_argument("--error-rate-429", type=float, default=0.0, metavar="F", help="fraction answered 429")
    p.add_argument("--cut-rate", type=float, default=0.0, metavar="F", help="fraction of downloads cut")
    faults = p.add_argument_group(
        "hostile faults",
        "each hits a seeded fraction F of the requests in its scope (--fault-scope). By default trickle,\n"
        "truncate, corrupt, wrong-sop and html hit image downloads (getSingleImage and the series ZIPs), drop\n"
        "hits every API request, huge-json the metadata endpoints. The server stopped: end it (Ctrl-C).",
    )
    faults.add_argument(
        "--trickle-rate", type=float, default=0.0, metavar="F", help="fraction of bodies trickled"
    )
    faults.add_argument(
        "--trickle-bytes", type=int, default=1, metavar="N", help="bytes per trickle (default 1)"
    )
    faults.add_argument(
        "--trickle-interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between trickles (default 2)",
    )
    faults.add_argument(
        "--drop-rate", type=float, default=0.0, metavar="F", help="fraction of requests closed unanswered"
    )
    faults.add_argument(
        "--truncate-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction sent cut short, no Content-Length",
    )
    faults.add_argument(
        "--truncate-style",
        choices=TRUNCATE_STYLES,
        default="close",
        help="how a truncated body ends: a clean close (default), a dropped chunked body, a short chunked body",
    )
    faults.add_argument(
        "--corrupt-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of instances with altered bytes",
    )
    faults.add_argument(
        "--wrong-sop-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction answered with another instance",
    )
    faults.add_argument(
        "--html-rate", type=float, default=0.0, metavar="F", help="fraction answered 200 HTML"
    )
    faults.add_argument(
        "--huge-json-rate", type=float, default=0.0, metavar="F", help="fraction of JSON lists blown up"
    )
    faults.add_argument(
        "--huge-json-bytes",
        default="100M",
        metavar="SIZE",
        help="size of a blown-up JSON answer (default 100M)",
    )
    faults.add_argument(
        "--blackhole", action="store_true", help="accept no connection and answer nothing (dropped SYNs)"
    )
    faults.add_argument(
        "--fault-scope",
        action="append",
        default=[],
        metavar="FAULT=WHERE[,WHERE...]",
        help=f"limit a fault ({', '.join(FAULTS)}) to endpoint names or groups ({', '.join(FAULT_GROUPS)}); "
        "repeatable",
    )
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
    rates = [f"{fault}_rate" for fault in FAULTS]
    for name in (
        "latency",
        "stall",
        "error_rate_503",
        "error_rate_429",
        "cut_rate",
        "trickle_interval",
        *rates,
    ):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    if args.trickle_bytes < 1:
        raise ConfigError("--trickle-bytes must be at least 1")
    scope = _fault_scope(args.fault_scope)
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
        trickle_rate=args.trickle_rate,
        trickle_bytes=args.trickle_bytes,
        trickle_interval=args.trickle_interval,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        truncate_style=args.truncate_style,
        corrupt_rate=args.corrupt_rate,
        wrong_sop_rate=args.wrong_sop_rate,
        html_rate=args.html_rate,
        huge_json_rate=args.huge_json_rate,
        huge_json_bytes=parse_size(args.huge_json_bytes),
        blackhole=args.blackhole,
        fault_scope=scope,
        request_log=args.request_log,
        data_dir=args.data,
        seed=args.seed,
        auth_era=args.auth_era,
        series_size_form=args.series_size_form,
    )


def _fault_scope(specs: list[str]) -> dict[str, tuple[str, ...]]:
    """``--fault-scope FAULT=WHERE,...`` values as ``ServerConfig.fault_scope``; raises ConfigError."""
    scope: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        fault, sep, where = spec.partition("=")
        fault = fault.strip().replace("-", "_")
        names = tuple(n.strip() for n in where.split(",") if n.strip())
        if not sep or fault not in FAULTS or not names:
            raise ConfigError(
                f"--fault-scope {spec!r}: expected FAULT=WHERE[,WHERE...] with FAULT one of {', '.join(FAULTS)}"
            )
        scope[fault] = names
    return scope


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
        next_scan = time.monotonic() + args.rescan
        while not done.wait(1.0):
            if args.rescan > 0 and args.data and time.monotonic() >= next_scan:
                try:
                    server.rescan()
                except ServerConfigError as exc:
                    print(f"nbiafs serve: cannot rescan {args.data}: {exc}", file=sys.stderr, flush=True)
                next_scan = time.monotonic() + args.rescan
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("nbiafs archive server stopped", file=sys.stderr, flush=True)
    return 0
