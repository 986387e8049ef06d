"""Which endpoints each API flavour serves, with their parameters, and the v3 ``/metadata`` descriptions.

Flavours: ``v1``/``v4`` (anonymous), ``v2`` (bearer token), ``v3`` (api_key, old TCIA paths). Every endpoint
is known here by its canonical (v1/v2) name; a flavour may serve it under another URL name (v3
``PatientsByModality``, v4 ``getSeriesMetadata``) and with renamed parameters (v4 ``fromDate`` for ``Date``).
Parameter names are case-sensitive, as on the live (JAX-RS) server; v1/v2/v3 ignore unknown ones, v4 answers
400.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROW_FORMATS = ("json", "csv", "xml", "html")


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as one flavour serves it.

    ``kind``: ``rows`` (metadata, rendered per ``format``), ``image`` (one DICOM), ``zip`` (getImage),
    ``zip-md5`` (getImageWithMD5Hash). ``renames`` maps a URL parameter name to the canonical one.
    """

    name: str
    url_name: str
    params: tuple[str, ...]
    required: tuple[str, ...]
    kind: str = "rows"
    method: str = "GET"
    default_format: str = "json"
    renames: dict[str, str] = field(default_factory=dict)

    @property
    def accepts_format(self) -> bool:
        return self.kind == "rows"


# canonical name -> (parameters, required parameters, kind) as on v1/v2 (spec 000).
_BASE: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "getCollectionValues": ((), (), "rows"),
    "getModalityValues": (("Collection", "BodyPartExamined"), (), "rows"),
    "getBodyPartValues": (("Collection", "Modality"), (), "rows"),
    "getManufacturerValues": (("Collection", "Modality", "BodyPartExamined"), (), "rows"),
    "getPatient": (("Collection", "PatientId"), (), "rows"),
    "getPatientByCollectionAndModality": (("Collection", "Modality"), ("Collection", "Modality"), "rows"),
    "getPatientStudy": (("Collection", "PatientID", "StudyInstanceUID"), ("Collection",), "rows"),
    "getSeries": (
        (
            "Collection",
            "PatientID",
            "StudyInstanceUID",
            "Modality",
            "SeriesInstanceUID",
            "BodyPartExamined",
            "ManufacturerModelName",
            "Manufacturer",
        ),
        (),
        "rows",
    ),
    "getSeriesMetaData": (("SeriesInstanceUID",), ("SeriesInstanceUID",), "rows"),
    "getSeriesSize": (("SeriesInstanceUID",), ("SeriesInstanceUID",), "rows"),
    "getSOPInstanceUIDs": (("SeriesInstanceUID",), ("SeriesInstanceUID",), "rows"),
    "getSingleImage": (
        ("SeriesInstanceUID", "SOPInstanceUID"),
        ("SeriesInstanceUID", "SOPInstanceUID"),
        "image",
    ),
    "getImage": (("SeriesInstanceUID", "NewFileNames"), ("SeriesInstanceUID",), "zip"),
    "getImageWithMD5Hash": (("SeriesInstanceUID",), ("SeriesInstanceUID",), "zip-md5"),
    "getContentsByName": (("name",), ("name",), "rows"),
    "NewPatientsInCollection": (("Collection", "Date"), ("Collection", "Date"), "rows"),
    "NewStudiesInPatientCollection": (
        ("Collection", "Date", "PatientID"),
        ("Collection", "Date", "PatientID"),
        "rows",
    ),
    "getUpdatedSeries": (("fromDate",), ("fromDate",), "rows"),
}

FLAVOURS = ("v1", "v2", "v3", "v4")


def _table(flavour: str) -> dict[str, Endpoint]:
    table: dict[str, Endpoint] = {}
    for name, (params, required, kind) in _BASE.items():
        url_name, method, default_format = name, "GET", "json"
        renames: dict[str, str] = {}
        if flavour == "v3":
            if name == "getContentsByName":
                continue  # v3 serves shared lists under /SharedList/query/ContentsByName
            if name == "getPatientByCollectionAndModality":
                url_name = "PatientsByModality"
            if name in ("getPatientStudy", "NewStudiesInPatientCollection"):
                required = tuple(p for p in required if p not in ("Collection", "PatientID"))
                if name == "NewStudiesInPatientCollection":
                    required = ("Collection", "Date")
        if flavour == "v4":
            if name == "getSeriesMetaData":
                url_name, method, default_format = "getSeriesMetadata", "POST", "csv"
                params, required = ("list",), ("list",)
            if name == "NewPatientsInCollection":
                params, required = ("Collection", "fromDate"), ("Collection", "fromDate")
                renames = {"fromDate": "Date"}
        table[url_name] = Endpoint(name, url_name, params, required, kind, method, default_format, renames)
    return table


TABLES: dict[str, dict[str, Endpoint]] = {f: _table(f) for f in FLAVOURS}
SHARED_LIST = Endpoint("getContentsByName", "ContentsByName", ("name",), ("name",))


# Returned attributes: name -> (DICOM tag, description); from spec 000.
_ATTR: dict[str, tuple[str, str]] = {
    "Collection": (
        "N/A",
        "A label used to name a set of images collected for a trial or other reason.",
    ),
    "Modality": ("0008,0060", "Standard DICOM definition"),
    "BodyPartExamined": ("0018,0015", "Standard DICOM definition"),
    "Manufacturer": ("0008,0070", "Standard DICOM definition"),
    "ManufacturerModelName": ("0008,1090", "Standard DICOM definition"),
    "SoftwareVersions": ("0018,1020", "Standard DICOM definition"),
    "PatientID": ("0010,0020", "Has been de-identified as part of submission process."),
    "PatientId": ("0010,0020", "Has been de-identified as part of submission process."),
    "PatientName": ("0010,0010", "Has been de-identified as part of submission process."),
    "PatientSex": ("0010,0040", "Standard DICOM definition"),
    "PatientBirthDate": ("0010,0030", "Has been de-identified as part of submission process."),
    "PatientAge": ("0010,1010", "Standard DICOM definition"),
    "EthnicGroup": ("0010,2160", "Standard DICOM definition"),
    "Phantom": ("0010,0200", "Indicates whether or not the subject is a quality control phantom."),
    "SpeciesCode": ("0010,2202", "The taxonomic rank value of the Patient."),
    "SpeciesDescription": ("0010,2201", "The taxonomic rank value of the Patient."),
    "StudyInstanceUID": ("0020,000D", "Has been de-identified as part of submission process."),
    "StudyDate": ("0008,0020", "Has been de-identified. Longitudinal information is preserved."),
    "StudyDescription": ("0008,1030", "Standard DICOM definition. Inspected and cleaned of any PHI."),
    "AdmittingDiagnosesDescription": ("0008,1080", "Standard DICOM definition."),
    "StudyID": ("0020,0010", "Has been de-identified as part of submission process."),
    "SeriesCount": ("N/A", "Computed number of series"),
    "LongitudinalTemporalEventType": ("0012,0053", "The type of event the offset is relative to."),
    "LongitudinalTemporalOffsetFromEvent": ("0012,0052", "An offset in days from a particular event."),
    "SeriesInstanceUID": ("0020,000E", "Has been de-identified as part of submission process"),
    "ProtocolName": ("0018,1030", "Standard DICOM definition. Inspected and cleaned of any PHI."),
    "SeriesDate": ("0008,0021", "Standard DICOM definition"),
    "SeriesDescription": ("0008,103E", "Standard DICOM definition. Inspected and cleaned of any PHI."),
    "SeriesNumber": ("0020,0011", "Standard DICOM definition"),
    "AnnotationsFlag": ("N/A", "Indicates if there are annotations for a collection"),
    "ImageCount": ("N/A", "Computed number of images in this series"),
    "TimeStamp": ("N/A", "Date the series was released"),
    "LicenseName": ("N/A", "License that applies to this series"),
    "LicenseURI": ("N/A", "URL of license source"),
    "CollectionURI": ("N/A", "URI of collection"),
    "FileSize": ("N/A", "File size"),
    "DateReleased": ("N/A", "Date the series was released"),
    "TotalSizeInBytes": ("N/A", "Byte size of the specified series"),
    "ObjectCount": ("N/A", "Number of objects in the specified series"),
    "SOPInstanceUID": ("0008,0018", "Uniquely identifies the SOP Instance"),
}

_RETURNS: dict[str, tuple[str, ...]] = {
    "getCollectionValues": ("Collection",),
    "getModalityValues": ("Modality",),
    "getBodyPartValues": ("BodyPartExamined",),
    "getManufacturerValues": ("Manufacturer",),
    "getPatient": (
        "PatientId",
        "PatientName",
        "PatientSex",
        "Collection",
        "Phantom",
        "SpeciesCode",
        "SpeciesDescription",
    ),
    "getPatientByCollectionAndModality": ("PatientId",),
    "getPatientStudy": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "AdmittingDiagnosesDescription",
        "StudyID",
        "PatientAge",
        "PatientID",
        "PatientName",
        "PatientSex",
        "EthnicGroup",
        "Collection",
        "SeriesCount",
        "LongitudinalTemporalEventType",
        "LongitudinalTemporalOffsetFromEvent",
    ),
    "getSeries": (
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "Modality",
        "ProtocolName",
        "SeriesDate",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesNumber",
        "AnnotationsFlag",
        "Collection",
        "PatientID",
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
        "ImageCount",
        "TimeStamp",
        "LicenseName",
        "LicenseURI",
        "CollectionURI",
        "FileSize",
        "DateReleased",
    ),
    "getSeriesSize": ("TotalSizeInBytes", "ObjectCount"),
    "getSOPInstanceUIDs": ("SOPInstanceUID",),
}
_RETURNS["NewPatientsInCollection"] = _RETURNS["getPatient"]
_RETURNS["NewStudiesInPatientCollection"] = _RETURNS["getPatientStudy"]
_RETURNS["getUpdatedSeries"] = _RETURNS["getSeries"][:15]
_RETURNS["getContentsByName"] = tuple(a for a in _RETURNS["getSeries"][:15] if a != "AnnotationsFlag")

DESCRIPTIONS: dict[str, str] = {
    "getCollectionValues": "Set of all collection names",
    "getModalityValues": "Set of all modality values (CT, MR, ...) filtered by query keys",
    "getBodyPartValues": "Set of all body part names filtered by query keys",
    "getManufacturerValues": "Set of all manufacturer names filtered by query keys",
    "getPatient": "Set of patient objects filtered by query keys",
    "getPatientByCollectionAndModality": "Returns a list of PatientIDs, given a Collection Name and Modality",
    "getPatientStudy": "Set of patient/study objects filtered by query keys",
    "getSeries": "Set of series objects filtered by query keys",
    "getSeriesMetaData": "All of the metadata for a given SeriesInstanceUID",
    "getSeriesSize": "Set of total byte size and object count filtered by query key",
    "getSOPInstanceUIDs": "Return a list of SOPInstanceUID for a given series using the SeriesInstanceUID",
    "getSingleImage": "Returns a SINGLE DICOM Object identified by its SeriesInstanceUID and SOPInstanceUID",
    "getImage": "Set of images in a zip file",
    "getImageWithMD5Hash": "All images in the series and their MD5 hash values, in a zip file",
    "getContentsByName": "Given the name of a shared list return its contents.",
    "NewPatientsInCollection": "Set of Patients added to a specified collection since a specified date",
    "NewStudiesInPatientCollection": "Set of Studies added to a collection (and patient) since a date",
    "getUpdatedSeries": "Set of series updated since a specified date",
}

_METADATA_KEYS = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "Series Number",
    "License Name",
    "License URL",
    "Annotation Size",
    "Date Released",
)


def endpoint_metadata(endpoint: Endpoint) -> dict[str, Any]:
    """The v3 ``<endpoint>/metadata`` document: name, description, query parameters, formats, attributes."""
    if endpoint.kind == "rows":
        formats = ["CSV", "HTML", "XML", "JSON"]
    elif endpoint.kind == "image":
        formats = ["Raw DICOM Object"]
    else:
        formats = ["ZIP"]
    if endpoint.name == "getSeriesMetaData":
        attributes = [{"name": k, "dicomTag": "N/A", "description": k} for k in _METADATA_KEYS]
    else:
        attributes = [
            {"name": a, "dicomTag": _ATTR[a][0], "description": _ATTR[a][1]}
            for a in _RETURNS.get(endpoint.name, ())
        ]
    return {
        "name": endpoint.url_name,
        "description": DESCRIPTIONS[endpoint.name],
        "queryParameters": [
            {"name": p, "required": p in endpoint.required, "description": f"{p} to filter by"}
            for p in endpoint.params
        ],
        "returnFormats": formats,
        "attributes": attributes,
    }
