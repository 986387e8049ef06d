"""The token endpoint (``/nbia-api/oauth/token``, also under ``/services``) and logout, per era (facts §2).

Keycloak era: POST only; the password grant takes any ``client_id`` (NBIA replaces it) and any password for
``nbia_guest``; the refresh grant is forwarded, so only Keycloak's client ``nbia`` may refresh. Answers and
errors are Keycloak's. Logout is POST only and relays Keycloak's answer to a logout without a refresh token,
so the session survives. Spring era: GET or POST with client credentials (``nbiaRestAPIClient`` and the old
guide's secret, or the guide's ``NBIA``); UUID tokens; logout is a GET that removes the access token only.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

from nbiafs.server.auth import KEYCLOAK_CLIENT, TokenStore
from nbiafs.server.guard import SPRING_JSON, spring_caller, spring_token
from nbiafs.server.replies import JSON, Reply, null_500, text, tomcat_error

SPRING_CLIENT = ("nbiaRestAPIClient", "ItsBetweenUAndMe")
LOGGED_OUT = "\n\tYou Have Logged Out successfully."
_NO_CACHE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(status: int, value: dict[str, Any], content_type: str = JSON) -> Reply:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Reply(status, body, content_type, dict(_NO_CACHE))


def _error(status: int, error: str, description: str, content_type: str = JSON) -> Reply:
    return _json(status, {"error": error, "error_description": description}, content_type)


def token(
    era: str, method: str, tokens: TokenStore, form: Mapping[str, str], headers: Mapping[str, str]
) -> tuple[Reply, str]:
    """The answer to a token request and the user it concerns (``""`` if none)."""
    if era == "keycloak":
        if method != "POST":
            return tomcat_error(405, "POST,OPTIONS"), ""
        return _keycloak_token(tokens, form)
    return _spring_token(tokens, form, headers)


def _keycloak_token(tokens: TokenStore, form: Mapping[str, str]) -> tuple[Reply, str]:
    grant_type = form.get("grant_type")
    if grant_type is None or grant_type.lower() not in ("password", "refresh_token"):
        return null_500(), ""  # grant_type.equalsIgnoreCase(...) on null; an unknown one: Response.status(0)
    if grant_type.lower() == "password":
        user = form.get("username", "")
        if not tokens.password_ok(user, form.get("password", ""), guest_any_password=True):
            return _error(401, "invalid_grant", "Invalid user credentials"), user
        issued = tokens.issue(user)
        return _keycloak_answer(tokens, user, issued), user
    if form.get("client_id") != KEYCLOAK_CLIENT:
        return _error(401, "invalid_client", "Invalid client or Invalid client credentials"), ""
    refresh = form.get("refresh_token")
    if not refresh:
        return _error(400, "invalid_request", "No refresh token"), ""
    state, grant = tokens.refresh_grant(refresh)
    if grant is None:
        description = "Token is not active" if state == "expired" else "Invalid refresh token"
        return _error(400, "invalid_grant", description), ""
    issued = tokens.issue(grant.user, grant.session)
    return _keycloak_answer(tokens, grant.user, issued), grant.user


def _keycloak_answer(tokens: TokenStore, user: str, issued: dict[str, str]) -> Reply:
    return _json(
        200,
        {
            "access_token": issued["access"],
            "expires_in": int(tokens.config.token_lifetime),
            "refresh_expires_in": int(tokens.config.refresh_lifetime),
            "refresh_token": issued["refresh"],
            "token_type": "Bearer",
            "id_token": tokens.id_token(user, issued["session"]),
            "not-before-policy": 0,
            "session_state": issued["session"],
            "scope": "openid profile email",
        },
    )


def _spring_client_ok(form: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    client_id, secret = form.get("client_id"), form.get("client_secret")
    basic = headers.get("Authorization", "")
    if basic[:6].lower() == "basic ":
        try:
            client_id, _, secret = base64.b64decode(basic[6:].strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
    if client_id is not None and client_id.lower() == "nbia":
        return True
    return (client_id, secret) == SPRING_CLIENT


def _spring_token(
    tokens: TokenStore, form: Mapping[str, str], headers: Mapping[str, str]
) -> tuple[Reply, str]:
    if not _spring_client_ok(form, headers):
        return _error(401, "invalid_client", "Bad client credentials", SPRING_JSON), ""
    grant_type = form.get("grant_type")
    if not grant_type:
        return _error(400, "invalid_request", "Missing grant type", SPRING_JSON), ""
    if grant_type == "password":
        user = form.get("username", "")
        if not tokens.password_ok(user, form.get("password", ""), guest_any_password=False):
            return _error(400, "invalid_grant", "Bad credentials", SPRING_JSON), user
        return _spring_answer(tokens, tokens.issue(user)), user
    if grant_type == "refresh_token":
        refresh = form.get("refresh_token")
        state, grant = tokens.refresh_grant(refresh or "")
        if grant is None or refresh is None:
            expired = " (expired)" if state == "expired" else ""
            return _error(400, "invalid_grant", f"Invalid refresh token{expired}: {refresh}", SPRING_JSON), ""
        return _spring_answer(tokens, tokens.issue(grant.user, grant.session, refresh)), grant.user
    return _error(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}", SPRING_JSON), ""


def _spring_answer(tokens: TokenStore, issued: dict[str, str]) -> Reply:
    seconds_left = max(0, math.ceil(float(tokens.config.token_lifetime)) - 1)
    answer = {
        "access_token": issued["access"],
        "token_type": "bearer",
        "refresh_token": issued["refresh"],
        "expires_in": seconds_left,
    }
    return _json(200, answer, SPRING_JSON)


def logout(
    era: str,
    method: str,
    tokens: TokenStore,
    headers: Mapping[str, str],
    params: Mapping[str, list[str]],
) -> tuple[Reply, str]:
    """The answer to ``/nbia-api/logout`` and the user whose token it names (``""`` if none)."""
    if era == "spring":
        if method != "GET":
            return tomcat_error(405, "GET,HEAD,OPTIONS"), ""
        caller = spring_caller(tokens, spring_token(headers, params))
        if isinstance(caller, Reply):
            return caller, ""
        tokens.forget_access(spring_token(headers, params) or "")
        return text(200, LOGGED_OUT), caller.name
    if method != "POST":
        return tomcat_error(405, "POST,OPTIONS"), ""
    value = headers.get("Authorization")
    if value is None or value.strip().lower() == "bearer undefined":
        return null_500(), ""  # Response.status(0, "No valid token.")
    user = tokens.user_for(value.replace("Bearer ", "", 1).strip()) or ""
    # Keycloak's logout endpoint without a refresh token: the session is not ended.
    return _error(400, "invalid_request", "No refresh token"), user
