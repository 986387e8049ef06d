"""The benchmark's corpora: DICOM files generated with pydicom, never committed.

Laid out exactly as a ``--layout uid`` mount shows them, ``<Collection>/<PatientID>/<StudyInstanceUID>/
<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, so a copy out of the mount and the corpus compare path by path.
``nbiafs serve --data DIR`` names a collection after the first folder level under DIR.

- ``BENCH-TINY``: one series of 64x64 16-bit instances (about 9 KB each, like the old NBIAFS-Bench).
- ``BENCH-CT``: one series of 512x512 16-bit CT slices (about 0.5 MB each): a smooth phantom body (soft
  tissue, fat, lungs, spine, table) with Gaussian noise (20 HU), so DEFLATE level 1 saves about 44 %, like real CT.
- ``BENCH-MR``: patients x 4 series x instances of 256x256 16-bit MR slices (about 130 KB each).
- ``BENCH-LISTING``: many series of 1-5 instances with 8x8 pixels, for listing at scale.

UIDs are derived from names (``2.25.<hash>``), so the same sizes always give the same files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

VERSION = "2"  # bump when the generated files change: cached corpora of another version are not reused
COMPLETE = "COMPLETE"  # marker file: the corpus was generated to the end

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

TINY, CT, MR, LISTING = "BENCH-TINY", "BENCH-CT", "BENCH-MR", "BENCH-LISTING"


@dataclass(frozen=True)
class Sizes:
    """How large each corpus is."""

    tiny: int = 200  # instances
    ct: int = 300  # instances
    mr_patients: int = 10
    mr_series: int = 4  # per patient (one study each)
    mr_instances: int = 30  # per series
    listing_series: int = 2000  # of 1-5 instances

    def key(self) -> str:
        mr = f"{self.mr_patients}x{self.mr_series}x{self.mr_instances}"
        return f"t{self.tiny}-c{self.ct}-m{mr}-l{self.listing_series}"


@dataclass
class SeriesFiles:
    """One series of the corpus: its UID, its folder (relative to the corpus root) and its files."""

    uid: str
    rel: Path
    files: list[Path] = field(default_factory=list)  # relative to the corpus root, sorted


@dataclass
class Corpus:
    """A generated corpus on disk, indexed by collection."""

    root: Path
    collections: dict[str, list[SeriesFiles]]
    _digests: dict[Path, str] = field(default_factory=dict)

    def series(self, collection: str) -> list[SeriesFiles]:
        return self.collections[collection]

    def files(self, collection: str) -> list[Path]:
        return [f for s in self.collections[collection] for f in s.files]

    def nbytes(self, collection: str) -> int:
        return sum((self.root / f).stat().st_size for f in self.files(collection))

    def directories(self, collection: str) -> int:
        """Directories under and including the collection's folder."""
        return sum(1 for _ in os.walk(self.root / collection))

    def digest(self, rel: Path) -> str:
        """sha256 of a corpus file (computed once)."""
        found = self._digests.get(rel)
        if found is None:
            found = self._digests[rel] = sha256_file(self.root / rel)
        return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _uid(*parts: object) -> str:
    """A deterministic ``2.25.`` UID (pydicom's generate_uid ignores its entropy without a prefix)."""
    text = "\x00".join(["nbiafs-bench", VERSION, *map(str, parts)]).encode()
    return f"2.25.{int.from_bytes(hashlib.sha256(text).digest()[:16], 'big')}"


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return (x - (n - 1) / 2) / n, (y - (n - 1) / 2) / n  # -0.5 .. 0.5


def ct_pixels(rng: np.random.Generator, n: int, index: int, count: int) -> np.ndarray:
    """A CT slice in stored values (HU + 1024): a body phantom plus noise (DEFLATE level 1 saves ~44 %)."""
    x, y = _grid(n)
    z = (index + 0.5) / max(count, 1) - 0.5  # -0.5 (feet) .. 0.5 (head)
    hu = np.full((n, n), -1000.0, dtype=np.float32)
    body = (x / 0.40) ** 2 + ((y - 0.02) / (0.30 - 0.04 * z)) ** 2
    hu[body < 1.0] = -90.0  # subcutaneous fat
    hu[body < 0.80] = 40.0 + 15.0 * np.sin(6 * x[body < 0.80] + 4 * z)  # soft tissue, smoothly varying
    lung_r = max(0.0, 0.14 - 0.25 * z * z)
    for cx in (-0.16, 0.16):
        lung = ((x - cx) / (0.9 * lung_r + 1e-6)) ** 2 + ((y + 0.02) / (lung_r + 1e-6)) ** 2
        hu[lung < 1.0] = -850.0
    spine = (x**2 + (y - 0.2) ** 2) < 0.04**2
    hu[spine] = 700.0
    hu[(np.abs(y - 0.36) < 0.01) & (np.abs(x) < 0.45)] = 150.0  # the table
    noise = rng.normal(0.0, 20.0, size=(n, n)).astype(np.float32)  # quantum noise, everywhere
    return np.clip(hu + noise + 1024.0, 0, 4095).astype(np.uint16)


def mr_pixels(rng: np.random.Generator, n: int, index: int, count: int, contrast: int) -> np.ndarray:
    """An MR head slice: brain, ventricles, skull, with Rician-looking background noise."""
    x, y = _grid(n)
    z = (index + 0.5) / max(count, 1) - 0.5
    scale = max(0.2, 1.0 - 2.5 * z * z)
    r = (x / (0.38 * scale)) ** 2 + (y / (0.44 * scale)) ** 2
    img = np.zeros((n, n), dtype=np.float32)
    img[r < 1.0] = 150.0  # skull / scalp
    img[r < 0.85] = 500.0 + 120.0 * contrast + 40.0 * np.cos(8 * x[r < 0.85] + 3 * y[r < 0.85])
    vent = ((x / 0.06) ** 2 + (y / 0.12) ** 2) < 1.0
    img[vent & (r < 0.85)] = 200.0 if contrast % 2 else 900.0
    noise = np.abs(rng.normal(0.0, 12.0, size=(n, n))).astype(np.float32)
    return np.clip(img + noise, 0, 4095).astype(np.uint16)


def _dataset(
    *,
    sop_class: str,
    sop_uid: str,
    modality: str,
    patient: str,
    study_uid: str,
    series_uid: str,
    series_number: int,
    instance: int,
    pixels: np.ndarray,
    description: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _uid("implementation")
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = "20200101"
    ds.StudyTime = "101500"
    ds.Modality = modality
    ds.Manufacturer = "nbiafs-bench"
    ds.StudyDescription = f"{modality} study"
    ds.SeriesDescription = description
    ds.PatientName = patient
    ds.PatientID = patient
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    rows, cols = pixels.shape
    spacing = round(350.0 / cols, 4)
    thickness = 2.5 if modality == "CT" else 5.0
    ds.FrameOfReferenceUID = _uid("frame", series_uid)
    ds.ImagePositionPatient = [-175.0, -175.0, -100.0 + instance * thickness]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = -100.0 + instance * thickness
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
    ds.PixelData = pixels.tobytes()
    return ds


def _write_series(
    root: Path,
    collection: str,
    patient: str,
    study_uid: str,
    series_key: str,
    count: int,
    modality: str,
    series_number: int,
    pixels_of: object,
) -> None:
    series_uid = _uid("series", series_key)
    folder = root / collection / patient / study_uid / series_uid
    folder.mkdir(parents=True, exist_ok=True)
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    for i in range(count):
        sop_uid = _uid("sop", series_key, i)
        ds = _dataset(
            sop_class=sop_class,
            sop_uid=sop_uid,
            modality=modality,
            patient=patient,
            study_uid=study_uid,
            series_uid=series_uid,
            series_number=series_number,
            instance=i + 1,
            pixels=pixels_of(i),  # type: ignore[operator]
            description=f"{collection} series {series_number}",
        )
        pydicom.dcmwrite(folder / f"{sop_uid}.dcm", ds, enforce_file_format=True)


def generate(root: Path, sizes: Sizes) -> None:
    """Write every corpus under ``root``."""
    rng = np.random.default_rng(20240901)

    study = _uid("study", TINY)
    _write_series(
        root, TINY, "TINY-001", study, TINY, sizes.tiny, "CT", 1,
        lambda i: ct_pixels(rng, 64, i, sizes.tiny),
    )  # fmt: skip

    study = _uid("study", CT)
    _write_series(
        root, CT, "CT-001", study, CT, sizes.ct, "CT", 2,
        lambda i: ct_pixels(rng, 512, i, sizes.ct),
    )  # fmt: skip

    for p in range(sizes.mr_patients):
        patient = f"MR-{p + 1:03d}"
        study = _uid("study", MR, p)
        for s in range(sizes.mr_series):
            _write_series(
                root, MR, patient, study, f"{MR}-{p}-{s}", sizes.mr_instances, "MR", s + 1,
                lambda i, s=s: mr_pixels(rng, 256, i, sizes.mr_instances, s),
            )  # fmt: skip

    # listing scale: patients of 4 studies of 5 series each, 1-5 instances per series
    tiny_pixels = np.arange(64, dtype=np.uint16).reshape(8, 8)
    per_patient = 20
    for k in range(sizes.listing_series):
        p, rest = divmod(k, per_patient)
        st = rest // 5
        patient = f"LIST-{p + 1:04d}"
        study = _uid("study", LISTING, p, st)
        _write_series(
            root, LISTING, patient, study, f"{LISTING}-{k}", 1 + (k * 7) % 5, "MR", rest % 5 + 1,
            lambda i: tiny_pixels,
        )  # fmt: skip


def index(root: Path) -> Corpus:
    """The corpus found under ``root`` (collections, series, files)."""
    collections: dict[str, list[SeriesFiles]] = {}
    for coll in sorted(p for p in root.iterdir() if p.is_dir()):
        series: list[SeriesFiles] = []
        for folder in sorted(coll.glob("*/*/*")):
            files = sorted(f.relative_to(root) for f in folder.iterdir() if f.suffix == ".dcm")
            series.append(SeriesFiles(folder.name, folder.relative_to(root), files))
        collections[coll.name] = series
    return Corpus(root, collections)


def prepare(base: Path, sizes: Sizes) -> tuple[Corpus, bool]:
    """The corpus for ``sizes`` under ``base`` (reused if complete, else generated); and whether it was new."""
    target = base / f"nbiafs-bench-v{VERSION}-{sizes.key()}"
    if (target / COMPLETE).exists():
        return index(target / "data"), False
    if target.exists():
        shutil.rmtree(target)
    partial = base / (target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "data").mkdir(parents=True)
    generate(partial / "data", sizes)
    (partial / COMPLETE).write_text(VERSION + "\n", encoding="ascii")
    partial.rename(target)
    return index(target / "data"), True


def deflate_saving(paths: Iterator[Path] | list[Path]) -> float:
    """Fraction of bytes DEFLATE level 1 (the server's ZIP level) saves on these files."""
    raw = packed = 0
    for path in paths:
        data = path.read_bytes()
        raw += len(data)
        packed += len(zlib.compress(data, 1))
    return 1.0 - packed / raw if raw else 0.0
