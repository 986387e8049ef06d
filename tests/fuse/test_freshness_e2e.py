"""A series published on the server while a mount runs appears within one poll interval, with no remount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.helpers import MakeServer
from tests.mountutil import mounted, needs_fuse, wait_until

pytestmark = [pytest.mark.mount, needs_fuse]

STUDY = "1.2.826.0.1.3680043.8.498.1"
PATIENT = "FRESH-001"


def write_series(directory: Path, series_uid: str, count: int) -> set[str]:
    """``count`` small CT instances of one series under ``directory``; returns their SOPInstanceUIDs."""
    directory.mkdir(parents=True, exist_ok=True)
    sops = set()
    for i in range(count):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
        ds.PatientID, ds.Modality, ds.InstanceNumber = PATIENT, "CT", i + 1
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = bytes(32)
        ds.save_as(directory / f"{i:03d}.dcm", enforce_file_format=True)
        sops.add(sop)
    return sops


def test_a_published_series_appears_without_a_remount(make_server: MakeServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, second = generate_uid(), generate_uid()
    write_series(data / "FRESH" / "a", first, 2)
    srv = make_server(data_dir=str(data))
    with mounted(
        tmp_path / "mnt", srv.url, tmp_path / "cache", "--layout", "uid", "--poll-interval", "1"
    ) as m:
        study = m.path / "FRESH" / PATIENT / STUDY
        assert os.listdir(study) == [first]
        sops = write_series(data / "FRESH" / "b", second, 3)
        assert srv.rescan() == 1  # the server publishes it, released now
        assert wait_until(lambda: second in os.listdir(study), 15), m.log()[-2000:]
        assert {name.removesuffix(".dcm") for name in os.listdir(study / second)} == sops
        assert all((study / second / f"{sop}.dcm").read_bytes()[128:132] == b"DICM" for sop in sops)
        updated = [r for r in srv.requests if r.endpoint == "getUpdatedSeries"]
        assert updated, "the mount never asked what changed"
