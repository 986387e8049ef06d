"""The archive server's downloads and synthetic data: headers, ZIP layouts, DICOM validity, determinism."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
import requests

from nbiafs.server import ArchiveServer, SeriesInfo
from nbiafs.server.synthetic import BENCH_COLLECTION, build_synthetic_archive

TIMEOUT = 20


def v1(srv: ArchiveServer, endpoint: str, **params: str) -> requests.Response:
    return requests.get(f"{srv.url}/nbia-api/services/v1/{endpoint}", params=params, timeout=TIMEOUT)


def series_of(srv: ArchiveServer, collection: str, modality: str) -> SeriesInfo:
    return next(s for s in srv.archive.iter_series() if s.collection == collection and s.modality == modality)


def test_single_image_headers_and_bytes(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, "RIDER Synth CT", "CT")
    inst = series.instances[3]
    r = v1(
        archive_server,
        "getSingleImage",
        SeriesInstanceUID=series.series_instance_uid,
        SOPInstanceUID=inst.sop_instance_uid,
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/dicom"
    assert r.headers["Content-Length"] == str(inst.size) == str(len(r.content))
    assert r.headers["Content-Disposition"] == f"attachment; filename={inst.sop_instance_uid}.dcm"
    assert r.content == archive_server.archive.instance_bytes(inst.sop_instance_uid)
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.SOPInstanceUID == inst.sop_instance_uid and ds.SeriesInstanceUID == series.series_instance_uid
    missing = v1(
        archive_server, "getSingleImage", SeriesInstanceUID=series.series_instance_uid, SOPInstanceUID="1.2.3"
    )
    assert missing.status_code == 404


def test_get_image_zip_layout(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, "RIDER Synth CT", "CT")
    r = v1(archive_server, "getImage", SeriesInstanceUID=series.series_instance_uid)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in r.headers and r.headers["Transfer-Encoding"] == "chunked"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    assert names[0] == "LICENSE" and b"creativecommons" in zf.read("LICENSE")
    assert names[1:] == [f"{i:08d}.dcm" for i in range(1, series.image_count + 1)]
    by_uid = {pydicom.dcmread(io.BytesIO(zf.read(n))).SOPInstanceUID: zf.read(n) for n in names[1:]}
    assert by_uid == {
        i.sop_instance_uid: archive_server.archive.instance_bytes(i.sop_instance_uid)
        for i in series.instances
    }
    renamed = v1(archive_server, "getImage", SeriesInstanceUID=series.series_instance_uid, NewFileNames="Yes")
    names = zipfile.ZipFile(io.BytesIO(renamed.content)).namelist()
    assert names[0] == "LICENSE" and names[1:4] == ["1-001.dcm", "1-002.dcm", "1-003.dcm"]


def test_get_image_with_md5_hash(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, "NBIAFS-MR-Brain", "MR")
    r = v1(archive_server, "getImageWithMD5Hash", SeriesInstanceUID=series.series_instance_uid)
    assert r.status_code == 200 and "Content-Length" not in r.headers
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    assert "LICENSE" not in names and names[-1] == "md5hashes.csv"
    assert names[:-1] == [f"{i:08d}.dcm" for i in range(1, series.image_count + 1)]
    rows = list(csv.reader(io.StringIO(zf.read("md5hashes.csv").decode())))
    assert rows[0] == ["Filename", "MD5Hash"]
    assert {name: digest for name, digest in rows[1:]} == {
        n: hashlib.md5(zf.read(n)).hexdigest() for n in names[:-1]
    }


def test_synthetic_archive_shape(archive_server: ArchiveServer) -> None:
    archive = archive_server.archive
    public = [c for c in archive.collection_names() if c != "NBIAFS-RESTRICTED"]
    assert len(public) >= 3 and any(" " in c for c in public)
    assert {s.modality for s in archive.iter_series()} >= {"CT", "MR", "PT", "CR", "SEG"}
    assert archive.total_bytes() < 25 * 1024 * 1024
    bench = [s for s in archive.iter_series() if s.collection == BENCH_COLLECTION]
    assert len(bench) == 1 and bench[0].image_count == 200
    descriptions = {s.series_description for s in archive.iter_series()}
    assert {"CHEST/ABD", "BRAIN W/WO_AH32", "IRM FEMUR GAUCHE C-/C+"} <= descriptions
    assert any(d and d.endswith(" ") for d in descriptions) and any(d and "  " in d for d in descriptions)
    assert any(d and '"' in d for d in descriptions) and None in descriptions
    assert any(s.series_number is None for s in archive.iter_series())
    for study in archive.studies.values():
        numbers = [s.series_number for s in study.series if s.series_number is not None]
        if len(numbers) != len(set(numbers)):
            break
    else:
        pytest.fail("no study repeats a SeriesNumber")
    ct = series_of(archive_server, "RIDER Synth CT", "CT")
    assert len({i.size for i in ct.instances}) > 1  # sizes differ within a series
    for series, inst in archive.iter_instances():
        ds = pydicom.dcmread(io.BytesIO(archive.instance_bytes(inst.sop_instance_uid)))
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == inst.sop_class_uid == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SeriesInstanceUID == series.series_instance_uid
        assert ds[0x0013, 0x1010].value == series.collection
        if series.modality in ("CT", "MR", "PT") and inst.instance_number == 1:
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
            for keyword in (
                "ImagePositionPatient",
                "ImageOrientationPatient",
                "PixelSpacing",
                "SliceThickness",
            ):
                assert keyword in ds


def test_two_builds_are_byte_identical(archive_server: ArchiveServer) -> None:
    a, b = build_synthetic_archive(7), build_synthetic_archive(7)
    assert [s.series_instance_uid for s in a.iter_series()] == [
        s.series_instance_uid for s in b.iter_series()
    ]
    for _, inst in a.iter_instances():
        assert a.instance_bytes(inst.sop_instance_uid) == b.instance_bytes(inst.sop_instance_uid)
    assert archive_server.config.seed != 7
    assert not set(a.series_by_uid) & set(archive_server.archive.series_by_uid)


def test_two_processes_agree(archive_server: ArchiveServer) -> None:
    code = (
        "import hashlib;from nbiafs.server.synthetic import synthetic_archive as s;a=s(0);"
        "h=hashlib.sha256();[h.update(a.instance_bytes(i.sop_instance_uid)) for _,i in a.iter_instances()];"
        "print(h.hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    digest = hashlib.sha256()
    for _, inst in archive_server.archive.iter_instances():
        digest.update(archive_server.archive.instance_bytes(inst.sop_instance_uid))
    assert out.stdout.strip() == digest.hexdigest()


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed")
def test_dcm2niix_makes_one_volume(archive_server: ArchiveServer, tmp_path: Path) -> None:
    series = series_of(archive_server, "RIDER Synth CT", "CT")
    r = v1(archive_server, "getImage", SeriesInstanceUID=series.series_instance_uid)
    src = tmp_path / "dicom"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(src)
    (src / "LICENSE").unlink()
    out = tmp_path / "nifti"
    out.mkdir()
    subprocess.run(
        ["dcm2niix", "-z", "n", "-f", "vol", "-o", str(out), str(src)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    volumes = sorted(out.glob("*.nii"))
    assert [v.name for v in volumes] == ["vol.nii"]
    header = volumes[0].read_bytes()[:348]
    dims = [int.from_bytes(header[40 + 2 * i : 42 + 2 * i], "little") for i in range(4)]
    assert dims == [3, 64, 64, series.image_count]
