"""Images (facts §5, §6): single images, ZIP layouts and order, NewFileNames, MD5s; the synthetic data."""

from __future__ import annotations

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

from nbiafs.server import ArchiveServer
from nbiafs.server.ordering import java_hashmap_order
from nbiafs.server.synthetic import BENCH_COLLECTION, build_synthetic_archive
from tests.server.support import CT, MR, NULL_500, PETCR, RESTRICTED, get, login, post, rows, series_of


def zip_of(r: requests.Response) -> zipfile.ZipFile:
    assert r.status_code == 200, (r.status_code, r.text[:200])
    return zipfile.ZipFile(io.BytesIO(r.content))


def sop_of(zf: zipfile.ZipFile, name: str) -> str:
    return str(pydicom.dcmread(io.BytesIO(zf.read(name))).SOPInstanceUID)


def test_single_image_headers_and_bytes(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, CT, "CT")
    inst = series.instances[3]
    for prefix in ("v1", "v4"):
        r = get(
            archive_server,
            prefix,
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


def test_refused_and_unknown_single_images_are_500(keycloak: ArchiveServer) -> None:
    series = series_of(keycloak, CT, "CT")
    secret = series_of(keycloak, RESTRICTED, "CT")
    guest = login(keycloak, "nbia_guest", "")["access_token"]
    cases = [
        (series.series_instance_uid, "1.2.3"),
        ("1.2.3", series.instances[0].sop_instance_uid),
        (secret.series_instance_uid, secret.instances[0].sop_instance_uid),
        (series_of(keycloak, MR, "MR").series_instance_uid, series.instances[0].sop_instance_uid),
    ]
    for prefix, token in (("v1", None), ("v2", guest), ("v4", None)):
        for series_uid, sop_uid in cases:
            r = get(
                keycloak,
                prefix,
                "getSingleImage",
                token,
                SeriesInstanceUID=series_uid,
                SOPInstanceUID=sop_uid,
            )
            assert r.status_code == 500 and r.headers["Content-Type"] == "text/plain" and r.text == NULL_500
    alice = login(keycloak)["access_token"]
    r = get(
        keycloak,
        "v2",
        "getSingleImage",
        alice,
        SeriesInstanceUID=secret.series_instance_uid,
        SOPInstanceUID=secret.instances[0].sop_instance_uid,
    )
    assert r.content == keycloak.archive.instance_bytes(secret.instances[0].sop_instance_uid)


def test_refused_and_unknown_series_zips_are_400(keycloak: ArchiveServer) -> None:
    secret = series_of(keycloak, RESTRICTED, "CT").series_instance_uid
    guest = login(keycloak, "nbia_guest", "")["access_token"]
    for uid in (secret, "1.2.3"):
        granted = (
            f"The user has not been granted the access to image with given SeriesInstanceUID,{uid}. "
            "Please contact System Admin to resolve this issue."
        )
        for prefix, token, text in (
            ("v1", None, f"Image with given SeriesInstanceUID,{uid}, is not in public domain."),
            ("v2", guest, granted),
            ("v4", None, granted),
        ):
            for endpoint in ("getImage", "getImageWithMD5Hash"):
                r = get(keycloak, prefix, endpoint, token, SeriesInstanceUID=uid)
                assert r.status_code == 400 and r.text == text, (prefix, endpoint)
                assert r.headers["Content-Type"] == "application/json"


def test_database_order(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, CT, "CT")
    by_number = [i.sop_instance_uid for i in sorted(series.instances, key=lambda i: i.instance_number)]
    sops = [
        r["SOPInstanceUID"]
        for r in rows(
            get(archive_server, "v1", "getSOPInstanceUIDs", SeriesInstanceUID=series.series_instance_uid)
        )
    ]
    assert sorted(sops) == sorted(by_number) and sops != by_number
    again = [
        r["SOPInstanceUID"]
        for r in rows(
            get(archive_server, "v4", "getSOPInstanceUIDs", SeriesInstanceUID=series.series_instance_uid)
        )
    ]
    assert again == sops  # stable
    zf = zip_of(get(archive_server, "v1", "getImage", SeriesInstanceUID=series.series_instance_uid))
    names = zf.namelist()
    assert names[1:] == [f"{i:08d}.dcm" for i in range(1, series.image_count + 1)]
    assert [sop_of(zf, n) for n in names[1:]] == sops
    md5_zip = zip_of(
        get(archive_server, "v1", "getImageWithMD5Hash", SeriesInstanceUID=series.series_instance_uid)
    )
    assert [sop_of(md5_zip, n) for n in md5_zip.namelist()[:-1]] == sops


def test_get_image_zip_layout(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, CT, "CT")
    r = get(archive_server, "v1", "getImage", SeriesInstanceUID=series.series_instance_uid)
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == f'attachment; filename="{series.series_instance_uid}.zip"'
    assert "Content-Length" not in r.headers and r.headers["Transfer-Encoding"] == "chunked"
    zf = zip_of(r)
    names = zf.namelist()
    assert (
        names[0] == "LICENSE"
        and b"creativecommons" in zf.read("LICENSE")
        and CT.encode() in zf.read("LICENSE")
    )
    assert all(info.flag_bits & 0x08 and info.compress_type == zipfile.ZIP_DEFLATED for info in zf.infolist())
    by_uid = {sop_of(zf, n): zf.read(n) for n in names[1:]}
    assert by_uid == {
        i.sop_instance_uid: archive_server.archive.instance_bytes(i.sop_instance_uid)
        for i in series.instances
    }


@pytest.mark.parametrize(
    ("collection", "modality", "first", "last"),
    [
        (CT, "CT", "1-01.dcm", "1-24.dcm"),
        (PETCR, "PT", "1-1.dcm", "1-8.dcm"),
        (BENCH_COLLECTION, "CT", "1-001.dcm", "1-200.dcm"),
    ],
)
def test_new_file_names(
    archive_server: ArchiveServer, collection: str, modality: str, first: str, last: str
) -> None:
    series = series_of(archive_server, collection, modality)
    zf = zip_of(
        get(
            archive_server, "v1", "getImage", SeriesInstanceUID=series.series_instance_uid, NewFileNames="Yes"
        )
    )
    names = zf.namelist()
    assert (
        names[0] == "LICENSE"
        and names[1] == first
        and names[-1] == last
        and len(names) == series.image_count + 1
    )
    numbers = [pydicom.dcmread(io.BytesIO(zf.read(n))).InstanceNumber for n in names[1:]]
    assert numbers == sorted(numbers)  # InstanceNumber order


def md5_rows(zf: zipfile.ZipFile) -> list[tuple[str, str]]:
    text = zf.read("md5hashes.csv").decode()
    assert text.startswith("Filename,MD5Hash\n") and text.endswith("\n") and '"' not in text
    return [(name, digest) for name, digest in (line.split(",") for line in text.splitlines()[1:])]


def test_get_image_with_md5_hash(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, CT, "CT")
    zf = zip_of(
        get(
            archive_server,
            "v2",
            "getImageWithMD5Hash",
            login(archive_server)["access_token"],
            SeriesInstanceUID=series.series_instance_uid,
        )
    )
    names = zf.namelist()
    assert "LICENSE" not in names and names[-1] == "md5hashes.csv"
    assert names[:-1] == [f"{i:08d}.dcm" for i in range(1, series.image_count + 1)]
    listed = md5_rows(zf)
    assert dict(listed) == {n: hashlib.md5(zf.read(n)).hexdigest() for n in names[:-1]}
    assert [n for n, _ in listed] == java_hashmap_order(names[:-1]) != names[:-1]  # HashMap order


def test_v4_include_md5(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, MR, "MR")
    plain = zip_of(get(archive_server, "v4", "getImage", SeriesInstanceUID=series.series_instance_uid))
    assert "md5hashes.csv" not in plain.namelist()
    zf = zip_of(
        get(archive_server, "v4", "getImage", SeriesInstanceUID=series.series_instance_uid, IncludeMD5="Yes")
    )
    names = zf.namelist()
    assert names[0] == "LICENSE" and names[-1] == "md5hashes.csv"
    assert dict(md5_rows(zf)) == {n: hashlib.md5(zf.read(n)).hexdigest() for n in names[1:-1]}
    renamed = zip_of(
        get(
            archive_server,
            "v4",
            "getImage",
            SeriesInstanceUID=series.series_instance_uid,
            IncludeMD5="yes",
            NewFileNames="yes",
        )
    )
    assert {n for n, _ in md5_rows(renamed)} == set(renamed.namelist()[1:-1])


def test_dcm_image(archive_server: ArchiveServer) -> None:
    series = series_of(archive_server, PETCR, "PT")
    zf = zip_of(
        get(
            archive_server,
            "v1",
            "getDCMImage",
            SeriesInstanceUID=series.series_instance_uid,
            MD5Verification="true",
        )
    )
    names = zf.namelist()
    assert names[-1] == "md5hashes.csv"
    assert all(sop_of(zf, n) == n.split("^")[0] and n.endswith(".dcm") for n in names[:-1])
    assert [n for n, _ in md5_rows(zf)] == [n.split("^")[1] for n in names[:-1]]


def test_md5_of_one_image(keycloak: ArchiveServer) -> None:
    series = series_of(keycloak, CT, "CT")
    sop = series.instances[0].sop_instance_uid
    digest = hashlib.md5(keycloak.archive.instance_bytes(sop)).hexdigest()
    guest = login(keycloak, "nbia_guest", "")["access_token"]
    for r in (
        get(keycloak, "v4", "getMD5HashForImage", SOPInstanceUID=sop),
        get(keycloak, "v1", "getM5HashForImage", SOPInstanceUid=sop),
        get(keycloak, "v2", "getM5HashForImage", guest, SOPInstanceUid=sop),
    ):
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/plain" and r.text == digest
    secret = series_of(keycloak, RESTRICTED, "CT").instances[0].sop_instance_uid
    for r in (
        get(keycloak, "v4", "getMD5HashForImage", SOPInstanceUID=secret),
        get(keycloak, "v4", "getMD5HashForImage", SOPInstanceUID="1.2.3"),
        get(keycloak, "v1", "getM5HashForImage", SOPInstanceUid="1.2.3"),
        get(keycloak, "v1", "getM5HashForImage", SOPInstanceUID=sop),  # wrong case: no parameter
    ):
        assert r.status_code == 200 and r.content == b""
    assert get(keycloak, "v4", "getM5HashForImage", SOPInstanceUid=sop).status_code == 404
    assert get(keycloak, "v1", "getMD5HashForImage", SOPInstanceUID=sop).status_code == 404


def test_md5_hierarchy(keycloak: ArchiveServer) -> None:
    def level(**form: str) -> str:
        r = post(keycloak, "v4", "getMD5Hierarchy", form)
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/plain"
        return r.text

    def digest(hashes: list[str]) -> str:
        return hashlib.md5("".join(sorted(hashes)).encode()).hexdigest()

    study = keycloak.archive.studies[series_of(keycloak, MR, "MR").study_instance_uid]
    series_hashes = []
    for s in study.series:
        zf = zip_of(get(keycloak, "v1", "getImageWithMD5Hash", SeriesInstanceUID=s.series_instance_uid))
        from_csv = digest([h for _, h in md5_rows(zf)])  # checkable from md5hashes.csv
        assert level(SeriesInstanceUID=s.series_instance_uid) == from_csv
        series_hashes.append(from_csv)
    study_hash = level(StudyInstanceUID=study.study_instance_uid)
    assert study_hash == digest(series_hashes)
    patient = level(PatientID="BRAIN-001", Collection=MR)
    assert patient == digest([study_hash]) == level(PatientID="BRAIN-001")
    other = level(PatientID="BRAIN-002")
    assert level(Collection=MR) == digest([patient, other])
    assert level(SeriesInstanceUID="1.2.3") == "" and level(StudyInstanceUID="1.2.3") == ""
    secret = series_of(keycloak, RESTRICTED, "CT")
    assert level(StudyInstanceUID=secret.study_instance_uid) == ""


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
    ct = series_of(archive_server, CT, "CT")
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
    series = series_of(archive_server, CT, "CT")
    r = get(archive_server, "v1", "getImage", SeriesInstanceUID=series.series_instance_uid)
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
