"""The archive server's token store: issues and checks access and refresh tokens; v3 API keys.

Keycloak-era tokens are JWT-shaped (HS256 over a per-server secret), Spring-era ones UUIDs. Tokens live
only in memory and are never logged. Lifetimes come from the live ``ServerConfig`` when a token is issued
and are measured by the wall clock, as the real servers do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from nbiafs.server.config import GUEST_USER, ServerConfig

KEYCLOAK_CLIENT = "nbia"
ISSUER = "https://keycloak.dbmi.cloud/auth/realms/TCIA"


@dataclass
class Grant:
    """Who a token belongs to and until when (seconds since the epoch)."""

    user: str
    session: str
    expires: float


@dataclass(frozen=True)
class TokenState:
    """What a presented token is: ``valid`` (with its user), ``expired`` or ``invalid``."""

    state: str
    user: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenStore:
    """Every token one server has issued. Thread-safe."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)
        self._access: dict[str, Grant] = {}
        self._refresh: dict[str, Grant] = {}

    # -- accounts ---------------------------------------------------------------------------------------

    def password_ok(self, user: str, password: str, guest_any_password: bool) -> bool:
        """Whether ``password`` is ``user``'s (the guest's is empty, or anything in the Keycloak era)."""
        if user == GUEST_USER:
            return guest_any_password or password == ""
        expected = self.config.users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    # -- issuing ----------------------------------------------------------------------------------------

    def issue(
        self, user: str, session: str | None = None, refresh_token: str | None = None
    ) -> dict[str, str]:
        """New tokens for ``user``: ``access``, ``refresh`` (``refresh_token`` kept if given), ``session``."""
        now = time.time()
        session = session or str(uuid.uuid4())
        keycloak = self.config.auth_era == "keycloak"
        access = self._jwt(user, session, "Bearer", now) if keycloak else str(uuid.uuid4())
        refresh = refresh_token or (
            self._jwt(user, session, "Refresh", now) if keycloak else str(uuid.uuid4())
        )
        with self._lock:
            self._access[access] = Grant(user, session, now + float(self.config.token_lifetime))
            if refresh_token is None:
                self._refresh[refresh] = Grant(user, session, now + float(self.config.refresh_lifetime))
        return {"access": access, "refresh": refresh, "session": session}

    def id_token(self, user: str, session: str) -> str:
        return self._jwt(user, session, "ID", time.time())

    def _jwt(self, user: str, session: str, kind: str, now: float) -> str:
        header = {"alg": "HS256", "typ": "JWT", "kid": "nbiafs"}
        life = self.config.refresh_lifetime if kind == "Refresh" else self.config.token_lifetime
        claims: dict[str, Any] = {
            "exp": int(now + float(life)),
            "iat": int(now),
            "jti": str(uuid.uuid4()),
            "iss": ISSUER,
            "aud": "account",
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nbiafs-user/{user}")),
            "typ": kind,
            "azp": KEYCLOAK_CLIENT,
            "session_state": session,
            "scope": "openid profile email",
            "preferred_username": user,
        }
        signing = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        signature = hmac.new(self._secret, signing.encode(), hashlib.sha256).digest()
        return signing + "." + _b64(signature)

    # -- checking ---------------------------------------------------------------------------------------

    def check(self, access_token: str) -> TokenState:
        """The state of an access token; an expired one is forgotten once reported (as Spring does)."""
        with self._lock:
            grant = self._access.get(access_token)
            if grant is None:
                return TokenState("invalid")
            if grant.expires <= time.time():
                del self._access[access_token]
                return TokenState("expired")
            return TokenState("valid", grant.user)

    def user_for(self, access_token: str) -> str | None:
        """The user of a valid access token, else None."""
        return self.check(access_token).user

    def refresh_grant(self, refresh_token: str) -> tuple[str, Grant | None]:
        """``("valid", grant)``, ``("expired", None)`` or ``("invalid", None)`` for a refresh token."""
        with self._lock:
            grant = self._refresh.get(refresh_token)
            if grant is None:
                return "invalid", None
            if grant.expires <= time.time():
                del self._refresh[refresh_token]
                return "expired", None
            return "valid", grant

    # -- ending -----------------------------------------------------------------------------------------

    def forget_access(self, access_token: str) -> str | None:
        """Remove one access token (Spring logout: its refresh token keeps working); its user or None."""
        with self._lock:
            grant = self._access.pop(access_token, None)
        return None if grant is None else grant.user

    def revoke(self, refresh_tokens: bool = False) -> None:
        """Invalidate every access token issued so far, and every refresh token if asked."""
        with self._lock:
            self._access.clear()
            if refresh_tokens:
                self._refresh.clear()


def api_key_ok(config: ServerConfig, key: str | None) -> bool:
    """Whether ``key`` is one of the configured v3 API keys (constant-time per key)."""
    if not key:
        return False
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in config.api_keys)
