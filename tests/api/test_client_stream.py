"""``NbiaClient.stream_series``: the series ZIP's body as it arrives (with md5hashes.csv where the version can),
not fetched again once started; ``NbiaClient.instance_md5``."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from nbiafs.api.credentials import Credentials
from nbiafs.errors import AccessDeniedError, UnavailableError
from nbiafs.server import ArchiveServer
from tests.helpers import API_KEY, RESTRICTED, MakeServer, api_client, settle


def test_stream_is_the_series_zip(archive_server: ArchiveServer) -> None:
    series = next(s for s in archive_server.archive.iter_series() if s.collection == "NBIAFS-MR-Brain")
    with api_client(archive_server.url, "v1") as client:
        stream = client.stream_series(series.series_instance_uid, md5=False)
        body = b"".join(stream)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names[0] == "LICENSE" and len(names) == series.image_count + 1


def test_request_goes_out_on_first_next(make_server: MakeServer) -> None:
    srv = make_server()
    series = next(iter(srv.archive.iter_series()))
    with api_client(srv.url, "v1") as client:
        stream = client.stream_series(series.series_instance_uid)
        settle(srv, quiet=0.05)
        assert not [r for r in srv.requests if r.endpoint == "getImageWithMD5Hash"]
        assert next(stream).startswith(b"PK")
        stream.close()


def test_cut_stream_raises_unavailable_without_retry(make_server: MakeServer) -> None:
    srv = make_server(cut_rate=1.0)
    series = next(s for s in srv.archive.iter_series() if s.image_count >= 4)
    with api_client(srv.url, "v1", retries=3, backoff=0.01) as client, pytest.raises(UnavailableError):
        for _ in client.stream_series(series.series_instance_uid):
            pass
    settle(srv)
    assert len([r for r in srv.requests if r.endpoint == "getImageWithMD5Hash"]) == 1


def test_refused_series_raises_before_any_byte(archive_server: ArchiveServer) -> None:
    series = next(s for s in archive_server.archive.iter_series() if s.collection == RESTRICTED)
    with api_client(archive_server.url, "v2") as client, pytest.raises(AccessDeniedError):
        next(client.stream_series(series.series_instance_uid))


def _md5_rows(csv_bytes: bytes) -> dict[str, str]:
    lines = csv_bytes.decode().splitlines()
    assert lines[0] == "Filename,MD5Hash"
    return dict(line.split(",") for line in lines[1:] if line)


@pytest.mark.parametrize(
    ("version", "endpoint", "licence"),
    [("v1", "getImageWithMD5Hash", False), ("v2", "getImageWithMD5Hash", False), ("v4", "getImage", True)],
)
def test_stream_asks_for_md5s_as_the_version_spells_it(
    make_server: MakeServer, version: str, endpoint: str, licence: bool
) -> None:
    srv = make_server()
    series = next(s for s in srv.archive.iter_series() if s.collection == "NBIAFS-MR-Brain")
    with api_client(srv.url, version) as client:
        assert client.series_md5
        body = b"".join(client.stream_series(series.series_instance_uid))
    settle(srv)
    zips = [r for r in srv.requests if r.endpoint in ("getImage", "getImageWithMD5Hash")]
    assert [r.endpoint for r in zips] == [endpoint]
    assert ("IncludeMD5=Yes" in zips[0].path) == (version == "v4")
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        assert (names[0] == "LICENSE") == licence
        assert names[-1] == "md5hashes.csv"
        rows = _md5_rows(zf.read("md5hashes.csv"))
        members = [n for n in names if n.endswith(".dcm")]
        assert sorted(rows) == sorted(members) and len(members) == series.image_count
        for name in members:
            assert hashlib.md5(zf.read(name)).hexdigest() == rows[name]


def test_stream_without_md5_is_plain_getimage(make_server: MakeServer) -> None:
    srv = make_server()
    series = next(iter(srv.archive.iter_series()))
    with api_client(srv.url, "v4") as client:
        body = b"".join(client.stream_series(series.series_instance_uid, md5=False))
    settle(srv)
    zips = [r for r in srv.requests if r.endpoint in ("getImage", "getImageWithMD5Hash")]
    assert [r.endpoint for r in zips] == ["getImage"] and "IncludeMD5" not in zips[0].path
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert "md5hashes.csv" not in zf.namelist()


def test_v3_streams_plain_getimage_and_knows_no_instance_md5(make_server: MakeServer) -> None:
    srv = make_server()
    series = next(s for s in srv.archive.iter_series() if s.collection == "NBIAFS-MR-Brain")
    with api_client(srv.url, "v3", Credentials("", "", API_KEY)) as client:
        assert not client.series_md5
        body = b"".join(client.stream_series(series.series_instance_uid))
        assert client.instance_md5(series.instances[0].sop_instance_uid) is None
    settle(srv)
    assert [r.endpoint for r in srv.requests if "Image" in r.endpoint or "Hash" in r.endpoint] == ["getImage"]
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert "md5hashes.csv" not in zf.namelist()


@pytest.mark.parametrize(("version", "endpoint"), [("v1", "getM5HashForImage"), ("v4", "getMD5HashForImage")])
def test_instance_md5(make_server: MakeServer, version: str, endpoint: str) -> None:
    srv = make_server()
    series = next(s for s in srv.archive.iter_series() if s.collection == "NBIAFS-MR-Brain")
    sop = series.instances[0].sop_instance_uid
    with api_client(srv.url, version) as client:
        assert client.instance_md5(sop) == hashlib.md5(srv.archive.instance_bytes(sop)).hexdigest()
        assert client.instance_md5("1.2.3.404") is None  # the server's empty answer: no MD5 known
    settle(srv)
    assert {r.endpoint for r in srv.requests if "Hash" in r.endpoint} == {endpoint}
