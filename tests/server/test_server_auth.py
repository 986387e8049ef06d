"""Authentication per era (facts §2): every row of the refusal tables, the token endpoint, logout, lifetimes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import pytest
import requests

from nbiafs.server import ArchiveServer
from tests.server.support import (
    ALICE,
    ALICE_PASSWORD,
    CT,
    NULL_500,
    PROCESS_ERROR,
    RESTRICTED,
    TIMEOUT,
    get,
    is_empty,
    login,
    post,
    rows,
    series_of,
    url,
)

MakeServer = Callable[..., ArchiveServer]
TOKEN_PATHS = ("/nbia-api/oauth/token", "/nbia-api/services/oauth/token")


def uid(srv: ArchiveServer) -> str:
    return series_of(srv, CT, "CT").series_instance_uid


def sop(srv: ArchiveServer) -> str:
    return series_of(srv, CT, "CT").instances[0].sop_instance_uid


# (endpoint, params) of v2 list endpoints: "no rows" for callers Keycloak does not know.
def v2_lists(srv: ArchiveServer) -> list[tuple[str, dict[str, str]]]:
    return [
        ("getPatient", {}),
        ("getPatientByCollectionAndModality", {"Collection": CT, "Modality": "CT"}),
        ("getPatientStudy", {"Collection": CT}),
        ("getSeries", {}),
        ("getModalityValues", {}),
        ("getBodyPartValues", {}),
        ("getManufacturerValues", {}),
        ("NewPatientsInCollection", {"Collection": CT, "Date": "2000/01/01"}),
        ("NewStudiesInPatientCollection", {"Collection": CT, "Date": "2000/01/01"}),
        ("getUpdatedSeries", {}),
        ("getSOPInstanceUIDs", {"SeriesInstanceUID": uid(srv)}),
        ("getSeriesSize", {"SeriesInstanceUID": uid(srv)}),
        ("getContentsByName", {"name": next(iter(srv.archive.default_carts))}),
    ]


def v2_strict(srv: ArchiveServer) -> list[tuple[str, dict[str, str]]]:
    return [
        ("getCollectionValues", {}),
        ("getImage", {"SeriesInstanceUID": uid(srv)}),
        ("getImageWithMD5Hash", {"SeriesInstanceUID": uid(srv)}),
        ("getSingleImage", {"SeriesInstanceUID": uid(srv), "SOPInstanceUID": sop(srv)}),
        ("getM5HashForImage", {"SOPInstanceUid": sop(srv)}),
        ("getDCMImage", {"SeriesInstanceUID": uid(srv)}),
    ]


ADVANCED_GETS = (
    "getModalityValuesAndCounts",
    "getBodyPartValuesAndCounts",
    "getCollectionValuesAndCounts",
    "getManufacturerValuesAndCounts",
    "getCollectionDescriptions",
)


def is_401_empty(r: requests.Response) -> bool:
    return r.status_code == 401 and r.content == b"" and "Content-Type" not in r.headers


def is_null_500(r: requests.Response) -> bool:
    return (
        r.status_code == 500
        and r.headers["Content-Type"] == "text/plain"
        and r.content == NULL_500.encode()
        and len(r.content) == 48
    )


# -- Keycloak era: refusals per prefix ---------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_keycloak_v2_lists_answer_empty(keycloak: ArchiveServer, token: str | None) -> None:
    for endpoint, params in v2_lists(keycloak):
        r = get(keycloak, "v2", endpoint, token, **params)
        assert is_empty(r), (endpoint, r.status_code, r.headers, r.content[:80])
    for t in (token, "also-bad"):
        r = get(keycloak, "v2", "getSeriesMetaData", t, SeriesInstanceUID=uid(keycloak))
        assert r.status_code == 204 and r.content == b""


def test_keycloak_v2_strict_endpoints_and_advanced_api(keycloak: ArchiveServer) -> None:
    for endpoint, params in v2_strict(keycloak):
        assert is_null_500(get(keycloak, "v2", endpoint, None, **params)), endpoint
        assert is_401_empty(get(keycloak, "v2", endpoint, "bogus", **params)), endpoint
    for endpoint in ADVANCED_GETS:
        assert is_null_500(get(keycloak, "adv", endpoint)), endpoint
        assert is_401_empty(get(keycloak, "adv", endpoint, "bogus")), endpoint
    form = {"sortField": "subject", "sortDirection": "ascending", "start": "0", "size": "5"}
    for endpoint in ("getSimpleSearchWithModalityAndBodyPartPaged", "getManifestForSimpleSearch"):
        assert is_null_500(post(keycloak, "adv", endpoint, form)), endpoint
        assert is_401_empty(post(keycloak, "adv", endpoint, form, "bogus")), endpoint
    # getImage resolves the user before its parameters: even a bare HEAD gets the 500.
    head = requests.head(url(keycloak, "v2", "getImage"), timeout=TIMEOUT)
    assert head.status_code == 500 and head.headers["Content-Length"] == "48"


def test_keycloak_v4_guest_without_header_refusals_with_bad_token(keycloak: ArchiveServer) -> None:
    series_uid = uid(keycloak)
    assert {r["Collection"] for r in rows(get(keycloak, "v4", "getCollectionValues"))} == {
        c for c in keycloak.archive.collections if c != RESTRICTED
    }
    for endpoint, params in (
        ("getSeries", {}),
        ("getPatient", {}),
        ("getSOPInstanceUIDs", {"SeriesInstanceUID": series_uid}),
    ):
        assert rows(get(keycloak, "v4", endpoint, **params))
        assert is_empty(get(keycloak, "v4", endpoint, "bogus", **params)), endpoint
    # getSeriesSize ignores tokens.
    assert rows(get(keycloak, "v4", "getSeriesSize", "bogus", SeriesInstanceUID=series_uid))
    for endpoint in ("getCollectionDescriptions",):
        assert get(keycloak, "v4", endpoint, "bogus").json() == []
    assert post(keycloak, "v4", "getCollectionOrSeriesForDOI", {}, "bogus").json() == []
    strict = [
        get(keycloak, "v4", "getCollectionValues", "bogus"),
        get(keycloak, "v4", "getImage", "bogus", SeriesInstanceUID=series_uid),
        get(
            keycloak,
            "v4",
            "getSingleImage",
            "bogus",
            SeriesInstanceUID=series_uid,
            SOPInstanceUID=sop(keycloak),
        ),
        get(keycloak, "v4", "getMD5HashForImage", "bogus", SOPInstanceUID=sop(keycloak)),
        get(keycloak, "v4", "getModalityValuesAndCounts", "bogus"),
        post(keycloak, "v4", "getSeriesMetadata", {"list": series_uid}, "bogus"),
        post(keycloak, "v4", "getMD5Hierarchy", {"SeriesInstanceUID": series_uid}, "bogus"),
        post(
            keycloak,
            "v4",
            "getSimpleSearch",
            {"sortField": "x", "sortDirection": "x", "start": "0", "size": "1"},
            "bogus",
        ),
    ]
    assert all(is_401_empty(r) for r in strict), [(r.url, r.status_code) for r in strict]


def test_keycloak_dicom_tags_refusals(keycloak: ArchiveServer) -> None:
    series_uid = uid(keycloak)
    assert get(keycloak, "v4", "getDicomTags", SeriesUID=series_uid).json()[0]["element"] == "(0002,0000)"
    for r in (
        get(keycloak, "v4", "getDicomTags", "bogus", SeriesUID=series_uid),
        get(keycloak, "adv", "getDicomTags", SeriesUID=series_uid),
        get(keycloak, "adv", "getDicomTags", "bogus", SeriesUID=series_uid),
    ):
        assert r.status_code == 500 and r.text == PROCESS_ERROR


def test_bearer_undefined_is_the_guest(keycloak: ArchiveServer) -> None:
    for prefix in ("v2", "v4"):
        collections = rows(get(keycloak, prefix, "getCollectionValues", "undefined"))
        assert {c["Collection"] for c in collections} == {
            c for c in keycloak.archive.collections if c != RESTRICTED
        }
        assert rows(get(keycloak, prefix, "getSeries", "undefined", Collection=CT))


def test_v1_ignores_tokens_and_valid_tokens_see_their_data(keycloak: ArchiveServer) -> None:
    for token in (None, "bogus", "undefined"):
        assert rows(get(keycloak, "v1", "getCollectionValues", token))
    alice = login(keycloak)["access_token"]
    assert RESTRICTED in {c["Collection"] for c in rows(get(keycloak, "v2", "getCollectionValues", alice))}
    assert RESTRICTED in {c["Collection"] for c in rows(get(keycloak, "v4", "getCollectionValues", alice))}
    assert RESTRICTED not in {
        c["Collection"] for c in rows(get(keycloak, "v1", "getCollectionValues", alice))
    }
    counts = get(keycloak, "adv", "getCollectionValuesAndCounts", alice).json()
    assert RESTRICTED in {c["criteria"] for c in counts}


def test_keycloak_expired_token_is_an_invalid_one(make_server: MakeServer) -> None:
    srv = make_server(auth_era="keycloak", token_lifetime=0.3)
    access = login(srv)["access_token"]
    assert rows(get(srv, "v2", "getSeries", access, Collection=CT))
    time.sleep(0.5)
    assert is_empty(get(srv, "v2", "getSeries", access, Collection=CT))
    assert is_401_empty(get(srv, "v2", "getCollectionValues", access))
    assert is_empty(get(srv, "v4", "getSeries", access, Collection=CT))


# -- Spring era: the filter's JSON 401s --------------------------------------------------------------------


def spring_401(r: requests.Response, error: str, description: str) -> None:
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"error": error, "error_description": description}
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="oauth", error="' + error)


def test_spring_refusals(spring: ArchiveServer) -> None:
    full = "Full authentication is required to access this resource"
    for prefix, endpoint in (
        ("v2", "getSeries"),
        ("v2", "getImage"),
        ("v2", "getCollectionValues"),
        ("adv", "getCollectionValuesAndCounts"),
    ):
        spring_401(get(spring, prefix, endpoint), "unauthorized", full)
        spring_401(
            get(spring, prefix, endpoint, "nonsense"), "invalid_token", "Invalid access token: nonsense"
        )
        spring_401(
            get(spring, prefix, endpoint, "undefined"), "invalid_token", "Invalid access token: undefined"
        )
    assert rows(get(spring, "v1", "getSeries", "nonsense"))
    assert rows(get(spring, "v4", "getSeries"))  # anonymous v4 on a Spring-era server too
    access = login(spring)["access_token"]
    assert rows(get(spring, "v2", "getSeries", access))
    by_query = requests.get(
        url(spring, "v2", "getCollectionValues"), params={"access_token": access}, timeout=TIMEOUT
    )
    assert RESTRICTED in by_query.text
    assert all("access_token" not in rec.path and access not in rec.path for rec in spring.requests)


def test_spring_expired_token(make_server: MakeServer) -> None:
    srv = make_server(auth_era="spring", token_lifetime=0.3)
    access = login(srv)["access_token"]
    time.sleep(0.5)
    spring_401(get(srv, "v2", "getSeries", access), "invalid_token", f"Access token expired: {access}")
    spring_401(get(srv, "v2", "getSeries", access), "invalid_token", f"Invalid access token: {access}")


# -- the token endpoint ------------------------------------------------------------------------------------


def token_request(
    srv: ArchiveServer, form: dict[str, str], path: str = TOKEN_PATHS[0], **kw: object
) -> requests.Response:
    return requests.post(srv.url + path, data=form, timeout=TIMEOUT, **kw)  # type: ignore[arg-type]


def jwt_claims(token: str) -> dict[str, object]:
    header, payload, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==").decode())["alg"]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "==").decode())
    return claims


def test_keycloak_token_answers(keycloak: ArchiveServer) -> None:
    base = {"grant_type": "password", "client_id": "whatever-it-is-replaced"}
    for path in TOKEN_PATHS:
        r = token_request(keycloak, {**base, "username": ALICE, "password": ALICE_PASSWORD}, path)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        answer = r.json()
        assert list(answer) == [
            "access_token",
            "expires_in",
            "refresh_expires_in",
            "refresh_token",
            "token_type",
            "id_token",
            "not-before-policy",
            "session_state",
            "scope",
        ]
        assert answer["token_type"] == "Bearer" and answer["expires_in"] == 7200
        assert jwt_claims(answer["access_token"])["preferred_username"] == ALICE
    for password in ("", "anything at all"):
        guest = token_request(keycloak, {**base, "username": "nbia_guest", "password": password})
        assert guest.status_code == 200
    bad = token_request(keycloak, {**base, "username": ALICE, "password": "wrong"})
    assert bad.status_code == 401 and bad.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid user credentials",
    }
    assert token_request(keycloak, {**base, "username": "mallory", "password": ""}).status_code == 401
    assert requests.get(keycloak.url + TOKEN_PATHS[0], timeout=TIMEOUT).status_code == 405


def test_keycloak_refresh_grant(make_server: MakeServer) -> None:
    srv = make_server(auth_era="keycloak", refresh_lifetime=0.6)
    first = login(srv)
    refresh = {"grant_type": "refresh_token", "client_id": "nbia", "refresh_token": first["refresh_token"]}
    again = token_request(srv, refresh)
    assert again.status_code == 200 and again.json()["access_token"] != first["access_token"]
    assert rows(get(srv, "v2", "getSeries", again.json()["access_token"], Collection=CT))
    wrong_client = token_request(srv, {**refresh, "client_id": "NBIA"})
    assert wrong_client.status_code == 401 and wrong_client.json()["error"] == "invalid_client"
    bogus = token_request(srv, {**refresh, "refresh_token": "bogus"})
    assert bogus.status_code == 400 and bogus.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid refresh token",
    }
    missing = token_request(srv, {"grant_type": "refresh_token", "client_id": "nbia"})
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    no_grant = token_request(srv, {"username": ALICE, "password": ALICE_PASSWORD, "client_id": "nbia"})
    assert no_grant.status_code == 500
    assert token_request(srv, {"grant_type": "client_credentials", "client_id": "nbia"}).status_code == 500
    time.sleep(0.8)
    expired = token_request(srv, refresh)
    assert expired.status_code == 400 and expired.json() == {
        "error": "invalid_grant",
        "error_description": "Token is not active",
    }


def test_spring_token_answers(make_server: MakeServer) -> None:
    srv = make_server(auth_era="spring", refresh_lifetime=0.6)
    creds = {"client_id": "nbiaRestAPIClient", "client_secret": "ItsBetweenUAndMe"}
    form = {**creds, "grant_type": "password", "username": ALICE, "password": ALICE_PASSWORD}
    for path in TOKEN_PATHS:
        posted = token_request(srv, form, path)
        fetched = requests.get(srv.url + path, params=form, timeout=TIMEOUT)
        for r in (posted, fetched):
            assert r.status_code == 200, r.text
            answer = r.json()
            assert list(answer) == ["access_token", "token_type", "refresh_token", "expires_in"]
            assert answer["token_type"] == "bearer" and answer["expires_in"] == 7199
            assert len(answer["access_token"]) == 36 and answer["access_token"].count("-") == 4  # a UUID
    assert login(srv, client_id="NBIA")["token_type"] == "bearer"  # the guide's client id
    wrong_secret = token_request(srv, {**form, "client_secret": "guess"})
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    bad = token_request(srv, {**form, "password": "wrong"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    guest = token_request(srv, {**form, "username": "nbia_guest", "password": "x"})
    assert guest.status_code == 400
    refresh = {**creds, "grant_type": "refresh_token", "refresh_token": posted.json()["refresh_token"]}
    renewed = token_request(srv, refresh)
    assert renewed.status_code == 200 and renewed.json()["refresh_token"] == posted.json()["refresh_token"]
    assert token_request(srv, {**refresh, "refresh_token": "bogus"}).json() == {
        "error": "invalid_grant",
        "error_description": "Invalid refresh token: bogus",
    }
    time.sleep(0.8)
    expired = token_request(srv, refresh)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"


# -- logout ------------------------------------------------------------------------------------------------


def test_spring_logout_keeps_the_refresh_token(make_server: MakeServer) -> None:
    srv = make_server(auth_era="spring")
    answer = login(srv)
    logout = f"{srv.url}/nbia-api/logout"
    headers = {"Authorization": f"Bearer {answer['access_token']}"}
    assert requests.post(logout, headers=headers, timeout=TIMEOUT).status_code == 405
    r = requests.get(logout, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 200 and r.text == "\n\tYou Have Logged Out successfully."
    assert [(x.endpoint, x.user) for x in srv.requests][-1] == ("logout", ALICE)
    assert get(srv, "v2", "getSeries", answer["access_token"]).status_code == 401
    form = {"grant_type": "refresh_token", "client_id": "NBIA", "refresh_token": answer["refresh_token"]}
    renewed = token_request(srv, form)
    assert renewed.status_code == 200
    assert rows(get(srv, "v2", "getSeries", renewed.json()["access_token"], Collection=CT))
    none = requests.get(logout, timeout=TIMEOUT)
    assert none.status_code == 401 and none.json()["error"] == "unauthorized"


def test_keycloak_logout_is_relayed_and_the_session_survives(keycloak: ArchiveServer) -> None:
    access = login(keycloak)["access_token"]
    logout = f"{keycloak.url}/nbia-api/logout"
    headers = {"Authorization": f"Bearer {access}"}
    assert requests.get(logout, headers=headers, timeout=TIMEOUT).status_code == 405
    r = requests.post(logout, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert rows(get(keycloak, "v2", "getSeries", access, Collection=CT))
    assert requests.post(logout, timeout=TIMEOUT).status_code == 500


def test_revoking_refresh_tokens_too(make_server: MakeServer) -> None:
    srv = make_server(auth_era="keycloak")
    answer = login(srv)
    srv.revoke_tokens()
    assert get(srv, "v2", "getCollectionValues", answer["access_token"]).status_code == 401
    form = {"grant_type": "refresh_token", "client_id": "nbia", "refresh_token": answer["refresh_token"]}
    assert token_request(srv, form).status_code == 200
    srv.revoke_tokens(refresh_tokens=True)
    assert token_request(srv, form).status_code == 400
