"""DICOM tools on a real mount: pydicom reads every file, dcmdump one per series, dcm2niix a CT volume."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from nbiafs.server import ArchiveServer
from tests.mountutil import Mount, archive_files, files_under, mounted, needs_fuse, run

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def mount(archive_server: ArchiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    base = tmp_path_factory.mktemp("dicomtools")
    with mounted(base / "mnt", archive_server.url, base / "cache") as m:
        yield m


def series_dirs(root: Path, pattern: str = "*/*/*/*") -> list[Path]:
    """Series directories under ``root`` (pattern from the mount root: Collection/Patient/Study/Series)."""
    return sorted(p for p in root.glob(pattern) if p.is_dir())


def test_pydicom_reads_every_file(mount: Mount, archive_server: ArchiveServer) -> None:
    archive = archive_server.archive
    files = files_under(mount.path)
    visible = {s.collection for s in archive.iter_series()} - {"NBIAFS-RESTRICTED"}
    expected = {name: data for coll in visible for name, data in archive_files(archive, coll).items()}
    assert sorted(files) == sorted(expected)
    for name, path in files.items():
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == name.removesuffix(".dcm")
        if ds.Modality in ("CT", "MR"):
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns)


def test_dcmdump_one_file_per_series(mount: Mount) -> None:
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmdump (dcmtk) is not installed")
    dirs = series_dirs(mount.path)
    assert len(dirs) >= 10
    for series in dirs:
        first = sorted(series.iterdir())[0]
        done = run(["dcmdump", str(first)], timeout=30)
        assert done.returncode == 0, done.stderr
        assert f"[{first.name.removesuffix('.dcm')}]" in done.stdout
        assert "(0008,0060)" in done.stdout  # Modality


def test_dcm2niix_makes_a_ct_volume(mount: Mount, tmp_path: Path) -> None:
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    ct = next(p for p in series_dirs(mount.path / "RIDER Synth CT", "*/*/*") if len(list(p.iterdir())) == 24)
    done = run(["dcm2niix", "-z", "n", "-f", "vol", "-o", str(tmp_path), str(ct)], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    niftis = sorted(tmp_path.glob("vol*.nii"))
    assert niftis, done.stdout
    header = niftis[0].read_bytes()[:348]
    assert struct.unpack("<i", header[:4])[0] == 348  # sizeof_hdr of NIfTI-1
    dims = struct.unpack("<8h", header[40:56])
    assert dims[0] == 3 and dims[3] == 24, dims
    ds = pydicom.dcmread(next(ct.iterdir()), stop_before_pixels=True)
    assert (dims[1], dims[2]) == (ds.Columns, ds.Rows)
