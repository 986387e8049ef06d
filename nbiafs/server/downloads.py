"""Image answers (facts §5, §6): getSingleImage, the series ZIPs, and the MD5 endpoints.

ZIPs are described here (``ZipPlan``: name and members, each read when its turn comes) and streamed by
the HTTP layer. Members come in database order; ``NewFileNames=Yes`` names them ``<acq>-<inst>.dcm`` in
InstanceNumber order; ``md5hashes.csv`` rows come in Java ``HashMap`` order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from nbiafs.server.archive import Archive, InstanceInfo, SeriesInfo
from nbiafs.server.endpoints import Endpoint
from nbiafs.server.formats import csv_plain
from nbiafs.server.ordering import database_order, instance_number_order, java_hashmap_order
from nbiafs.server.replies import Reply, bad_request, not_granted, not_public, null_500, text
from nbiafs.server.view import View

Params = Mapping[str, list[str]]
MD5_COLUMNS = ("Filename", "MD5Hash")


@dataclass
class ZipPlan:
    """A series ZIP to stream: its file name and members (name, reader) in order."""

    series: SeriesInfo
    filename: str
    members: list[tuple[str, Callable[[], bytes]]] = field(default_factory=list)


def _get(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _yes(value: str | None, word: str = "yes") -> bool:
    return value is not None and value.lower() == word


def single_image(view: View, params: Params) -> Reply:
    """getSingleImage: the instance, or 500 with the NullPointerException text for anything else."""
    series = view.one_series(_get(params, "SeriesInstanceUID"))
    sop_uid = _get(params, "SOPInstanceUID") or ""
    if series is None or not any(i.sop_instance_uid == sop_uid for i in series.instances):
        return null_500()
    headers = {"Content-Disposition": f"attachment; filename={sop_uid}.dcm"}
    return Reply(200, view.archive.instance_bytes(sop_uid), "application/dicom", headers)


def new_file_names(instances: list[InstanceInfo]) -> dict[str, str]:
    """SOPInstanceUID -> ``<acq>-<inst>.dcm``, each number padded to the digits of its largest."""
    acq_width = len(str(max((i.acquisition_number or 1 for i in instances), default=1)))
    inst_width = len(str(len(instances)))
    return {
        i.sop_instance_uid: f"{i.acquisition_number or 1:0{acq_width}d}-{i.instance_number:0{inst_width}d}.dcm"
        for i in instances
    }


def license_text(archive: Archive, series: SeriesInfo) -> bytes:
    """The LICENSE member: collection, license and its URL."""
    coll = archive.collections[series.collection]
    return (
        f"The data in this download are from the collection {coll.name}.\n"
        f"They are licensed under the {coll.license_name}\n{coll.license_uri}\n"
        "By downloading these data you agree to the TCIA Data Usage Policy.\n"
    ).encode()


def zip_plan(view: View, endpoint: Endpoint, params: Params) -> ZipPlan | Reply:
    """getImage, getImageWithMD5Hash or getDCMImage for a series; 400 with the access text if refused."""
    uid = _get(params, "SeriesInstanceUID")
    series = view.one_series(uid)
    if series is None:
        dcm = endpoint.name == "getDCMImage"
        return bad_request(not_public(uid) if endpoint.prefix == "v1" or dcm else not_granted(uid))
    archive = view.archive
    plan = ZipPlan(series, f"{series.series_instance_uid}.zip")
    hashes: dict[str, str] = {}

    def add(name: str, inst: InstanceInfo) -> None:
        sop = inst.sop_instance_uid
        plan.members.append((name, lambda: archive.instance_bytes(sop)))
        hashes[name] = archive.instance_md5(sop)

    if endpoint.name == "getDCMImage":
        names = new_file_names(series.instances)
        for inst in database_order(series.instances):
            add(f"{inst.sop_instance_uid}^{names[inst.sop_instance_uid]}", inst)
        if _yes(_get(params, "MD5Verification"), "true"):
            rows = [(name.partition("^")[2], digest) for name, digest in hashes.items()]
            _add_csv(plan, rows)
        return plan
    md5_member = endpoint.name == "getImageWithMD5Hash" or _yes(_get(params, "IncludeMD5"))
    if endpoint.name == "getImage":
        licence = license_text(archive, series)
        plan.members.append(("LICENSE", lambda: licence))
    if endpoint.name == "getImage" and _yes(_get(params, "NewFileNames")):
        names = new_file_names(series.instances)
        for inst in instance_number_order(series.instances):
            add(names[inst.sop_instance_uid], inst)
    else:
        for index, inst in enumerate(database_order(series.instances), 1):
            add(f"{index:08d}.dcm", inst)
    if md5_member:
        _add_csv(plan, [(name, hashes[name]) for name in java_hashmap_order(hashes)])
    return plan


def _add_csv(plan: ZipPlan, rows: list[tuple[str, str]]) -> None:
    data = csv_plain(rows, MD5_COLUMNS).encode()
    plan.members.append(("md5hashes.csv", lambda: data))


def instance_md5(view: View, params: Params) -> Reply:
    """getMD5HashForImage / getM5HashForImage: 32 hex digits, or an empty 200 if unknown or refused."""
    sop_uid = _get(params, "SOPInstanceUID") or _get(params, "SOPInstanceUid") or ""
    found = view.archive.instance_index.get(sop_uid)
    if found is None or not view.visible(found[0].collection):
        return text(200, "")
    return text(200, view.archive.instance_md5(sop_uid))


def _digest(hashes: list[str]) -> str:
    """MD5 of the sorted, concatenated hex hashes (empty for none)."""
    joined = "".join(sorted(h for h in hashes if h))
    return hashlib.md5(joined.encode()).hexdigest() if joined else ""


def series_md5(archive: Archive, series: SeriesInfo) -> str:
    return _digest([archive.instance_md5(i.sop_instance_uid) for i in series.instances])


def _study_md5(view: View, study_uid: str) -> str:
    study = view.one_study(study_uid)
    return "" if study is None else _digest([series_md5(view.archive, s) for s in study.series])


def _patient_md5(view: View, patient_id: str, collection: str | None) -> str:
    studies = [st.study_instance_uid for st in view.studies(collection, patient_id)]
    return _digest([_study_md5(view, uid) for uid in studies])


def md5_hierarchy(view: View, params: Params, cache: dict[str, str]) -> Reply:
    """getMD5Hierarchy: the hash of one series, study, patient or collection (``cache``: collections)."""
    md5 = ""
    series_uid = _get(params, "SeriesInstanceUID")
    study_uid = _get(params, "StudyInstanceUID")
    patient_id = _get(params, "PatientID")
    collection = _get(params, "Collection")
    if series_uid:  # no access check, as the live server
        series = view.archive.series_by_uid.get(series_uid)
        md5 = "" if series is None else series_md5(view.archive, series)
    if study_uid:
        md5 = _study_md5(view, study_uid)
    if patient_id:
        md5 = _patient_md5(view, patient_id, collection or None)
    if collection and not patient_id:
        key = collection.casefold()
        if key not in cache:
            patients = {(p.collection, p.patient_id) for p in view.patients(collection)}
            cache[key] = _digest([_patient_md5(view, pid, coll) for coll, pid in patients])
        md5 = cache[key]
    return text(200, md5)
