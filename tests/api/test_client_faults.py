"""Injected faults of the bundled server: 503/429 retried, endless errors, stalls, cut bodies."""

from __future__ import annotations

import io
import time
import zipfile
from typing import Any

import pytest

from nbiafs.api.client import NbiaClient
from nbiafs.errors import RequestTimeoutError, ServerError
from nbiafs.server import ArchiveServer
from tests.helpers import RESTRICTED, MakeServer, api_client, settle


def v1_client(srv: ArchiveServer, **kw: Any) -> NbiaClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 30.0)
    return api_client(srv.url, "v1", **kw)


def test_injected_503_and_429_are_retried(make_server: MakeServer) -> None:
    srv = make_server(error_rate_503=0.3, error_rate_429=0.06, seed=3)
    expected = {name for name in srv.archive.collections if name != RESTRICTED}
    with v1_client(srv, retries=8) as client:
        for _ in range(20):
            assert set(client.collections()) == expected
    settle(srv)
    statuses = [r.status for r in srv.requests]
    assert 503 in statuses and 429 in statuses and statuses.count(200) == 20


def test_endless_503_is_a_server_error(make_server: MakeServer) -> None:
    srv = make_server(error_rate_503=1.0)
    started = time.monotonic()
    with v1_client(srv, retries=3) as client, pytest.raises(ServerError) as info:
        client.series()
    assert info.value.status == 503 and "503" in str(info.value)
    assert time.monotonic() - started < 5
    settle(srv)
    assert len(srv.requests) == 4


def test_stalled_server_times_out_instead_of_hanging(make_server: MakeServer) -> None:
    srv = make_server(stall=30)
    started = time.monotonic()
    with v1_client(srv, timeout=0.5, retries=1) as client, pytest.raises(RequestTimeoutError) as info:
        client.collections()
    elapsed = time.monotonic() - started
    assert elapsed < 4, elapsed
    assert "getCollectionValues" in str(info.value) and "0.5 s" in str(info.value)


def test_cut_bodies_are_downloaded_again(make_server: MakeServer) -> None:
    srv = make_server(cut_rate=0.5, seed=1)
    series = next(s for s in srv.archive.iter_series() if s.collection == "NBIAFS-MR-Brain")
    with v1_client(srv, retries=10) as client:
        for inst in series.instances:
            out = io.BytesIO()
            assert client.download_instance(series.series_instance_uid, inst.sop_instance_uid, out) > 0
            assert out.getvalue() == srv.archive.instance_bytes(inst.sop_instance_uid)
        zbuf = io.BytesIO()
        client.download_series(series.series_instance_uid, zbuf)
    with zipfile.ZipFile(zbuf) as zf:
        assert zf.testzip() is None and len(zf.namelist()) == series.image_count + 1
    settle(srv)
    cut = [r for r in srv.requests if r.endpoint in ("getSingleImage", "getImage") and r.status == 200]
    assert len(cut) > len(series.instances) + 1  # some answers were cut and fetched again
