"""The archive server's realism knobs, connections, request log, ``--data DIR`` and ``nbiafs serve``."""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nbiafs.server import ArchiveServer, SeriesInfo, ServerConfig, ServerConfigError

MakeServer = Callable[..., ArchiveServer]
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20


def v1(srv: ArchiveServer, endpoint: str, session: Any = requests, **params: str) -> requests.Response:
    return session.get(f"{srv.url}/nbia-api/services/v1/{endpoint}", params=params, timeout=TIMEOUT)


def ct_series(srv: ArchiveServer) -> SeriesInfo:
    return next(s for s in srv.archive.iter_series() if s.modality == "CT")


def image(
    srv: ArchiveServer, series: SeriesInfo, index: int = 0, session: Any = requests
) -> requests.Response:
    sop = series.instances[index].sop_instance_uid
    return v1(
        srv, "getSingleImage", session, SeriesInstanceUID=series.series_instance_uid, SOPInstanceUID=sop
    )


def test_latency_and_bandwidth(make_server: MakeServer) -> None:
    srv = make_server(latency=0.3)
    start = time.monotonic()
    assert v1(srv, "getCollectionValues").status_code == 200
    assert time.monotonic() - start >= 0.3
    srv.config.latency = 0.0
    series = ct_series(srv)
    size = series.instances[0].size
    srv.config.bandwidth = size / 0.6  # bytes per second: the body should take about 0.6 s
    start = time.monotonic()
    r = image(srv, series)
    elapsed = time.monotonic() - start
    assert r.content == srv.archive.instance_bytes(series.instances[0].sop_instance_uid)
    assert 0.45 <= elapsed < 5


def test_error_rates(make_server: MakeServer) -> None:
    srv = make_server(error_rate_503=1.0)
    assert v1(srv, "getCollectionValues").status_code == 503
    form = {"username": "nbia_guest", "password": "", "client_id": "NBIA", "grant_type": "password"}
    assert requests.post(f"{srv.url}/nbia-api/oauth/token", data=form, timeout=TIMEOUT).status_code == 200
    srv.config.error_rate_503 = 0.0
    srv.config.error_rate_429 = 1.0
    r = v1(srv, "getSeries")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    srv.config.error_rate_429 = 0.5
    with requests.Session() as s:
        statuses = [v1(srv, "getCollectionValues", s).status_code for _ in range(40)]
    assert set(statuses) == {200, 429}


def test_cut_downloads(make_server: MakeServer) -> None:
    srv = make_server(cut_rate=1.0)
    series = ct_series(srv)
    with pytest.raises(requests.exceptions.RequestException):
        image(srv, series)
    with pytest.raises(requests.exceptions.RequestException):
        v1(srv, "getImage", SeriesInstanceUID=series.series_instance_uid)
    assert v1(srv, "getCollectionValues").status_code == 200  # metadata is never cut
    srv.config.cut_rate = 0.0
    assert image(srv, series).content == srv.archive.instance_bytes(series.instances[0].sop_instance_uid)


def test_stop_is_prompt_with_stalled_and_throttled_requests(make_server: MakeServer) -> None:
    srv = make_server(stall=30)
    fast = make_server(bandwidth=2000)  # 2 kB/s: a 9 kB image takes seconds
    errors: list[BaseException] = []

    def call(fn: Callable[[], object]) -> None:
        try:
            fn()
        except requests.exceptions.RequestException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=call, args=(lambda: v1(srv, "getCollectionValues"),)),
        threading.Thread(target=call, args=(lambda: image(fast, ct_series(fast)),)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    start = time.monotonic()
    srv.stop()
    fast.stop()
    assert time.monotonic() - start < 3
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert len(errors) == 2  # both clients saw the connection end, nobody hangs


def test_keep_alive_and_chunked(archive_server: ArchiveServer) -> None:
    host, port = archive_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        series = ct_series(archive_server)
        for path in (
            "/nbia-api/services/v1/getCollectionValues",
            f"/nbia-api/services/v1/getImage?SeriesInstanceUID={series.series_instance_uid}",
            "/nbia-api/services/v1/getSeries?Collection=nope",
            "/nbia-api/services/v1/getSeriesSize",
            "/nbia-api/services/v1/getModalityValues",
        ):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status in (200, 400) and not resp.will_close, path
            if "getImage" in path:
                assert resp.getheader("Transfer-Encoding") == "chunked"
                assert len(zipfile.ZipFile(io.BytesIO(body)).namelist()) == series.image_count + 1
    finally:
        conn.close()


def test_concurrent_clients(archive_server: ArchiveServer) -> None:
    series = [s for s in archive_server.archive.iter_series() if s.collection != "NBIAFS-RESTRICTED"]

    def worker(n: int) -> int:
        with requests.Session() as s:
            done = 0
            for i in range(6):
                info = series[(n + i) % len(series)]
                r = image(archive_server, info, i % info.image_count, s)
                sop = info.instances[i % info.image_count].sop_instance_uid
                assert r.content == archive_server.archive.instance_bytes(sop)
                rows = v1(archive_server, "getSOPInstanceUIDs", s, SeriesInstanceUID=info.series_instance_uid)
                assert len(rows.json()) == info.image_count
                done += 1
            return done

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert sum(pool.map(worker, range(16), timeout=60)) == 96


def test_request_records_and_log(make_server: MakeServer, tmp_path: Path) -> None:
    log_file = tmp_path / "requests.log"
    srv = make_server(request_log=str(log_file))
    form = {"username": "alice", "password": "wonderland", "client_id": "NBIA", "grant_type": "password"}
    access = requests.post(f"{srv.url}/nbia-api/oauth/token", data=form, timeout=TIMEOUT).json()[
        "access_token"
    ]
    r = requests.get(
        f"{srv.url}/nbia-api/services/v2/getCollectionValues",
        headers={"Authorization": f"Bearer {access}"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    assert v1(srv, "getSeriesSize").status_code == 400
    records = srv.requests
    assert [(x.method, x.endpoint, x.status, x.user) for x in records] == [
        ("POST", "oauth/token", 200, "alice"),
        ("GET", "getCollectionValues", 200, "alice"),
        ("GET", "getSeriesSize", 400, ""),
    ]
    assert records[1].bytes == len(r.content) and records[1].path.endswith("/v2/getCollectionValues")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 3 and lines[1].split("\t")[1:] == [
        "GET",
        "getCollectionValues",
        "200",
        str(len(r.content)),
        "alice",
    ]
    text = log_file.read_text()
    assert access not in text and "wonderland" not in text
    srv.clear_requests()
    assert srv.requests == []


# -- --data DIR ------------------------------------------------------------------------------------------


def write_dicom(
    path: Path, patient: str, study: str, series: str, number: int, collection: str | None
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series
    ds.Modality, ds.InstanceNumber, ds.SeriesNumber = "CT", number, 7
    ds.StudyDate, ds.SeriesDescription = "20200102", "AX/COR"
    if collection:
        ds.private_block(0x0013, "CTP", create=True).add_new(0x10, "LO", collection)
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(range(32)) * number
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path.read_bytes()


def test_data_dir(make_server: MakeServer, tmp_path: Path) -> None:
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    files = {
        write_dicom(tmp_path / "CollA" / "p1" / f"{n}.dcm", "P-1", study, s1, n, None): s1 for n in (2, 1, 3)
    }
    tagged = write_dicom(tmp_path / "other" / "x.dcm", "P-2", generate_uid(), s2, 1, "Tagged Coll")
    (tmp_path / "CollA" / "notes.txt").write_text("not DICOM")
    srv = make_server(data_dir=str(tmp_path))
    assert [r["Collection"] for r in v1(srv, "getCollectionValues").json()] == ["CollA", "Tagged Coll"]
    rows = v1(srv, "getSeries", Collection="colla").json()
    assert len(rows) == 1 and rows[0]["SeriesDescription"] == "AX/COR" and rows[0]["ImageCount"] == 3
    assert rows[0]["FileSize"] == sum(len(b) for b in files)
    sops = [r["SOPInstanceUID"] for r in v1(srv, "getSOPInstanceUIDs", SeriesInstanceUID=s1).json()]
    got = {v1(srv, "getSingleImage", SeriesInstanceUID=s1, SOPInstanceUID=sop).content for sop in sops}
    assert got == set(files)
    numbers = [srv.archive.instance(sop)[1].instance_number for sop in sops]
    assert sorted(numbers) == [1, 2, 3]  # in database order
    (uid2,) = [s.series_instance_uid for s in srv.archive.iter_series() if s.collection == "Tagged Coll"]
    assert srv.archive.instance_bytes(srv.archive.series(uid2).instances[0].sop_instance_uid) == tagged
    with pytest.raises(ServerConfigError):
        ArchiveServer(ServerConfig(data_dir=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ServerConfigError):
        ArchiveServer(ServerConfig(data_dir=str(empty)))


# -- nbiafs serve ----------------------------------------------------------------------------------------


def wait_for_file(path: Path, proc: subprocess.Popen[str], deadline: float) -> str:
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no port file; exit status {proc.poll()}")


def test_serve_subprocess(tmp_path: Path) -> None:
    port_file, passwords, log_file = tmp_path / "port", tmp_path / "passwords", tmp_path / "requests.log"
    passwords.write_text("alice:s3cret pass\n")
    passwords.chmod(0o600)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NBIA_SERVE_API_KEYS": "k1,k2",
        "NBIA_SERVE_PASSWORD": "envpw",
    }
    cmd = [sys.executable, "-m", "nbiafs", "serve", "--port", "0", "--port-file", str(port_file),
           "--user", "alice", "--user", "bob", "--password-file", str(passwords),
           "--request-log", str(log_file), "--latency", "0.01"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        port = int(wait_for_file(port_file, proc, time.monotonic() + 30))
        url = f"http://127.0.0.1:{port}"
        r = requests.get(f"{url}/nbia-api/services/v1/getCollectionValues", timeout=TIMEOUT)
        assert r.status_code == 200 and "NBIAFS-RESTRICTED" not in r.text
        token_url = f"{url}/nbia-api/oauth/token"
        for user, password in (("alice", "s3cret pass"), ("bob", "envpw")):
            form = {"username": user, "password": password, "client_id": "NBIA", "grant_type": "password"}
            access = requests.post(token_url, data=form, timeout=TIMEOUT).json()["access_token"]
            r = requests.get(
                f"{url}/nbia-api/services/v2/getCollectionValues",
                headers={"Authorization": f"Bearer {access}"},
                timeout=TIMEOUT,
            )
            assert "NBIAFS-RESTRICTED" in r.text
        r = requests.get(
            f"{url}/services/v3/TCIA/query/getModalityValues", headers={"api_key": "k2"}, timeout=10
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert url in out
        assert "s3cret" not in out + err + log_file.read_text() and "envpw" not in log_file.read_text()
        assert len(log_file.read_text().splitlines()) == 6
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_without_password_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NBIA_SERVE_PASSWORD"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "nbiafs", "serve", "--port", "0", "--user", "carol"],
        env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    # The status is the CLI's for a configuration error (nbiafs/cli decides which); it is never 0.
    assert out.returncode not in (0, None) and "no password for user carol" in out.stderr


def test_a_bug_is_a_500_and_serving_goes_on(make_server: MakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbiafs.server.handler as handler

    srv = make_server()

    def broken(*args: object) -> list[dict[str, object]]:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(handler.queries, "answer", broken)
    with requests.Session() as s:
        assert v1(srv, "getCollectionValues", s).status_code == 500
        monkeypatch.undo()
        assert v1(srv, "getCollectionValues", s).status_code == 200
