"""OAuth tokens of the archive server: password grant, refresh grant, logout, revocation, API keys.

Tokens are random (``secrets``), kept only in memory and never logged. Lifetimes come from the live
``ServerConfig`` at the moment a token is issued (seconds, measured with ``time.monotonic``).
The answer is Keycloak-shaped, as the live server's (see the facts file).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from nbiafs.errors import AuthenticationError
from nbiafs.server.config import GUEST_USER, ServerConfig

# Client ids the live token endpoint has accepted over the years (case-insensitive).
CLIENT_IDS = frozenset({"nbia", "nbiarestapiclient"})


@dataclass
class _Grant:
    user: str
    session: str
    expires: float  # time.monotonic() deadline


class TokenStore:
    """Issues and checks tokens for one server. Thread-safe.

    Errors raised: :class:`OAuthError` (an AuthenticationError) with the OAuth error ``code``
    (``invalid_grant``, ``invalid_client``, ``unsupported_grant_type``) and a ``description``.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}

    def grant(self, form: dict[str, str]) -> tuple[str, dict[str, Any]]:
        """The user and the JSON answer for a token request (form fields as sent); raises OAuthError."""
        client_id = form.get("client_id", "")
        if client_id.lower() not in CLIENT_IDS:
            raise _oauth_error("invalid_client", "Invalid client or Invalid client credentials")
        grant_type = form.get("grant_type", "")
        if grant_type == "password":
            user = form.get("username", "")
            if not self._password_ok(user, form.get("password", "")):
                raise _oauth_error("invalid_grant", "Invalid user credentials")
            return user, self._issue(user, str(uuid.uuid4()))
        if grant_type == "refresh_token":
            token = form.get("refresh_token", "")
            with self._lock:
                old = self._refresh.get(token)
                if old is None or old.expires <= time.monotonic():
                    self._refresh.pop(token, None)
                    raise _oauth_error("invalid_grant", "Token is not active")
            return old.user, self._issue(old.user, old.session)
        raise _oauth_error("unsupported_grant_type", "Unsupported grant_type")

    def user_for(self, access_token: str) -> str | None:
        """The user an access token belongs to, or None if unknown, expired, revoked or logged out."""
        with self._lock:
            g = self._access.get(access_token)
            if g is None:
                return None
            if g.expires <= time.monotonic():
                del self._access[access_token]
                return None
            return g.user

    def logout(self, access_token: str) -> bool:
        """End the session of this access token (its access and refresh tokens); False if it was unknown."""
        with self._lock:
            g = self._access.get(access_token)
            if g is None:
                return False
            self._access = {k: v for k, v in self._access.items() if v.session != g.session}
            self._refresh = {k: v for k, v in self._refresh.items() if v.session != g.session}
            return True

    def revoke_access_tokens(self) -> None:
        """Every access token issued so far is now invalid (refresh tokens stay valid)."""
        with self._lock:
            self._access.clear()

    def _password_ok(self, user: str, password: str) -> bool:
        if user == GUEST_USER:
            return password == ""
        expected = self.config.users.get(user)
        if expected is None:
            return False
        return hmac.compare_digest(expected.encode(), password.encode())

    def _issue(self, user: str, session: str) -> dict[str, Any]:
        now = time.monotonic()
        access_life = float(self.config.token_lifetime)
        refresh_life = float(self.config.refresh_lifetime)
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(48)
        with self._lock:
            self._access[access] = _Grant(user, session, now + access_life)
            self._refresh[refresh] = _Grant(user, session, now + refresh_life)
        return {
            "access_token": access,
            "expires_in": int(access_life),
            "refresh_expires_in": int(refresh_life),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "id_token": secrets.token_urlsafe(32),
            "not-before-policy": 0,
            "session_state": session,
            "scope": "openid profile email",
        }


class OAuthError(AuthenticationError):
    """A refused token request: ``code`` is the OAuth error code, ``description`` the text sent with it."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


def _oauth_error(code: str, description: str) -> OAuthError:
    return OAuthError(code, description)


def api_key_ok(config: ServerConfig, key: str | None) -> bool:
    """Whether ``key`` is one of the configured v3 API keys (constant-time per key)."""
    if not key:
        return False
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in config.api_keys)
