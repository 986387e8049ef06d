"""Which endpoints each API prefix serves: method, parameter names, required parameters and their 400
texts, the kind of answer, and the authentication rule (``guard``, see :mod:`nbiafs.server.guard`).

Prefixes: ``v1`` (anonymous), ``v2`` (bearer token), ``v3`` (the retired TCIA API with an ``api_key``),
``v4`` (anonymous, honours a token), ``adv`` (the unversioned advanced API, token required). Parameter names
are case-sensitive (JAX-RS): v1/v2/v3 ignore other names, v4 answers 400 for them (``strict``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PREFIXES = ("v1", "v2", "v3", "v4", "adv")

R_SERIES = "A parameter, SeriesInstanceUID is required for this API call."
R_SERIES_IMAGE = "A parameter, SeriesInstanceUID, is required for this API call."
R_SINGLE = "A parameter, SeriesInstanceUID and SOPInstanceUID, are required for this API call."
R_COLLECTION_MODALITY = "A parameter, Collection and Modality, are required for this API call."
R_COLLECTION_DATE = "A parameter, Collection and Date are required for this API call."
R_NAME = "A parameter, name is required for this API call."
R_LIST = "A form parameter, list, containing at least one SeriesInstanceUID is required."


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as one prefix serves it.

    ``name`` is the canonical (v1/v2) name the answer is computed under; ``url_name`` the path segment.
    ``kind``: ``rows`` (a table rendered per ``format``), ``image`` (getSingleImage), ``zip`` (getImage,
    getImageWithMD5Hash, getDCMImage), ``md5`` (one instance's hash), ``hierarchy`` (getMD5Hierarchy),
    ``advanced`` (the advanced API). ``required``: parameters whose absence is a 400 with ``required_text``.
    """

    name: str
    prefix: str
    url_name: str
    params: tuple[str, ...]
    kind: str = "rows"
    method: str = "GET"
    required: tuple[str, ...] = ()
    required_text: str = ""
    guard: str = "public"
    strict: bool = False
    open_form: bool = False  # takes any parameter name (the simple search's numbered criteria)

    @property
    def auth_first(self) -> bool:
        """Whether the caller is resolved before the parameters are checked (images and the advanced API)."""
        return self.kind != "rows"


_F = ("format",)
_SERIES_FILTERS = (
    "Collection",
    "PatientID",
    "StudyInstanceUID",
    "Modality",
    "BodyPartExamined",
    "ManufacturerModelName",
    "Manufacturer",
    "SeriesInstanceUID",
)

# name -> (parameters, kind, required, required text); as v1/v2 take them.
_V1: dict[str, tuple[tuple[str, ...], str, tuple[str, ...], str]] = {
    "getCollectionValues": (_F, "rows", (), ""),
    "getModalityValues": (("Collection", "BodyPartExamined", *_F), "rows", (), ""),
    "getBodyPartValues": (("Collection", "Modality", *_F), "rows", (), ""),
    "getManufacturerValues": (("Collection", "Modality", "BodyPartExamined", *_F), "rows", (), ""),
    "getPatient": (("Collection", "PatientId", *_F), "rows", (), ""),
    "getPatientByCollectionAndModality": (
        ("Collection", "Modality", *_F),
        "rows",
        ("Collection", "Modality"),
        R_COLLECTION_MODALITY,
    ),
    "getPatientStudy": (("Collection", "PatientID", "StudyInstanceUID", *_F), "rows", (), ""),
    "getSeries": ((*_SERIES_FILTERS, *_F), "rows", (), ""),
    "getSeriesMetaData": (("SeriesInstanceUID", *_F), "rows", ("SeriesInstanceUID",), R_SERIES),
    "getSeriesSize": (("SeriesInstanceUID", *_F), "rows", ("SeriesInstanceUID",), R_SERIES),
    "getSOPInstanceUIDs": (("SeriesInstanceUID", *_F), "rows", ("SeriesInstanceUID",), R_SERIES),
    "getContentsByName": (("name",), "rows", ("name",), R_NAME),
    "NewPatientsInCollection": (
        ("Collection", "Date", *_F),
        "rows",
        ("Collection", "Date"),
        R_COLLECTION_DATE,
    ),
    "NewStudiesInPatientCollection": (
        ("Collection", "PatientID", "Date", *_F),
        "rows",
        ("Collection", "Date"),
        R_COLLECTION_DATE,
    ),
    "getUpdatedSeries": (("fromDate", *_F), "rows", (), ""),
    "getSingleImage": (
        ("SeriesInstanceUID", "SOPInstanceUID"),
        "image",
        ("SeriesInstanceUID", "SOPInstanceUID"),
        R_SINGLE,
    ),
    "getImage": (("SeriesInstanceUID", "NewFileNames"), "zip", ("SeriesInstanceUID",), R_SERIES_IMAGE),
    "getImageWithMD5Hash": (("SeriesInstanceUID",), "zip", ("SeriesInstanceUID",), R_SERIES_IMAGE),
    "getDCMImage": (
        ("SeriesInstanceUID", "IncludeAnnotation", "MD5Verification"),
        "zip",
        ("SeriesInstanceUID",),
        R_SERIES_IMAGE,
    ),
    "getM5HashForImage": (("SOPInstanceUid",), "md5", (), ""),
}

# v2: answers refused callers get in the Keycloak era.
_V2_STRICT = {
    "getCollectionValues",
    "getSingleImage",
    "getImage",
    "getImageWithMD5Hash",
    "getDCMImage",
    "getM5HashForImage",
}

# The advanced API: name -> (parameters, method). v4 serves the same names with its own shapes.
_ADVANCED: dict[str, tuple[tuple[str, ...], str]] = {
    "getModalityValuesAndCounts": (("Collection", "BodyPartExamined"), "GET"),
    "getBodyPartValuesAndCounts": (("Collection", "Modality"), "GET"),
    "getCollectionValuesAndCounts": ((), "GET"),
    "getManufacturerValuesAndCounts": (("Collection", "Modality", "BodyPartExamined"), "GET"),
    "getCollectionDescriptions": (("collectionName",), "GET"),
    "getDicomTags": (("SeriesUID",), "GET"),
    "getCollectionOrSeriesForDOI": (("DOI", "CollectionOrSeries"), "POST"),
    "getSimpleSearch": ((), "POST"),
    "getManifestForSimpleSearch": ((), "POST"),
}
_SEARCHES = {"getSimpleSearch", "getManifestForSimpleSearch"}
# v4 does not check these endpoints' parameter names.
_V4_LOOSE = {
    "NewPatientsInCollection",
    "NewStudiesInPatientCollection",
    "getCollectionValuesAndCounts",
    "getSpeciesValuesAndCounts",
    "getSimpleSearch",
    "getManifestForSimpleSearch",
}


def _v1(prefix: str) -> dict[str, Endpoint]:
    table: dict[str, Endpoint] = {}
    for name, (params, kind, required, text) in _V1.items():
        if prefix == "v2" and name == "getContentsByName":
            text = R_SERIES  # v2's copy-paste slip
        guard = "public"
        if prefix == "v2":
            guard = "strict" if name in _V2_STRICT else "meta204" if name == "getSeriesMetaData" else "list"
        elif prefix == "v3":
            if name in ("getDCMImage", "getM5HashForImage"):
                continue
            guard = "apikey"
        table[name] = Endpoint(name, prefix, name, params, kind, "GET", required, text, guard)
    return table


def _v4() -> dict[str, Endpoint]:
    table: dict[str, Endpoint] = {}
    for name, (params, kind, required, text) in _V1.items():
        url_name, method, guard = name, "GET", "v4list"
        if name in ("getContentsByName", "getM5HashForImage"):
            continue
        if name in ("NewPatientsInCollection", "NewStudiesInPatientCollection"):
            params = tuple("fromDate" if p == "Date" else p for p in params)
            required = tuple("fromDate" if p == "Date" else p for p in required)
        if name == "getSeriesMetaData":
            url_name, method, params, required, text = (
                "getSeriesMetadata",
                "POST",
                ("list", *_F),
                ("list",),
                R_LIST,
            )
        if name == "getImage":
            params = (*params, "IncludeMD5")
        if kind != "rows" or name in ("getCollectionValues", "getSeriesMetaData"):
            guard = "v4strict"
        if name == "getSeriesSize":
            guard = "public"  # v4 getSeriesSize ignores tokens
        strict = name not in _V4_LOOSE
        table[url_name] = Endpoint(name, "v4", url_name, params, kind, method, required, text, guard, strict)
    table["getMD5HashForImage"] = Endpoint(
        "getM5HashForImage",
        "v4",
        "getMD5HashForImage",
        ("SOPInstanceUID",),
        "md5",
        guard="v4strict",
        strict=True,
    )
    table["getMD5Hierarchy"] = Endpoint(
        "getMD5Hierarchy",
        "v4",
        "getMD5Hierarchy",
        ("SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Collection"),
        "hierarchy",
        "POST",
        guard="v4strict",
        strict=True,
    )
    advanced = {**_ADVANCED, "getSpeciesValuesAndCounts": ((), "GET")}
    for name, (params, method) in advanced.items():
        guard = "v4strict"
        if name in ("getCollectionDescriptions", "getCollectionOrSeriesForDOI"):
            guard = "v4json"
        elif name == "getDicomTags":
            guard = "v4tags"
        strict, open_form = name not in _V4_LOOSE, name in _SEARCHES
        table[name] = Endpoint(
            name, "v4", name, params, "advanced", method, guard=guard, strict=strict, open_form=open_form
        )
    return table


def _advanced() -> dict[str, Endpoint]:
    table: dict[str, Endpoint] = {}
    for name, (params, method) in _ADVANCED.items():
        url_name = "getSimpleSearchWithModalityAndBodyPartPaged" if name == "getSimpleSearch" else name
        guard = "advtags" if name == "getDicomTags" else "strict"
        table[url_name] = Endpoint(
            name, "adv", url_name, params, "advanced", method, guard=guard, open_form=name in _SEARCHES
        )
    return table


TABLES: dict[str, dict[str, Endpoint]] = {
    "v1": _v1("v1"),
    "v2": _v1("v2"),
    "v3": _v1("v3"),
    "v4": _v4(),
    "adv": _advanced(),
}
# v3 names some endpoints differently.
TABLES["v3"]["PatientsByModality"] = replace(
    TABLES["v3"].pop("getPatientByCollectionAndModality"), url_name="PatientsByModality"
)
SHARED_LIST = replace(TABLES["v3"].pop("getContentsByName"), url_name="ContentsByName")


def lookup(prefix: str, url_name: str) -> Endpoint | None:
    """The endpoint ``url_name`` on ``prefix``, or None."""
    return TABLES.get(prefix, {}).get(url_name)
