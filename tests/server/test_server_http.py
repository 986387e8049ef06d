"""HTTP details of the live servers (facts §1): Server header, status line, HEAD, OPTIONS, 404, 405, paths."""

from __future__ import annotations

import socket

import requests

from nbiafs.server import ArchiveServer
from tests.server.support import CT, TIMEOUT, get, login, rows, series_of, url


def raw(srv: ArchiveServer, request: str) -> bytes:
    """Send ``request`` on a fresh connection and read the answer until the server closes it."""
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_server_header_and_status_line(keycloak: ArchiveServer) -> None:
    answer = raw(
        keycloak,
        "GET /nbia-api/services/v1/getCollectionValues HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 \r\n")  # no reason phrase
    assert b"\r\nServer: nginx\r\n" in answer
    r = get(keycloak, "v1", "getCollectionValues")
    assert r.headers["Server"] == "nginx"


def test_head_is_get_without_body(keycloak: ArchiveServer) -> None:
    s = series_of(keycloak, CT, "CT")
    for endpoint, params in (
        ("getSeries", {"Collection": CT}),
        (
            "getSingleImage",
            {"SeriesInstanceUID": s.series_instance_uid, "SOPInstanceUID": s.instances[0].sop_instance_uid},
        ),
        ("getImage", {"SeriesInstanceUID": s.series_instance_uid}),
        ("getSeriesSize", {}),
    ):
        full = get(keycloak, "v1", endpoint, **params)
        head = requests.head(url(keycloak, "v1", endpoint), params=params, timeout=TIMEOUT)
        assert head.status_code == full.status_code and head.content == b""
        for name in ("Content-Type", "Content-Length", "Content-Disposition", "Transfer-Encoding"):
            assert head.headers.get(name) == full.headers.get(name), (endpoint, name)
    assert rows(get(keycloak, "v1", "getSeries", Collection=CT))  # the connection pool still works


def test_options_404_405(keycloak: ArchiveServer) -> None:
    options = requests.options(url(keycloak, "v1", "getSeries"), timeout=TIMEOUT)
    assert options.status_code == 200 and options.headers["Allow"] == "HEAD,GET,OPTIONS"
    options = requests.options(url(keycloak, "v4", "getSeriesMetadata"), timeout=TIMEOUT)
    assert options.status_code == 200 and options.headers["Allow"] == "POST,OPTIONS"
    for path in (
        "/elsewhere",
        "/nbia-api/services/v1/getNothing",
        "/nbia-api/services/v9/getSeries",
        "/nbia-api/services/v4/getContentsByName",
        "/nbia-api/services/v4/getM5HashForImage",
        "/nbia-api/services/v1/getMD5HashForImage",
    ):
        r = requests.get(keycloak.url + path, timeout=TIMEOUT)
        assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html"), path
        assert "HTTP Status 404" in r.text
    for method, endpoint in (("POST", "getSeries"), ("PUT", "getImage"), ("DELETE", "getSeries")):
        r = requests.request(method, url(keycloak, "v1", endpoint), timeout=TIMEOUT)
        assert (
            r.status_code == 405 and "HTTP Status 405" in r.text and r.headers["Allow"] == "HEAD,GET,OPTIONS"
        )
    r = requests.get(url(keycloak, "v4", "getSeriesMetadata"), timeout=TIMEOUT)
    assert r.status_code == 405 and r.headers["Allow"] == "POST,OPTIONS"


def test_paths_without_services(keycloak: ArchiveServer) -> None:
    assert rows(requests.get(f"{keycloak.url}/nbia-api/v1/getCollectionValues", timeout=TIMEOUT))
    access = login(keycloak)["access_token"]
    r = requests.get(
        f"{keycloak.url}/nbia-api/getCollectionValuesAndCounts",
        headers={"Authorization": f"Bearer {access}"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200 and r.json()
