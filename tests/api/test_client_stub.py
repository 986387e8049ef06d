"""Client behaviour the bundled server cannot show: a tiny scripted HTTP server on loopback.

ZIP/HTML/garbage where JSON was expected, wrong Content-Length, plain-text 400s, 404, Retry-After, body cuts
with and without a length, the old four-key token answer.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import Credentials
from nbiafs.api.profiles import resolve_profile
from nbiafs.errors import (
    AccessDeniedError,
    BadRequestError,
    BadResponseError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    UnavailableError,
)
from nbiafs.settings import ClientSettings
from tests.helpers import api_client

# A handler gets the request handler and the path, and writes a whole answer.
Script = Callable[[BaseHTTPRequestHandler, str], None]


def send(
    h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "application/json", **headers: str
) -> None:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    named.setdefault("Content-Length", str(len(body)))
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    for name, value in named.items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(body)


class Stub:
    """Routes ``/<api>/<Endpoint>`` to scripts; records (method, endpoint, headers) of each request."""

    def __init__(self) -> None:
        self.routes: dict[str, Script] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                endpoint = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
                stub.seen.append((self.command, endpoint, dict(self.headers)))
                script = stub.routes.get(endpoint)
                if script is None:
                    send(self, 404, b"no such endpoint", "text/plain")
                else:
                    script(self, self.path)

            do_GET = do_POST = handle_any  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, endpoint: str) -> int:
        return sum(1 for _, e, _ in self.seen if e == endpoint)


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    s.thread.start()
    try:
        yield s
    finally:
        s.server.shutdown()
        s.server.server_close()
        s.thread.join(timeout=5)


def v1_client(stub: Stub, **kw: Any) -> NbiaClient:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    return api_client(stub.url, "v1", **kw)


@pytest.mark.parametrize(
    ("body", "ctype", "word"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00zipdata", "application/zip", "ZIP"),
        (b"PK\x03\x04\x14\x00\x00\x00zipdata", "application/json", "ZIP"),
        (b"<!DOCTYPE html><html><body>Maintenance</body></html>", "text/html", "HTML"),
        (b"Service temporarily moved", "text/plain", "not JSON"),
    ],
)
def test_wrong_body_where_json_expected(stub: Stub, body: bytes, ctype: str, word: str) -> None:
    stub.routes["getSeries"] = lambda h, p: send(h, 200, body, ctype)
    with v1_client(stub) as client, pytest.raises(BadResponseError, match=word) as info:
        client.series(collection="X")
    assert "getSeries" in str(info.value) and "JSON" in str(info.value)


def test_plain_text_400_becomes_bad_request_with_the_sentence(stub: Stub) -> None:
    sentence = b"A parameter, Collection, is required for this query."
    stub.routes["getPatientStudy"] = lambda h, p: send(h, 400, sentence, "application/json")
    with v1_client(stub) as client, pytest.raises(BadRequestError) as info:
        client.studies("")
    assert info.value.status == 400 and info.value.message == sentence.decode()


def test_not_granted_400_becomes_access_denied(stub: Stub) -> None:
    text = b"The user has not been granted the access to the series"
    stub.routes["getSingleImage"] = lambda h, p: send(h, 400, text, "application/json")
    with v1_client(stub) as client, pytest.raises(AccessDeniedError, match="not been granted"):
        client.download_instance("1.2", "1.2.3", io.BytesIO())


def test_unknown_endpoint_is_not_found(stub: Stub) -> None:
    with v1_client(stub) as client, pytest.raises(NotFoundError):
        client.query("getNothing", {})


def test_retry_after_is_respected_then_succeeds(stub: Stub) -> None:
    calls: list[int] = []

    def flaky(h: BaseHTTPRequestHandler, p: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            send(h, 429, b"slow down", "text/plain", Retry_After="1")
        else:
            send(h, 200, b'[{"Collection":"A"}]')

    stub.routes["getCollectionValues"] = flaky
    import time

    started = time.monotonic()
    with v1_client(stub) as client:
        assert client.collections() == ["A"]
    assert len(calls) == 2 and time.monotonic() - started >= 0.9


def test_server_error_after_retries(stub: Stub) -> None:
    stub.routes["getCollectionValues"] = lambda h, p: send(h, 502, b"bad gateway", "text/plain")
    with v1_client(stub, retries=3) as client, pytest.raises(ServerError) as info:
        client.collections()
    assert info.value.status == 502 and stub.count("getCollectionValues") == 4


def test_non_retried_500_is_server_error(stub: Stub) -> None:
    stub.routes["getSeries"] = lambda h, p: send(h, 501, b"not implemented", "text/plain")
    with v1_client(stub) as client, pytest.raises(ServerError):
        client.series()
    assert stub.count("getSeries") == 1


def _cut_then_whole(payload: bytes, cuts: int) -> tuple[Script, list[int]]:
    calls: list[int] = []

    def script(h: BaseHTTPRequestHandler, p: str) -> None:
        calls.append(1)
        if len(calls) <= cuts:
            h.send_response(200)
            h.send_header("Content-Type", "application/dicom")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
        else:
            send(h, 200, payload, "application/dicom")

    return script, calls


def test_cut_download_is_rewound_and_retried(stub: Stub) -> None:
    payload = b"\0" * 128 + b"DICM" + bytes(range(256)) * 400
    script, calls = _cut_then_whole(payload, cuts=2)
    stub.routes["getSingleImage"] = script
    out = io.BytesIO(b"HEADER")
    out.seek(6)
    with v1_client(stub, retries=3) as client:
        assert client.download_instance("1.2", "1.2.3", out) == len(payload)
    assert out.getvalue() == b"HEADER" + payload and len(calls) == 3


def test_cut_download_gives_up_with_network_error(stub: Stub) -> None:
    payload = b"\0" * 128 + b"DICM" + b"x" * 5000
    script, calls = _cut_then_whole(payload, cuts=10)
    stub.routes["getSingleImage"] = script
    with v1_client(stub, retries=1) as client, pytest.raises(UnavailableError):
        client.download_instance("1.2", "1.2.3", io.BytesIO())
    assert len(calls) == 2


def test_cut_json_is_fetched_again(stub: Stub) -> None:
    body = json.dumps([{"Collection": f"C{i}"} for i in range(500)]).encode()
    calls: list[int] = []

    def script(h: BaseHTTPRequestHandler, p: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            send(h, 200, body[:100], Content_Length=str(len(body)))
            h.close_connection = True
            h.connection.shutdown(2)
        else:
            send(h, 200, body)

    stub.routes["getCollectionValues"] = script
    with v1_client(stub) as client:
        assert len(client.collections()) == 500
    assert len(calls) == 2


def test_zip_expected_but_json_given(stub: Stub) -> None:
    stub.routes["getImage"] = lambda h, p: send(h, 200, b'{"error":"x"}')
    with v1_client(stub) as client, pytest.raises(BadResponseError, match="ZIP"):
        client.download_series("1.2", io.BytesIO())


def test_html_where_dicom_expected(stub: Stub) -> None:
    stub.routes["getSingleImage"] = lambda h, p: send(h, 200, b"<html>login</html>", "text/html")
    with v1_client(stub) as client, pytest.raises(BadResponseError, match="HTML"):
        client.download_instance("1.2", "1.2.3", io.BytesIO())


def test_empty_single_image_is_not_found(stub: Stub) -> None:
    stub.routes["getSingleImage"] = lambda h, p: send(h, 200, b"", "application/dicom")
    with v1_client(stub) as client, pytest.raises(NotFoundError):
        client.download_instance("1.2", "1.2.3", io.BytesIO())


def test_stall_before_headers_is_a_timeout(stub: Stub) -> None:
    release = threading.Event()

    def stall(h: BaseHTTPRequestHandler, p: str) -> None:
        release.wait(5)

    stub.routes["getCollectionValues"] = stall
    import time

    started = time.monotonic()
    try:
        with v1_client(stub, timeout=0.3, retries=1) as client, pytest.raises(RequestTimeoutError) as info:
            client.collections()
    finally:
        release.set()
    assert time.monotonic() - started < 3
    assert "getCollectionValues" in str(info.value) and "0.3" in str(info.value)


def test_old_four_key_token_answer_and_bearer_header(stub: Stub) -> None:
    stub.routes["token"] = lambda h, p: send(
        h,
        200,
        b'{"access_token":"f7889076-b3e4-4768-9419-3cd973adda76","token_type":"bearer",'
        b'"refresh_token":"671bb72b","expires_in":"7199"}',
    )
    stub.routes["getCollectionValues"] = lambda h, p: send(h, 200, b"")
    stub.routes["logout"] = lambda h, p: send(h, 200, b"")
    client = NbiaClient(
        resolve_profile(api_url=f"{stub.url}/nbia-api/services/v2"), settings=ClientSettings(timeout=2.0)
    )
    with client:
        assert client.collections() == []
    headers = [hdr for _, e, hdr in stub.seen if e == "getCollectionValues"][0]
    assert headers["Authorization"] == "Bearer f7889076-b3e4-4768-9419-3cd973adda76"
    assert [e for _, e, _ in stub.seen] == ["token", "getCollectionValues", "logout"]


def test_v3_sends_api_key_header_not_in_url(stub: Stub) -> None:
    stub.routes["getCollectionValues"] = lambda h, p: send(h, 200, b'[{"Collection":"A"}]')
    profile = resolve_profile("legacy-v3", api_url=stub.url)
    with NbiaClient(
        profile, Credentials("", "", api_key="sekrit-key"), settings=ClientSettings(timeout=2.0)
    ) as client:
        assert client.collections() == ["A"]
    _, _, headers = stub.seen[-1]
    assert headers.get("api_key") == "sekrit-key"


def _trickle(h: BaseHTTPRequestHandler, path: str) -> None:
    """A valid-looking answer whose body comes one byte every 0.2 s (no read timeout ever fires)."""
    h.send_response(200)
    h.send_header("Content-Type", "application/dicom")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    with contextlib.suppress(OSError):
        h.wfile.write(b"\0" * 128 + b"DICM")
        h.wfile.flush()
        for _ in range(200):
            time.sleep(0.2)
            h.wfile.write(b"x")
            h.wfile.flush()


def test_a_trickling_body_is_abandoned_within_the_timeout(stub: Stub) -> None:
    stub.routes["getSingleImage"] = _trickle
    started = time.monotonic()
    with v1_client(stub, timeout=1.5, retries=0) as client, pytest.raises(RequestTimeoutError, match="B/s"):
        client.download_instance("1.2", "1.2.3", io.BytesIO())
    assert time.monotonic() - started < 6


def test_an_oversized_metadata_answer_is_refused(stub: Stub) -> None:
    rows = json.dumps([{"Collection": f"C{i:06d}"} for i in range(20000)]).encode()
    stub.routes["getCollectionValues"] = lambda h, p: send(h, 200, rows)
    with v1_client(stub, max_answer_bytes=100_000) as client, pytest.raises(BadResponseError, match="larger"):
        client.collections()
    with v1_client(stub) as client:
        assert len(client.collections()) == 20000
