"""Command-line options shared by every subcommand that talks to an NBIA server (``query``, ``mount``, ...).

Credentials never come from the command line: ``--user`` names the account, the password comes from
``--credentials-file``, ``NBIA_PASSWORD`` or a prompt (see :mod:`nbiafs.api.credentials`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import ENV_API_KEY, Credentials, load_credentials
from nbiafs.api.profiles import PROFILE_NAMES, ServerProfile, resolve_profile
from nbiafs.settings import ClientSettings

log = logging.getLogger(__name__)


def positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    """An argparse ``type`` accepting a positive number of ``kind`` (float or int)."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--server``, ``--api-url``, ``--token-url``, ``--user``, ``--credentials-file``, ``--timeout``,
    ``--retries`` (in an argument group "server")."""
    defaults = ClientSettings()
    group = parser.add_argument_group("server")
    group.add_argument(
        "--server",
        choices=PROFILE_NAMES,
        default=None,
        help="server profile (default: tcia; with --api-url, the URL layout used on a bare host URL)",
    )
    group.add_argument(
        "--api-url",
        metavar="URL",
        help="API base URL, e.g. http://127.0.0.1:8080/nbia-api/services/v2 (version read from the path), "
        "or a bare http://HOST:PORT with the --server profile's layout",
    )
    group.add_argument(
        "--token-url", metavar="URL", help="OAuth token URL (default: derived from the API URL)"
    )
    group.add_argument(
        "--user",
        metavar="NAME",
        help="account name (password from --credentials-file, NBIA_PASSWORD or a prompt; default: guest)",
    )
    group.add_argument(
        "--credentials-file",
        metavar="FILE",
        help="Data Retriever credentials file with userName= and passWord= lines (keep it chmod 600)",
    )
    group.add_argument(
        "--timeout",
        type=positive(float),
        default=defaults.timeout,
        metavar="S",
        help="seconds to wait for a connection and for each read (default: %(default)s)",
    )
    group.add_argument(
        "--retries",
        type=int,
        default=defaults.retries,
        metavar="N",
        help="retries of a failed request (429/5xx, connection errors, cut bodies; default: %(default)s)",
    )


def credentials_from_args(
    args: argparse.Namespace, profile: ServerProfile, *, interactive: bool = True
) -> Credentials | None:
    """The credentials the profile's kind of authentication needs (None: guest / anonymous).

    OAuth profiles: :func:`~nbiafs.api.credentials.load_credentials`. API-key (v3) profiles: ``NBIA_API_KEY``.
    Anonymous profiles: none (``--user`` is ignored with a warning). Raises ConfigError.
    """
    user = getattr(args, "user", None)
    credentials_file = getattr(args, "credentials_file", None)
    if profile.auth == "oauth":
        return load_credentials(user=user, credentials_file=credentials_file, interactive=interactive)
    if user or credentials_file:
        log.warning(
            "the %s API takes no user name or password: --user/--credentials-file ignored", profile.flavour
        )
    api_key = os.environ.get(ENV_API_KEY)
    if profile.auth == "api_key" and api_key:
        return Credentials("", "", api_key)
    return None


def profile_from_args(args: argparse.Namespace) -> ServerProfile:
    """The server profile named by ``--server`` / ``--api-url`` / ``--token-url``; raises ConfigError."""
    return resolve_profile(
        getattr(args, "server", None), getattr(args, "api_url", None), getattr(args, "token_url", None)
    )


def client_settings_from_args(args: argparse.Namespace) -> ClientSettings:
    """The client settings of ``--timeout`` and ``--retries``; raises ConfigError for bad values."""
    return ClientSettings(timeout=args.timeout, retries=args.retries)


def client_from_args(args: argparse.Namespace, *, interactive: bool = True) -> NbiaClient:
    """An :class:`NbiaClient` for the options added by :func:`add_server_options`.

    Raises ConfigError for a bad profile/URL combination or missing credentials.
    """
    profile = profile_from_args(args)
    credentials = credentials_from_args(args, profile, interactive=interactive)
    return NbiaClient(profile, credentials, client_settings_from_args(args))
