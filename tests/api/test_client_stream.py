"""``NbiaClient.stream_series``: getImage's ZIP body as it arrives, not fetched again once started."""

from __future__ import annotations

import io
import zipfile

import pytest

from nbiafs.errors import AccessDeniedError, UnavailableError
from nbiafs.server import ArchiveServer
from tests.helpers import RESTRICTED, MakeServer, api_client, settle


def test_stream_is_the_series_zip(archive_server: ArchiveServer) -> None:
    series = next(s for s in archive_server.archive.iter_series() if s.collection == "NBIAFS-MR-Brain")
    with api_client(archive_server.url, "v1") as client:
        stream = client.stream_series(series.series_instance_uid)
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
        assert not [r for r in srv.requests if r.endpoint == "getImage"]
        assert next(stream).startswith(b"PK")
        stream.close()


def test_cut_stream_raises_unavailable_without_retry(make_server: MakeServer) -> None:
    srv = make_server(cut_rate=1.0)
    series = next(s for s in srv.archive.iter_series() if s.image_count >= 4)
    with api_client(srv.url, "v1", retries=3, backoff=0.01) as client, pytest.raises(UnavailableError):
        for _ in client.stream_series(series.series_instance_uid):
            pass
    settle(srv)
    assert len([r for r in srv.requests if r.endpoint == "getImage"]) == 1


def test_refused_series_raises_before_any_byte(archive_server: ArchiveServer) -> None:
    series = next(s for s in archive_server.archive.iter_series() if s.collection == RESTRICTED)
    with api_client(archive_server.url, "v2") as client, pytest.raises(AccessDeniedError):
        next(client.stream_series(series.series_instance_uid))
