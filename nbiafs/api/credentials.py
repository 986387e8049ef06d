"""Where a user name, password and (v3) API key come from; never from argv, never into logs.

Sources, first match wins: a Data Retriever credentials file (``userName=...`` / ``passWord=...`` lines), the
environment (``NBIA_USER`` / ``NBIA_PASSWORD``), an interactive prompt (only when stdin is a terminal). The v3
API key comes from ``NBIA_API_KEY``. With nothing given, :func:`load_credentials` returns None: the profile's
guest account (or anonymous access) is used.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nbiafs.errors import ConfigError

log = logging.getLogger(__name__)

ENV_USER = "NBIA_USER"
ENV_PASSWORD = "NBIA_PASSWORD"
ENV_API_KEY = "NBIA_API_KEY"
GUEST_USER = "nbia_guest"  # the public account, whose password is empty


@dataclass(frozen=True)
class Credentials:
    """A user name and password (and optionally a v3 API key). ``repr``/``str`` never show the secrets.

    An empty ``user`` means "no account" (only ``api_key`` is meaningful then).
    """

    user: str
    password: str = field(default="", repr=False)
    api_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        key = ", api_key=<hidden>" if self.api_key else ""
        return f"Credentials(user={self.user!r}, password=<hidden>{key})"

    __str__ = __repr__


def read_credentials_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(user, password)`` from a Data Retriever credentials file.

    Lines ``userName=...`` and ``passWord=...`` (keys case-insensitive; blank lines and ``#`` comments
    ignored; the password is taken verbatim up to the end of the line). Warns when the file is readable by
    group or others. Raises ConfigError when the file cannot be read or lacks either line.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {file}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("credentials file %s is readable by others (mode %o): chmod 600 it", file, mode & 0o777)
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip().lower()] = value.rstrip("\r\n")
    user = values.get("username", "").strip()
    if not user or "password" not in values:
        raise ConfigError(f"credentials file {file} needs a userName= and a passWord= line")
    return user, values["password"]


def load_credentials(
    user: str | None = None, credentials_file: str | os.PathLike[str] | None = None, interactive: bool = True
) -> Credentials | None:
    """The credentials to use, or None for the guest account / anonymous access.

    ``user`` (from ``--user``) names the account; its password comes from ``credentials_file``, then
    ``NBIA_PASSWORD``, then a prompt (only if ``interactive`` and stdin is a terminal). Raises ConfigError
    when a user is named but no password can be found, or when ``user`` and the file name different accounts.
    """
    api_key = os.environ.get(ENV_API_KEY) or None
    if credentials_file is not None:
        file_user, password = read_credentials_file(credentials_file)
        if user and user != file_user:
            raise ConfigError(f"--user {user!r} differs from the credentials file's user {file_user!r}")
        log.debug("credentials for %s from file %s", file_user, credentials_file)
        return Credentials(file_user, password, api_key)
    user = user or os.environ.get(ENV_USER) or None
    env_password = os.environ.get(ENV_PASSWORD)
    if user is None:
        if env_password is not None:
            raise ConfigError(f"{ENV_PASSWORD} is set but no user: set {ENV_USER} or give --user")
        return Credentials("", "", api_key) if api_key else None
    if env_password is not None:
        log.debug("credentials for %s from the environment", user)
        return Credentials(user, env_password, api_key)
    if user == GUEST_USER:
        return Credentials(user, "", api_key)
    if interactive and sys.stdin is not None and sys.stdin.isatty():
        try:
            password = getpass.getpass(f"NBIA password for {user}: ")
        except (EOFError, KeyboardInterrupt) as exc:
            raise ConfigError("no password entered") from exc
        return Credentials(user, password, api_key)
    raise ConfigError(f"no password for {user!r}: set {ENV_PASSWORD} or use --credentials-file")
