"""The archive server's hostile fault modes: trickle, drop, blackhole, truncate, corrupt, wrong SOP, HTML, huge
JSON; their scopes and rates; and the ``nbiafs serve`` flags that set them."""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import time
import zipfile
from collections.abc import Callable

import pydicom
import pytest
import requests

from nbiafs.cli import serve
from nbiafs.errors import ConfigError
from nbiafs.server import ArchiveServer, SeriesInfo, ServerConfig, ServerConfigError
from nbiafs.server.faults import corrupt, huge_json

MakeServer = Callable[..., ArchiveServer]
TIMEOUT = 20
pytestmark = pytest.mark.timeout(60)


def ct_series(srv: ArchiveServer) -> SeriesInfo:
    return next(s for s in srv.archive.iter_series() if s.modality == "CT" and s.image_count > 1)


def image_path(series: SeriesInfo, index: int = 0) -> str:
    sop = series.instances[index].sop_instance_uid
    return f"/nbia-api/services/v1/getSingleImage?SeriesInstanceUID={series.series_instance_uid}&SOPInstanceUID={sop}"


def raw_get(
    srv: ArchiveServer, path: str, timeout: float = TIMEOUT
) -> tuple[http.client.HTTPResponse, bytes]:
    """GET with http.client (which, unlike requests, says how a body ended)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    try:
        body = resp.read()
    finally:
        conn.close()
    return resp, body


def get(srv: ArchiveServer, path: str, timeout: float = TIMEOUT) -> requests.Response:
    return requests.get(srv.url + path, timeout=timeout)


def test_trickle_sends_n_bytes_every_s(make_server: MakeServer) -> None:
    srv = make_server(trickle_rate=1.0, trickle_bytes=2000, trickle_interval=0.2)
    series = ct_series(srv)
    data = srv.archive.instance_bytes(series.instances[0].sop_instance_uid)
    start = time.monotonic()
    r = get(srv, image_path(series))
    took = time.monotonic() - start
    assert r.content == data and r.headers["Content-Length"] == str(len(data))
    pieces = -(-len(data) // 2000)
    assert took >= 0.2 * (pieces - 1) * 0.9
    assert get(srv, "/nbia-api/services/v1/getCollectionValues").status_code == 200  # not in scope: at once


def test_trickle_of_a_byte_is_stopped_promptly(make_server: MakeServer) -> None:
    srv = make_server(trickle_rate=1.0)  # 1 byte every 2 s
    series = ct_series(srv)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    try:
        sock.sendall(f"GET {image_path(series)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        start = time.monotonic()
        srv.stop()
        assert time.monotonic() - start < 3
    finally:
        sock.close()


def test_drop_closes_without_an_answer_in_its_scope(make_server: MakeServer) -> None:
    srv = make_server(drop_rate=1.0, fault_scope={"drop": ("getSingleImage",)})
    series = ct_series(srv)
    with pytest.raises(http.client.RemoteDisconnected):
        raw_get(srv, image_path(series))
    assert get(srv, "/nbia-api/services/v1/getCollectionValues").status_code == 200
    srv.config.drop_rate = 0.0
    assert get(srv, image_path(series)).status_code == 200


def test_blackhole_drops_connection_attempts(make_server: MakeServer) -> None:
    srv = make_server()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
    conn.request("GET", "/nbia-api/services/v1/getCollectionValues")
    assert conn.getresponse().read()
    srv.config.blackhole = True
    time.sleep(0.3)  # the serving thread follows the knob within 0.05 s
    start = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout)):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1.0)
    assert 0.9 <= time.monotonic() - start < 2  # no refusal, no answer: the connect timed out
    # a connection already open gets no answer either
    conn.request("GET", "/nbia-api/services/v1/getCollectionValues")
    with pytest.raises((TimeoutError, socket.timeout)):
        conn.getresponse()
    conn.close()
    srv.config.blackhole = False
    time.sleep(0.3)
    assert get(srv, "/nbia-api/services/v1/getCollectionValues", timeout=5).status_code == 200


def test_blackhole_from_the_start_and_stop(make_server: MakeServer) -> None:
    srv = make_server(blackhole=True)
    with pytest.raises((TimeoutError, socket.timeout)):
        socket.create_connection(("127.0.0.1", srv.port), timeout=0.5)
    start = time.monotonic()
    srv.stop()
    assert time.monotonic() - start < 3
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=0.5)


@pytest.mark.parametrize("where", ["image", "zip"])
def test_truncate_close_is_a_clean_short_body(make_server: MakeServer, where: str) -> None:
    srv = make_server(truncate_rate=1.0)
    series = ct_series(srv)
    if where == "image":
        resp, body = raw_get(srv, image_path(series))
        data = srv.archive.instance_bytes(series.instances[0].sop_instance_uid)
        assert body == data[: len(data) // 2]
    else:
        resp, body = raw_get(
            srv, f"/nbia-api/services/v1/getImage?SeriesInstanceUID={series.series_instance_uid}"
        )
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(body))
        assert body.startswith(b"PK\x03\x04")
    assert resp.status == 200 and resp.getheader("Content-Length") is None
    assert resp.getheader("Connection") == "close" and resp.getheader("Transfer-Encoding") is None


def test_truncate_chunked_styles(make_server: MakeServer) -> None:
    srv = make_server(truncate_rate=1.0, truncate_style="chunked")
    series = ct_series(srv)
    data = srv.archive.instance_bytes(series.instances[0].sop_instance_uid)
    with pytest.raises(http.client.IncompleteRead):
        raw_get(srv, image_path(series))
    srv.config.truncate_style = "chunked-end"
    resp, body = raw_get(srv, image_path(series))
    assert resp.getheader("Transfer-Encoding") == "chunked" and body == data[: len(data) // 2]
    resp, body = raw_get(
        srv, f"/nbia-api/services/v1/getImage?SeriesInstanceUID={series.series_instance_uid}"
    )
    assert resp.getheader("Transfer-Encoding") == "chunked" and body.startswith(b"PK\x03\x04")
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(body))


def test_corrupt_keeps_length_and_dicom(make_server: MakeServer) -> None:
    srv = make_server(corrupt_rate=1.0)
    series = ct_series(srv)
    sop = series.instances[0].sop_instance_uid
    data = srv.archive.instance_bytes(sop)
    body = get(srv, image_path(series)).content
    assert len(body) == len(data) and body != data
    assert sum(a != b for a, b in zip(body, data, strict=True)) <= 16
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.SOPInstanceUID == sop  # nothing but a checksum can tell
    r = get(srv, f"/nbia-api/services/v1/getImage?SeriesInstanceUID={series.series_instance_uid}")
    members = zipfile.ZipFile(io.BytesIO(r.content))  # CRCs match the altered bytes
    got = {
        pydicom.dcmread(io.BytesIO(members.read(n))).SOPInstanceUID: members.read(n)
        for n in members.namelist()
        if n.endswith(".dcm")
    }
    originals = {i.sop_instance_uid: srv.archive.instance_bytes(i.sop_instance_uid) for i in series.instances}
    assert got.keys() == originals.keys()
    assert all(len(got[k]) == len(originals[k]) and got[k] != originals[k] for k in got)


def test_corrupt_of_short_bodies() -> None:
    assert corrupt(b"") == b""
    assert corrupt(b"abc") == bytes(b ^ 0xFF for b in b"abc")


def test_wrong_sop(make_server: MakeServer) -> None:
    srv = make_server(wrong_sop_rate=1.0)
    series = ct_series(srv)
    body = get(srv, image_path(series)).content
    assert body == srv.archive.instance_bytes(series.instances[1].sop_instance_uid)
    r = get(srv, f"/nbia-api/services/v1/getImage?SeriesInstanceUID={series.series_instance_uid}")
    members = zipfile.ZipFile(io.BytesIO(r.content))
    uids = {
        pydicom.dcmread(io.BytesIO(members.read(n))).SOPInstanceUID
        for n in members.namelist()
        if n.endswith(".dcm")
    }
    assert uids and not uids & {i.sop_instance_uid for i in series.instances}


def test_html(make_server: MakeServer) -> None:
    srv = make_server(html_rate=1.0)
    series = ct_series(srv)
    for path in (
        image_path(series),
        f"/nbia-api/services/v1/getImage?SeriesInstanceUID={series.series_instance_uid}",
    ):
        r = get(srv, path)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert r.content.startswith(b"<!DOCTYPE html>")
    assert (
        get(srv, "/nbia-api/services/v1/getCollectionValues")
        .headers["Content-Type"]
        .startswith("application/json")
    )


def test_huge_json(make_server: MakeServer) -> None:
    srv = make_server(huge_json_rate=1.0, huge_json_bytes=3 << 20)
    resp, body = raw_get(srv, "/nbia-api/services/v1/getCollectionValues?format=json")
    assert resp.getheader("Transfer-Encoding") == "chunked" and resp.getheader("Content-Length") is None
    import json

    rows = json.loads(body)
    assert len(body) >= 3 << 20 and rows[0] == rows[len(rows) // 2 * 0] and "Collection" in rows[0]
    series = ct_series(srv)
    assert get(srv, image_path(series)).content == srv.archive.instance_bytes(
        series.instances[0].sop_instance_uid
    )
    assert b"".join(huge_json(b"[]", 10)).startswith(b'[{"Filler"')


def test_rates_are_seeded_and_partial(make_server: MakeServer) -> None:
    def statuses(srv: ArchiveServer) -> list[str]:
        series = ct_series(srv)
        out = []
        for _ in range(30):
            try:
                raw_get(srv, image_path(series))
                out.append("ok")
            except http.client.RemoteDisconnected:
                out.append("drop")
        return out

    first = statuses(make_server(drop_rate=0.5, seed=0))
    assert set(first) == {"ok", "drop"}
    assert statuses(make_server(drop_rate=0.5, seed=0)) == first


def test_config_checks() -> None:
    with pytest.raises(ServerConfigError):
        ServerConfig(truncate_style="sideways")
    with pytest.raises(ServerConfigError):
        ServerConfig(fault_scope={"gremlins": ("all",)})
    assert ServerConfig().scope("huge_json") == ("metadata",)
    assert ServerConfig(fault_scope={"drop": ("token",)}).scope("drop") == ("token",)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_serve_flags() -> None:
    config = serve.build_config(
        _args(
            "--trickle-rate",
            "1",
            "--trickle-bytes",
            "3",
            "--trickle-interval",
            "0.5",
            "--drop-rate",
            "0.25",
            "--truncate-rate",
            "1",
            "--truncate-style",
            "chunked",
            "--corrupt-rate",
            "0.1",
            "--wrong-sop-rate",
            "0.2",
            "--html-rate",
            "0.3",
            "--huge-json-rate",
            "1",
            "--huge-json-bytes",
            "2M",
            "--blackhole",
            "--fault-scope",
            "drop=getSingleImage,metadata",
            "--fault-scope",
            "wrong-sop=image",
        )
    )
    assert (config.trickle_rate, config.trickle_bytes, config.trickle_interval) == (1.0, 3, 0.5)
    assert (config.drop_rate, config.truncate_rate, config.truncate_style) == (0.25, 1.0, "chunked")
    assert (config.corrupt_rate, config.wrong_sop_rate, config.html_rate) == (0.1, 0.2, 0.3)
    assert (config.huge_json_rate, config.huge_json_bytes, config.blackhole) == (1.0, 2 << 20, True)
    assert config.fault_scope == {"drop": ("getSingleImage", "metadata"), "wrong_sop": ("image",)}
    for bad in (["--fault-scope", "drop"], ["--fault-scope", "gremlins=all"], ["--drop-rate", "-1"]):
        with pytest.raises(ConfigError):
            serve.build_config(_args(*bad))
