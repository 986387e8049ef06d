"""The retired v3 API's ``<Endpoint>/metadata`` documents: name, description, parameters, attributes."""

from __future__ import annotations

from typing import Any

from nbiafs.server import rows
from nbiafs.server.endpoints import Endpoint

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
    "getSeries": rows.V1_SERIES[: rows.V1_SERIES.index("DateReleased") + 1],  # v3 stops at DateReleased
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
            if p != "format"
        ],
        "returnFormats": formats,
        "attributes": attributes,
    }
