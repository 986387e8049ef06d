"""The deterministic synthetic archive: small but valid CT, MR, PT, CR and SEG instances made with pydicom.

Every UID is derived from the seed and the object's place in the tree, and no value depends on the clock, so
two archives built with one seed are byte-identical in every process. The archive is built once per process
and seed (:func:`synthetic_archive` is cached) and holds all instance bytes in memory (about 3 MB).

It carries every value that is hostile to file names and parsers on the live servers (as recorded from
them): slashes, double and trailing spaces, embedded quotes, a URL as a
Manufacturer, a collection name with a space, a numeric PatientID, repeated and missing SeriesNumber, missing
descriptions, StudyID and StudyDate. ``NBIAFS-Bench`` holds one 200-instance 64x64 CT series for benchmarks.

Release dates differ per collection, patient and series (2014 to 2023), one series being released at
midnight exactly (2014-12-20), so "after a date" and "on or after" queries return different, checkable
subsets. Collections carry DOIs and (most of them) HTML descriptions for the advanced API. Each SEG names the
image series it segments in a ReferencedSeriesSequence, as real ones do (getDicomTags shows it).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from nbiafs.server.archive import (
    Archive,
    CollectionDescription,
    CollectionInfo,
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
)
from nbiafs.server.config import RESTRICTED_COLLECTION
from nbiafs.server.ordering import database_order

DEMO_CART = "nbiafs-demo-cart"
BENCH_COLLECTION = "NBIAFS-Bench"

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
}
IMPLEMENTATION_VERSION = "NBIAFS_0_1"


@dataclass(frozen=True)
class _S:
    """Recipe of one series."""

    modality: str
    count: int
    number: int | None
    description: str | None
    body_part: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    software: str | None = None
    protocol: str | None = None
    size: int = 64
    annotations: bool = False
    updated: dt.datetime | None = None  # submission and release time when not the patient's


@dataclass(frozen=True)
class _St:
    """Recipe of one study."""

    series: tuple[_S, ...]
    date: dt.datetime | None = None
    description: str | None = None
    study_id: str | None = None
    diagnosis: str | None = None
    event: tuple[str, float] | None = None


@dataclass(frozen=True)
class _P:
    """Recipe of one patient."""

    patient_id: str
    sex: str
    age: str
    studies: tuple[_St, ...]
    added: dt.datetime | None = None  # when the patient was added, if later than the collection release


@dataclass(frozen=True)
class _C:
    """Recipe of one collection."""

    name: str
    released: dt.datetime
    patients: tuple[_P, ...]
    uri: str | None = None
    site: str = "NBIAFS Synthetic Site"
    license: tuple[str, str] = (
        "Creative Commons Attribution 4.0 International License",
        "https://creativecommons.org/licenses/by/4.0/",
    )
    description: str | None = None  # the advanced API's HTML description


def _d(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, ss)


GE = ("GE MEDICAL SYSTEMS", "LightSpeed16", "LightSpeedverrel")
SIEMENS = ("SIEMENS", "Avanto", "syngo MR B17")
URL_MAKER = ("https://www.example.org/scanners/mr-9000", "MR 9000", None)

RECIPE: tuple[_C, ...] = (
    _C(
        name="RIDER Synth CT",
        released=_d(2014, 3, 1, 9, 30, 12),
        uri="https://doi.org/10.7937/K9/TCIA.2015.NBIAFS01",
        description="<p>Synthetic <b>RIDER</b>-like lung CT, repeat scans.</p>",
        patients=(
            _P(
                "RIDER-1129164940",
                "M",
                "063Y",
                (
                    _St(
                        date=_d(2006, 5, 22),
                        description="CHEST",
                        study_id="1",
                        diagnosis="Lung nodule",
                        series=(
                            _S("CT", 24, 2, "CHEST/ABD", "CHEST", *GE, protocol="CHEST/ABD 5mm"),
                            # Released at midnight exactly: "after a date" and "on or after" differ here.
                            _S(
                                "CT",
                                8,
                                3,
                                "Recon 2  LUNG ",
                                "CHEST",
                                *GE,
                                annotations=True,
                                updated=_d(2014, 12, 20),
                            ),
                        ),
                    ),
                ),
            ),
            _P(
                "0042",
                "F",
                "055Y",
                (_St(series=(_S("CT", 12, 1, None),)),),
                added=_d(2015, 3, 2, 14, 2, 11),
            ),
        ),
    ),
    _C(
        name="NBIAFS-MR-Brain",
        released=_d(2018, 6, 15, 11, 45, 52),
        uri="https://doi.org/10.7937/K9/TCIA.2018.NBIAFS02",
        description="<p>Synthetic brain MR with segmentations (<i>SEG</i>).</p>",
        patients=(
            _P(
                "BRAIN-001",
                "F",
                "047Y",
                (
                    _St(
                        date=_d(2010, 1, 7),
                        description='MRI BRAIN "FAST" protocol',
                        study_id="4411",
                        series=(
                            _S("MR", 10, 5, "BRAIN W/WO_AH32", "BRAIN", *SIEMENS, protocol="BRAIN W/WO"),
                            _S("MR", 6, None, "Ax T2 FLAIR ", "BRAIN", *SIEMENS),
                            _S("SEG", 4, 1000, "Segmentation", "BRAIN", "QIICR", "dcmqi", "1.2.4"),
                            _S("SEG", 4, 1000, "Segmentation", "BRAIN", "QIICR", "dcmqi", "1.2.4"),
                        ),
                    ),
                ),
            ),
            _P(
                "BRAIN-002",
                "M",
                "071Y",
                (
                    _St(
                        date=_d(2011, 3, 14),
                        description="IRM GENOU",
                        study_id="77",
                        series=(
                            _S(
                                "MR",
                                8,
                                3,
                                "IRM FEMUR GAUCHE C-/C+",
                                "LEG",
                                *URL_MAKER,
                                updated=_d(2022, 2, 1, 8, 0, 0),
                            ),
                        ),
                    ),
                ),
                added=_d(2022, 2, 1, 8, 0, 0),
            ),
        ),
    ),
    _C(
        name="NBIAFS-PET-CR",
        released=_d(2021, 9, 30, 16, 20, 5),
        patients=(
            _P(
                "PETCR-01",
                "M",
                "066Y",
                (
                    _St(
                        date=_d(2019, 11, 4),
                        description="PET/CT WB",
                        study_id="PET1",
                        event=("Enrollment", 12.0),
                        series=(
                            _S("PT", 8, 601, 'PET WB "AC"', "WHOLEBODY", "Philips", "Gemini TF", "3.3"),
                            _S("CR", 1, 1, "CHEST PA", "CHEST", None),
                        ),
                    ),
                    _St(
                        date=_d(2020, 2, 3),
                        description=None,
                        study_id=None,
                        series=(_S("CR", 1, 2, None, None, "Carestream Health", "DRX-1"),),
                    ),
                ),
            ),
        ),
    ),
    _C(
        name=BENCH_COLLECTION,
        released=_d(2023, 1, 10, 10, 0, 0),
        patients=(
            _P(
                "BENCH-0001",
                "O",
                "050Y",
                (
                    _St(
                        date=_d(2022, 12, 1),
                        description="Bench",
                        study_id="1",
                        series=(_S("CT", 200, 1, "Bench CT 200", "CHEST", *GE),),
                    ),
                ),
            ),
        ),
    ),
    _C(
        name=RESTRICTED_COLLECTION,
        released=_d(2019, 11, 20, 7, 7, 7),
        uri="https://doi.org/10.7937/K9/TCIA.2019.NBIAFS05",
        description="<p>Restricted synthetic data.</p>",
        license=("TCIA Restricted License", "https://www.cancerimagingarchive.net/data-usage-policies"),
        patients=(
            _P(
                "RESTR-001",
                "F",
                "039Y",
                (
                    _St(
                        date=_d(2015, 7, 1),
                        description="RESTRICTED CT",
                        study_id="9",
                        series=(
                            _S("CT", 6, 1, "Restricted CT", "ABDOMEN", *GE),
                            _S("MR", 4, 2, "Restricted MR", "ABDOMEN", *SIEMENS),
                        ),
                    ),
                ),
            ),
        ),
    ),
)

# (collection, patient index, study index, series index) of the default cart's series.
DEMO_CART_SERIES = (("RIDER Synth CT", 0, 0, 0), ("RIDER Synth CT", 0, 0, 1), ("NBIAFS-MR-Brain", 0, 0, 0))


def _uid(seed: int, *path: object) -> str:
    return str(generate_uid(entropy_srcs=[f"nbiafs-synthetic/{seed}/" + "/".join(map(str, path))]))


def _da(value: dt.datetime) -> str:
    return value.strftime("%Y%m%d")


@dataclass
class _Ctx:
    """What one instance needs to know about its place in the tree."""

    seed: int
    coll: _C
    patient: _P
    study: _St
    series: _S
    study_uid: str
    series_uid: str
    frame_uid: str
    extra: dict[str, object] = field(default_factory=dict)


def _pixels(ctx: _Ctx, index: int) -> np.ndarray:
    """Deterministic pixel values of one slice (uint16, stored values)."""
    n = ctx.series.size
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    c = (n - 1) / 2.0
    r2 = ((x - c) / (0.45 * n)) ** 2 + ((y - c) / (0.38 * n)) ** 2
    texture = ((x * 7 + y * 13 + index * 3) % 17).astype(np.float64)
    z = (index + 0.5) / max(ctx.series.count, 1) - 0.5
    sphere = ((x - c) ** 2 + (y - c) ** 2) < (0.25 * n) ** 2 * max(0.0, 1.0 - 4 * z * z)
    modality = ctx.series.modality
    if modality == "CT":
        hu = np.where(r2 < 1.0, 40.0 + texture, -1000.0)
        hu = np.where(sphere, 300.0 + texture, hu)
        return (hu + 1024.0).astype(np.uint16)
    if modality == "PT":
        act = np.where(r2 < 1.0, 200.0 + 10 * texture, 0.0)
        return np.where(sphere, 3000.0, act).astype(np.uint16)
    if modality == "CR":
        cr: np.ndarray = np.where(r2 < 1.0, 2500.0 + 20 * texture, 1000.0 + 20 * texture)
        return cr.astype(np.uint16)
    base = np.where(r2 < 1.0, 400.0 + 20 * texture, 0.0)
    return np.where(sphere, 900.0, base).astype(np.uint16)


def _instance(ctx: _Ctx, index: int, sop_uid: str) -> bytes:
    """One complete DICOM file (Part 10, explicit VR little endian)."""
    s, st, p = ctx.series, ctx.study, ctx.patient
    sop_class = SOP_CLASSES[s.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_uid(0, "implementation"))
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"] if s.modality == "SEG" else ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    if st.date is not None:
        ds.StudyDate = _da(st.date)
        ds.SeriesDate = _da(st.date)
        ds.StudyTime = "101500"
    ds.AccessionNumber = ""
    ds.Modality = s.modality
    if s.manufacturer is not None:
        ds.Manufacturer = s.manufacturer
    if s.model is not None:
        ds.ManufacturerModelName = s.model
    if s.software is not None:
        ds.SoftwareVersions = s.software
    ds.ReferringPhysicianName = ""
    if st.description is not None:
        ds.StudyDescription = st.description
    if s.description is not None:
        ds.SeriesDescription = s.description
    ds.PatientName = p.patient_id
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = p.sex
    ds.PatientAge = p.age
    if s.body_part is not None:
        ds.BodyPartExamined = s.body_part
    if s.protocol is not None:
        ds.ProtocolName = s.protocol
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = ctx.series_uid
    ds.StudyID = st.study_id if st.study_id is not None else ""
    if s.number is not None:
        ds.SeriesNumber = s.number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    # Different lengths within one series, so instance sizes differ.
    ds.ImageComments = "synthetic " + s.modality + " image " + str(index + 1) + "." * (2 * (index % 7))
    block = ds.private_block(0x0013, "CTP", create=True)
    block.add_new(0x10, "LO", ctx.coll.name)
    block.add_new(0x13, "LO", ctx.coll.site)
    n = s.size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = n
    ds.Columns = n
    if s.modality == "SEG":
        _seg(ds, ctx)
        return _write(ds)
    if s.modality == "CR":
        ds.ImagerPixelSpacing = [0.5, 0.5]
        ds.PixelSpacing = [0.5, 0.5]
        ds.ViewPosition = "PA"
    else:
        spacing = {"CT": 0.7, "MR": 0.9, "PT": 4.0}[s.modality]
        thickness = {"CT": 2.5, "MR": 5.0, "PT": 4.0}[s.modality]
        z = -100.0 + index * thickness
        ds.FrameOfReferenceUID = ctx.frame_uid
        ds.PositionReferenceIndicator = ""
        origin = round(-spacing * (n - 1) / 2, 4)
        ds.ImagePositionPatient = [origin, origin, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if s.modality == "CT":
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
    elif s.modality == "PT":
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 0.5
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["ATTN", "DECY"]
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.NumberOfSlices = s.count
        ds.ImageIndex = index + 1
    elif s.modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.MagneticFieldStrength = 1.5
        ds.EchoTime = 12
        ds.RepetitionTime = 500
    ds.PixelData = _pixels(ctx, index).tobytes()
    return _write(ds)


def _seg(ds: Dataset, ctx: _Ctx) -> None:
    """A binary multi-frame segmentation (one instance, ``count`` frames)."""
    s = ctx.series
    frames = [(_pixels(ctx, i) > 800).astype(np.uint8) for i in range(s.count)]
    bits = np.packbits(np.stack(frames).ravel(), bitorder="little").tobytes()
    if len(bits) % 2:
        bits += b"\x00"
    ds.NumberOfFrames = s.count
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.SegmentationType = "BINARY"
    ds.ContentLabel = "SEGMENTATION"
    ds.FrameOfReferenceUID = ctx.frame_uid
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "Lesion"
    segment.SegmentAlgorithmType = "MANUAL"
    ds.SegmentSequence = [segment]
    source = ctx.extra.get("referenced")
    if isinstance(source, SeriesInfo):  # Common Instance Reference: what tcia_utils' getSegRefSeries reads
        refs = []
        for inst in sorted(source.instances, key=lambda i: i.instance_number):
            ref = Dataset()
            ref.ReferencedSOPClassUID = inst.sop_class_uid
            ref.ReferencedSOPInstanceUID = inst.sop_instance_uid
            refs.append(ref)
        item = Dataset()
        item.ReferencedInstanceSequence = refs
        item.SeriesInstanceUID = source.series_instance_uid
        ds.ReferencedSeriesSequence = [item]
    ds.PixelData = bits


def _write(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


_SPACING = {"CT": 0.7, "MR": 0.9, "PT": 4.0, "CR": 0.5}
_THICKNESS = {"CT": 2.5, "MR": 5.0, "PT": 4.0}


def _description(ci: int, c: _C) -> CollectionDescription | None:
    if c.description is None:
        return None
    return CollectionDescription(
        description=c.description,
        description_id=101 + ci,
        timestamp=c.released,
        user_name="nbiafs_curator",
        license_id=1 if c.license[0].startswith("Creative") else 2,
    )


def _build(seed: int) -> Archive:
    data: dict[str, bytes] = {}
    collections: list[CollectionInfo] = []
    for ci, c in enumerate(RECIPE):
        coll = CollectionInfo(
            name=c.name,
            license_name=c.license[0],
            license_uri=c.license[1],
            collection_uri=c.uri,
            site=c.site,
            description=_description(ci, c),
        )
        for pi, p in enumerate(c.patients):
            patient = PatientInfo(
                patient_id=p.patient_id,
                collection=c.name,
                patient_name=p.patient_id,
                patient_sex=p.sex,
            )
            added = p.added or c.released
            for sti, st in enumerate(p.studies):
                study_uid = _uid(seed, ci, pi, sti)
                study = StudyInfo(
                    study_instance_uid=study_uid,
                    collection=c.name,
                    patient_id=p.patient_id,
                    study_date=st.date,
                    study_description=st.description,
                    study_id=st.study_id,
                    admitting_diagnoses_description=st.diagnosis,
                    patient_age=p.age,
                    longitudinal_temporal_event_type=st.event[0] if st.event else None,
                    longitudinal_temporal_offset_from_event=st.event[1] if st.event else None,
                )
                frame_uid = _uid(seed, ci, pi, sti, "frame")
                for si, s in enumerate(st.series):
                    series_uid = _uid(seed, ci, pi, sti, si)
                    stamp = s.updated or added
                    series = SeriesInfo(
                        series_instance_uid=series_uid,
                        study_instance_uid=study_uid,
                        collection=c.name,
                        patient_id=p.patient_id,
                        modality=s.modality,
                        series_number=s.number,
                        series_description=s.description,
                        series_date=st.date,
                        body_part_examined=s.body_part,
                        protocol_name=s.protocol,
                        manufacturer=s.manufacturer,
                        manufacturer_model_name=s.model,
                        software_versions=s.software,
                        annotations_flag=True if s.annotations else None,
                        timestamp=stamp,
                        date_released=stamp,
                        third_party_analysis="YES" if s.modality == "SEG" else "NO",
                        pixel_spacing=(_SPACING[s.modality],) if s.modality in _SPACING else (),
                        slice_thickness=(_THICKNESS[s.modality],) if s.modality in _THICKNESS else (),
                    )
                    ctx = _Ctx(seed, c, p, st, s, study_uid, series_uid, frame_uid)
                    if s.modality == "SEG":  # it segments the study's first image series
                        source = next((x for x in study.series if x.modality != "SEG"), None)
                        ctx.extra["referenced"] = source
                    count = 1 if s.modality == "SEG" else s.count
                    for ii in range(count):
                        sop_uid = _uid(seed, ci, pi, sti, si, ii)
                        blob = _instance(ctx, ii, sop_uid)
                        data[sop_uid] = blob
                        series.instances.append(
                            InstanceInfo(sop_uid, SOP_CLASSES[s.modality], ii + 1, 1, len(blob))
                        )
                    series.instances = database_order(series.instances)
                    study.series.append(series)
                patient.studies.append(study)
            coll.patients.append(patient)
        collections.append(coll)
    cart = []
    for name, pi, sti, si in DEMO_CART_SERIES:
        ci = next(i for i, c in enumerate(RECIPE) if c.name == name)
        cart.append(_uid(seed, ci, pi, sti, si))
    return Archive(collections, data.__getitem__, {DEMO_CART: cart})


@functools.lru_cache(maxsize=4)
def synthetic_archive(seed: int = 0) -> Archive:
    """The synthetic archive for ``seed``, built once per process (about 1 s); shared, so read-only."""
    return _build(seed)


def build_synthetic_archive(seed: int = 0) -> Archive:
    """A freshly built (uncached) synthetic archive; for determinism checks."""
    return _build(seed)
