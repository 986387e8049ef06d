"""OAuth password-grant tokens for the NBIA v2 API, kept fresh for as long as the client lives.

:class:`TokenManager` logs in lazily (first :meth:`~TokenManager.token` call), then a daemon thread refreshes
the token with the refresh token at ``refresh_fraction`` of its lifetime (a 2-hour token is renewed after
~80 minutes, a 2-second one after ~1.3 s). A refused refresh (expired refresh token) leads to a fresh password
login. An API call that got HTTP 401 calls :meth:`~TokenManager.refresh_after_401` with the token it used:
however many threads do so with the same token, one refresh request happens and every caller gets its result.

Times are wall-clock seconds (``clock``, ``time.time`` by default): a suspended laptop stops monotonic clocks
but not the token's expiry, so :meth:`~TokenManager.token` checks the expiry before every request and renews a
token that is (nearly) dead instead of sending it. That matters because the production server answers most
list requests made with a dead token with HTTP 200 and an empty body, not 401. Lifetimes are floored at
``MIN_REFRESH_DELAY`` so an absurd ``expires_in`` cannot cause a refresh storm. Tokens and passwords are never
logged; a token with control characters is refused.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from nbiafs.errors import (
    AuthenticationError,
    BadResponseError,
    RequestTimeoutError,
    ServerError,
    UnavailableError,
)

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 7200.0  # seconds; what NBIA grants when an answer omits expires_in
MIN_REFRESH_DELAY = 1.0  # seconds; never hammer the token endpoint, even with absurd lifetimes
EXPIRY_MARGIN = 0.1  # fraction of a token's life before its expiry at which it is no longer sent
MAX_SLEEP = 30.0  # seconds the refresher sleeps at most before it looks at the wall clock again


@dataclass(frozen=True)
class Token:
    """One granted token. Times are wall-clock seconds; ``refresh_expires_at`` None if unknown."""

    access_token: str
    refresh_token: str | None
    expires_in: float
    obtained_at: float
    refresh_expires_at: float | None

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.expires_in

    def usable(self, now: float) -> bool:
        """Whether the token may still be sent at ``now``: not within a margin of its expiry, or obtained less
        than ``MIN_REFRESH_DELAY`` ago (so an absurdly short lifetime cannot make every request renew it)."""
        return now < self.obtained_at + self.expires_in * (1.0 - EXPIRY_MARGIN) or (
            now - self.obtained_at < MIN_REFRESH_DELAY
        )


def parse_token_answer(content: bytes, obtained_at: float) -> Token:
    """A :class:`Token` from a Keycloak-shaped or the old four-key answer (``expires_in`` may be a string).

    Raises BadResponseError when there is no ``access_token``.
    """
    try:
        data = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadResponseError("the token endpoint answered with something that is not JSON") from exc
    if not isinstance(data, dict) or not data.get("access_token"):
        raise BadResponseError("the token endpoint's answer has no access_token")
    for key in ("access_token", "refresh_token"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.isprintable() or " " in value):
            raise BadResponseError(f"the token endpoint's {key} has characters a token cannot have")

    def seconds(key: str) -> float | None:
        try:
            value = float(data[key])
        except (KeyError, TypeError, ValueError):
            return None
        return value if value >= 0 else None

    # 0 is a real answer (a token already about to die: Token.usable floors its use); absent means NBIA's 2 h.
    expires_in = seconds("expires_in")
    if expires_in is None:
        expires_in = DEFAULT_EXPIRES_IN
    refresh_in = seconds("refresh_expires_in") or None
    refresh = data.get("refresh_token")
    return Token(
        access_token=str(data["access_token"]),
        refresh_token=str(refresh) if refresh else None,
        expires_in=expires_in,
        obtained_at=obtained_at,
        refresh_expires_at=obtained_at + refresh_in if refresh_in else None,
    )


def _server_sentence(resp: requests.Response) -> str:
    """The error text of a token-endpoint answer (OAuth ``error_description``/``error`` or plain text)."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        text = data.get("error_description") or data.get("error") or ""
        return str(text)[:200]
    return resp.text.strip()[:200]


class _RefusedError(Exception):
    """The token endpoint refused a grant (4xx)."""


class TokenManager:
    """Obtains, refreshes and finally revokes the bearer token of one account. Thread-safe.

    ``session`` is shared with the API client (its pool and urllib3 retries apply to token requests too).
    ``timeout`` is the requests (connect, read) timeout in seconds. ``refresh_fraction`` is the fraction of a
    token's lifetime after which the background thread refreshes it.
    """

    def __init__(
        self,
        session: requests.Session,
        token_url: str,
        user: str,
        password: str,
        *,
        logout_url: str | None = None,
        client_id: str = "nbia",
        timeout: float | tuple[float, float] = 30.0,
        refresh_fraction: float = 0.65,
        background: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._logout_url = logout_url
        self._user = user
        self._password = password
        self._client_id = client_id
        self._timeout = timeout
        self._fraction = min(max(refresh_fraction, 0.1), 0.9)
        self._background = background
        self._clock = clock
        self._token: Token | None = None
        self._lock = threading.Lock()  # held for the whole of a grant: that is the single flight
        self._closed = threading.Event()
        self._changed = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self.grants = 0  # successful grants (login or refresh), for diagnostics and tests

    @property
    def user(self) -> str:
        return self._user

    def __repr__(self) -> str:
        return f"TokenManager(user={self._user!r}, token_url={self._token_url!r})"

    # --- public ---------------------------------------------------------------------------------------------

    def token(self) -> str:
        """The current access token, logging in first if there is none yet.

        Raises AuthenticationError (credentials refused), UnavailableError/ServerError (token endpoint failing).
        """
        current = self._token
        if current is not None and current.usable(self._clock()):
            return current.access_token
        with self._lock:
            if self._closed.is_set():
                raise AuthenticationError("the client has been closed")
            if self._token is None:
                self._set(self._login())
            elif not self._token.usable(self._clock()):
                log.info("token expired or about to (wall clock); renewing before the request")
                self._set(self._renew())
            assert self._token is not None
            return self._token.access_token

    def renew(self, doubtful_token: str) -> str:
        """A new access token because answers given to ``doubtful_token`` look like a dead token's (the
        production server answers list requests made with one with 200 and no rows); single flight like
        :meth:`refresh_after_401`."""
        return self.refresh_after_401(doubtful_token)

    def refresh_after_401(self, failed_token: str) -> str:
        """A new access token after an API call was refused with ``failed_token``; single flight.

        If another thread already replaced ``failed_token``, its result is returned with no request.
        """
        with self._lock:
            if self._closed.is_set():
                raise AuthenticationError("the client has been closed")
            if self._token is not None and self._token.access_token != failed_token:
                return self._token.access_token
            log.info("token refused by the API; refreshing")
            self._set(self._renew())
            assert self._token is not None
            return self._token.access_token

    def close(self) -> None:
        """Stop the refresher thread and log out (best effort; errors are logged, not raised)."""
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        with self._lock:
            token, self._token = self._token, None
        if token is not None and self._logout_url:
            headers = {"Authorization": f"Bearer {token.access_token}"}
            try:
                # Keycloak-era servers take POST only; the older Spring ones GET (POST is 405 there).
                resp = self._session.post(self._logout_url, headers=headers, timeout=self._timeout)
                resp.close()
                if resp.status_code == 405:
                    resp = self._session.get(self._logout_url, headers=headers, timeout=self._timeout)
                    resp.close()
                log.debug("logged out %s: HTTP %s", self._user, resp.status_code)
            except requests.RequestException as exc:
                log.warning("logout failed: %s", type(exc).__name__)

    # --- grants ---------------------------------------------------------------------------------------------

    def _post(self, form: dict[str, str], what: str) -> Token:
        started = self._clock()
        try:
            resp = self._session.post(self._token_url, data=form, timeout=self._timeout)
        except requests.Timeout as exc:
            raise RequestTimeoutError(f"token endpoint: no answer within {self._timeout} s") from exc
        except requests.RequestException as exc:
            raise UnavailableError(f"token endpoint unreachable ({type(exc).__name__})") from exc
        with resp:
            if 400 <= resp.status_code < 500 and resp.status_code != 429:
                raise _RefusedError(f"{what} refused (HTTP {resp.status_code}): {_server_sentence(resp)}")
            if resp.status_code >= 400:
                raise ServerError(f"token endpoint: HTTP {resp.status_code}", status=resp.status_code)
            token = parse_token_answer(resp.content, started)
        self.grants += 1
        return token

    def _login(self) -> Token:
        log.debug("password grant for %s", self._user)
        form = {
            "username": self._user,
            "password": self._password,
            "client_id": self._client_id,
            "grant_type": "password",
        }
        try:
            return self._post(form, f"login of {self._user!r}")
        except _RefusedError as exc:
            raise AuthenticationError(str(exc)) from None

    def _renew(self) -> Token:
        """Refresh with the refresh token; if that is refused (expired), log in again."""
        current = self._token
        if current is not None and current.refresh_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": current.refresh_token,
                "client_id": self._client_id,
            }
            try:
                log.debug("refresh grant for %s", self._user)
                return self._post(form, "refresh")
            except _RefusedError as exc:
                log.info("%s; logging in again", exc)
        return self._login()

    def _set(self, token: Token) -> None:
        """Install ``token`` (caller holds ``_lock``) and wake or start the refresher."""
        self._token = token
        with self._changed:
            self._changed.notify_all()
        if self._background and self._thread is None and not self._closed.is_set():
            thread = threading.Thread(target=self._refresh_loop, name="nbiafs-token-refresh", daemon=True)
            self._thread = thread
            thread.start()

    # --- background refresh ---------------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        failures = 0
        retry_at = 0.0
        while not self._closed.is_set():
            token = self._token
            if token is None:
                with self._changed:
                    self._changed.wait(timeout=1.0)
                continue
            due = token.obtained_at + max(token.expires_in * self._fraction, MIN_REFRESH_DELAY)
            if failures:
                due = retry_at
            delay = due - self._clock()
            if delay > 0:
                with self._changed:
                    # Wall-clock time jumps (suspend): look again at least every MAX_SLEEP seconds.
                    self._changed.wait(timeout=min(delay, MAX_SLEEP))
                continue  # woken early (new token or close) or due now: re-evaluate
            with self._lock:
                if self._closed.is_set() or self._token is not token:
                    failures = 0
                    continue  # someone else replaced it meanwhile
                try:
                    self._set(self._renew())
                    failures = 0
                except (UnavailableError, ServerError, BadResponseError, AuthenticationError) as exc:
                    failures += 1
                    # Back off, but try again well before the token runs out.
                    now = self._clock()
                    remaining = token.expires_at - now
                    retry_at = now + max(MIN_REFRESH_DELAY, min(5.0 * failures, remaining / 4))
                    log.warning("background token refresh failed (%s): %s", type(exc).__name__, exc)
