"""dicomcheck: the element walk accepts whole DICOM files only, and refuses what pydicom cannot read."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
import pytest

from nbiafs.errors import BadResponseError
from nbiafs.fs import dicomcheck
from nbiafs.fs.dicomcheck import check_instance, complete_sop_instance_uid, header_sop_instance_uid
from tests.fs.helpers import dicom_bytes

SOP = "1.2.826.0.1.3680043.8.498.1"
KINDS = [{}, {"implicit": True}, {"undefined": True}, {"implicit": True, "undefined": True}]


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    return path


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1
    return data.replace(old, new, 1)


@pytest.mark.parametrize("kind", KINDS, ids=["explicit", "implicit", "undefined", "implicit-undefined"])
def test_whole_files_are_accepted_and_every_cut_refused(tmp_path: Path, kind: dict[str, bool]) -> None:
    data = dicom_bytes(SOP, 64, **kind)
    check_instance(_write(tmp_path, data), SOP)
    assert complete_sop_instance_uid(data) == SOP
    assert header_sop_instance_uid(data) == SOP
    for end in range(len(data) - 64 - 7, len(data)):  # anywhere in the pixel data element
        with pytest.raises(BadResponseError):
            complete_sop_instance_uid(data[:end])
    for end in range(0, 140):  # preamble, DICM, file meta
        with pytest.raises(BadResponseError):
            complete_sop_instance_uid(data[:end])


def test_wrong_sop_instance_uid_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadResponseError, match="not '1.2.3'"):
        check_instance(_write(tmp_path, dicom_bytes(SOP)), "1.2.3")


def test_large_file_is_walked_through_mmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicomcheck, "_MMAP_FROM", 256)
    data = dicom_bytes(SOP, 1000)
    check_instance(_write(tmp_path, data), SOP)
    with pytest.raises(BadResponseError, match="incomplete"):
        check_instance(_write(tmp_path, data[:-3]), SOP)


def test_header_is_read_without_the_rest() -> None:
    data = dicom_bytes(SOP, 4096)
    assert header_sop_instance_uid(data[: len(data) // 2]) == SOP
    with pytest.raises(BadResponseError):
        header_sop_instance_uid(data[:200])
    with pytest.raises(BadResponseError, match="not DICOM"):
        header_sop_instance_uid(b"<html>" * 40)


def _pydicom_refuses(data: bytes) -> bool:
    try:
        pydicom.dcmread(io.BytesIO(data), defer_size=4096)
    except Exception:
        return True
    return False


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("old", "new", "pydicom_too"),
    [
        (b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00U\xbb", True),  # file meta element of unknown VR
        (b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00ZI", False),  # likewise (pydicom does not read that one)
        (b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1/2.1\x00", False),  # transfer syntax not a UID
        (b"\x08\x00\x05\x00CS", b"\x08\x00\x05\x00YS", True),  # Specific Character Set of unknown VR
        (b"ISO_IR 100", b"ISO_IR\x00100", True),  # ... holding a NUL
        (b"\x10\x00\x20\x00LO", b"\x10\x00\x20\x00L\x01", False),  # a VR that is not two capitals
    ],
    ids=["meta-vr", "meta-vr-unread", "syntax", "charset-vr", "charset-nul", "data-vr"],
)
def test_what_pydicom_cannot_read_is_refused(
    tmp_path: Path, old: bytes, new: bytes, pydicom_too: bool
) -> None:
    data = dicom_bytes(SOP, 64)
    data = _replace_once(
        data, b"\x10\x00\x20\x00LO", b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100\x10\x00\x20\x00LO"
    )
    check_instance(_write(tmp_path, data), SOP)  # the charset inserted before PatientID is fine
    bad = _replace_once(data, old, new)
    assert len(bad) == len(data)
    if pydicom_too:
        assert _pydicom_refuses(bad)
    with pytest.raises(BadResponseError):
        check_instance(_write(tmp_path, bad), SOP)


def test_file_meta_group_length_must_be_four_bytes() -> None:
    data = dicom_bytes(SOP, 64)
    head = data[:132]
    group, elem, vr, length = struct.unpack_from("<HH2sH", data, 132)
    assert (group, elem, vr, length) == (2, 0, b"UL", 4)
    bad = head + struct.pack("<HH2sH", 2, 0, b"UL", 2) + data[144:146] + data[144:]
    with pytest.raises(BadResponseError):
        complete_sop_instance_uid(bad)


def test_deflated_data_set(tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(SOP, 64)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    check_instance(_write(tmp_path, out.getvalue()), SOP)
    assert header_sop_instance_uid(out.getvalue()) == SOP
    with pytest.raises(BadResponseError):
        check_instance(_write(tmp_path, out.getvalue()[:-5]), SOP)
