"""Drive the official tcia_utils (``tcia_utils.nbia``, unmodified) against an NBIA server: run in the compat venv by
``run_tcia_utils.py``, never imported by the suite.

    python tcia_driver.py --base http://127.0.0.1:PORT --expect expect.json --workdir DIR

tcia_utils has no base-URL setting: ``nbia.setApiUrl(endpoint, api_url)`` builds
``https://<api_url>.cancerimagingarchive.net/nbia-api/services/v4/`` (v1 for getContentsByName) and every call
looks it up at call time, so the driver wraps it to swap the scheme and host for ``--base``, keeping the path
tcia_utils chose. Every request tcia_utils makes is recorded; one that goes anywhere else fails its function.

The functions to check are found by introspection: every public function of ``tcia_utils.nbia`` whose source
sends a request (``requests.get/post``) or calls, directly or not, one that does (in ``nbia`` or another
tcia_utils module). Each must have a check below (else it FAILs: a new function needs one); a check calls the
function as a user would and compares the answer with ``expect.json`` (the server's data as the guest sees
it): UIDs, counts, sizes, release-date subsets, and downloads byte for byte against the instances' MD5s.
Prints ``PASS name (endpoints)``, ``FAIL name: why`` or ``SKIP name: why`` per function (``name[variant]``
for a variant skipped apart), then the v2 OAuth client's steps, then ``N passed, N failed, N skipped``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import sys
import traceback
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import plotly.basedatatypes
import requests
import v2_oauth_client

# ---------------------------------------------------------------------------------------------------------
# Results


class KnownBugError(Exception):
    """tcia_utils fails here in a way production would make it fail too: reported as a SKIP with the reason."""


class OtherServiceError(Exception):
    """The function cannot work against any NBIA server (it needs another service)."""


RESULTS: list[tuple[str, str, str]] = []


def record(status: str, name: str, message: str = "") -> None:
    RESULTS.append((status, name, message))
    sep = ": " if status != "PASS" else " "
    text = f"({message})" if status == "PASS" and message else message
    print(f"{status} {name}{sep if text else ''}{text}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# Requests: where tcia_utils goes


class Traffic:
    """Every request sent through ``requests`` while installed, with a check that it went to ``base``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.calls: list[tuple[str, str, int]] = []
        self.strays: list[str] = []
        original = requests.sessions.Session.send
        traffic = self

        def send(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> Any:
            url = request.url or ""
            if not url.startswith(traffic.base + "/"):
                traffic.strays.append(url)
            response = original(session, request, **kwargs)
            traffic.calls.append((request.method or "", url, response.status_code))
            return response

        requests.sessions.Session.send = send  # type: ignore[method-assign]

    @contextlib.contextmanager
    def watch(self) -> Iterator[list[tuple[str, str, int]]]:
        self.calls, self.strays = [], []
        yield self.calls
        if self.strays:
            raise AssertionError(f"requests outside the server: {sorted(set(self.strays))[:3]}")

    def summary(self, calls: list[tuple[str, str, int]]) -> str:
        counts = Counter(urlsplit(url).path.split("/services/", 1)[-1] for _, url, _ in calls)
        return ", ".join(f"{path} x{n}" if n > 1 else path for path, n in sorted(counts.items()))


# ---------------------------------------------------------------------------------------------------------
# The server's data


class Data:
    """expect.json: what the guest may see of the archive the server serves."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.collections: list[dict[str, Any]] = raw["collections"]
        self.names = [c["name"] for c in self.collections]
        self.series: list[dict[str, Any]] = raw["series"]
        self.by_uid = {s["uid"]: s for s in self.series}
        self.patients: list[dict[str, Any]] = raw["patients"]
        self.studies: list[dict[str, Any]] = raw["studies"]
        self.carts: dict[str, list[str]] = raw["carts"]
        for s in self.series:
            s["released_at"] = dt.datetime.fromisoformat(s["released"])

    def select(self, **want: Any) -> list[dict[str, Any]]:
        """Series whose fields equal ``want`` (case-insensitively, as the server filters)."""

        def ok(s: dict[str, Any]) -> bool:
            return all(_fold(s.get(k)) == _fold(v) for k, v in want.items())

        return [s for s in self.series if ok(s)]

    def uids(self, **want: Any) -> set[str]:
        return {s["uid"] for s in self.select(**want)}

    def patients_of(self, series: list[dict[str, Any]]) -> set[str]:
        return {s["patient"] for s in series}

    def collection_with(self, min_patients: int = 1, min_series: int = 1) -> str:
        """The first collection with at least that many patients and series."""
        for name in self.names:
            rows = self.select(collection=name)
            if len(self.patients_of(rows)) >= min_patients and len(rows) >= min_series:
                return name
        raise AssertionError(f"no collection with {min_patients} patients and {min_series} series")

    def studies_per_patient(self) -> dict[tuple[str, str], set[str]]:
        result: dict[tuple[str, str], set[str]] = defaultdict(set)
        for st in self.studies:
            result[(st["collection"], st["patient"])].add(st["uid"])
        return result


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def equal(got: Any, want: Any, what: str) -> None:
    if got != want:
        if isinstance(got, set) and isinstance(want, set):
            raise AssertionError(
                f"{what}: missing {sorted(want - got)[:4]}, unexpected {sorted(got - want)[:4]}"
            )
        raise AssertionError(f"{what}: got {str(got)[:300]}, expected {str(want)[:300]}")


def nonempty_rows(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise AssertionError(f"{what}: expected a non-empty list of rows, got {str(value)[:200]}")
    return value


def day(value: dt.datetime) -> dt.datetime:
    return dt.datetime(value.year, value.month, value.day)


def discriminating_day(stamps: list[dt.datetime], want: str) -> dt.datetime:
    """A release day (tcia_utils sends days) that splits ``stamps`` into a non-empty ``want`` subset, preferring
    one where "on or after" and "strictly after" differ (a release at midnight)."""
    days = sorted({day(s) for s in stamps})
    for d in days:
        if any(s == d for s in stamps) and any(s > d for s in stamps):
            return d
    for d in days:
        chosen = [s for s in stamps if (s >= d if want == "on" else s > d)]
        if chosen and len(chosen) < len(stamps):
            return d
    return days[0]


# ---------------------------------------------------------------------------------------------------------
# Which functions query: introspection

REQUEST_CALL = re.compile(r"\brequests\.(get|post|put|head|delete|request|Session)\b")


def querying_functions(module: Any) -> dict[str, str]:
    """Public functions of ``module`` that send requests, directly or through others: name -> how."""
    own = {n: f for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__}
    imported = {
        n: f
        for n, f in vars(module).items()
        if inspect.isfunction(f) and f.__module__ != module.__name__ and f.__module__.startswith("tcia_utils")
    }
    source = {n: inspect.getsource(f) for n, f in {**own, **imported}.items()}
    how: dict[str, str] = {}
    for n, text in source.items():
        if REQUEST_CALL.search(text):
            how[n] = "sends requests" if n in own else f"{imported[n].__module__}.{n} sends requests"
    changed = True
    while changed:
        changed = False
        for n in own:
            if n in how:
                continue
            for callee in list(how):
                if callee != n and re.search(rf"(?<![\w.]){re.escape(callee)}\(", source[n]):
                    how[n] = f"calls {callee}"
                    changed = True
                    break
    return {n: why for n, why in sorted(how.items()) if n in own and not n.startswith("_")}


# ---------------------------------------------------------------------------------------------------------
# Checks

CHECKS: dict[str, Callable[[Ctx], None]] = {}


def check(name: str) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    def register(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        CHECKS[name] = fn
        return fn

    return register


class Ctx:
    """What a check gets: tcia_utils' nbia module, the data, a work dir, and variant bookkeeping."""

    def __init__(self, nbia: Any, data: Data, workdir: Path, name: str) -> None:
        self.nbia = nbia
        self.data = data
        self.workdir = workdir
        self.name = name

    def variant(self, label: str, fn: Callable[[], None]) -> None:
        """Run one variant; a KnownBugError becomes its own SKIP line, any other failure fails the function."""
        try:
            fn()
        except KnownBugError as bug:
            record("SKIP", f"{self.name}[{label}]", f"tcia_utils bug: {bug}")
        except OtherServiceError:
            raise
        except Exception as exc:
            raise AssertionError(f"[{label}] {type(exc).__name__}: {exc}") from exc

    def path(self, label: str) -> Path:
        path = self.workdir / f"{self.name}-{label}"
        shutil.rmtree(path, ignore_errors=True)  # tcia_utils skips what a reused work dir already holds
        path.mkdir(parents=True)
        return path


# ---- value lists ------------------------------------------------------------------------------------------


def value_list(rows: Any, key: str, what: str) -> tuple[list[str], int]:
    """The values of a value list and how many ``{}`` (null) rows it had."""
    rows = nonempty_rows(rows, what)
    values = [r[key] for r in rows if key in r]
    return values, len(rows) - len(values)


def check_value_list(rows: Any, key: str, series: list[dict[str, Any]], field: str, what: str) -> None:
    values, nulls = value_list(rows, key, what)
    want = {s[field] for s in series if s[field] is not None}
    equal({_fold(v) for v in values}, {_fold(v) for v in want}, what)
    equal(len(values), len(set(values)), f"{what}: duplicate values")
    equal(values, sorted(values, key=str.casefold), f"{what}: case-insensitive order")
    if any(s[field] is None for s in series) and nulls != 1:
        raise AssertionError(f"{what}: {nulls} null rows, expected one ({{}}) for the series without {key}")


@check("getCollections")
def _collections(c: Ctx) -> None:
    values, _ = value_list(c.nbia.getCollections(), "Collection", "getCollectionValues")
    equal(set(values), set(c.data.names), "collections")
    equal(values, sorted(values, key=str.casefold), "collection order")
    df = c.nbia.getCollections(format="df")
    equal(set(df["Collection"]), set(c.data.names), "collections as a DataFrame")


@check("getBodyPart")
def _body_parts(c: Ctx) -> None:
    d = c.data
    check_value_list(c.nbia.getBodyPart(), "BodyPartExamined", d.series, "body_part", "all body parts")
    coll = d.collection_with(min_series=2)
    check_value_list(
        c.nbia.getBodyPart(collection=coll), "BodyPartExamined", d.select(collection=coll), "body_part", coll
    )
    s = d.series[0]
    rows = c.nbia.getBodyPart(collection=s["collection"], modality=s["modality"])
    want = d.select(collection=s["collection"], modality=s["modality"])
    check_value_list(rows, "BodyPartExamined", want, "body_part", "by collection and modality")


@check("getModality")
def _modalities(c: Ctx) -> None:
    d = c.data
    check_value_list(c.nbia.getModality(), "Modality", d.series, "modality", "all modalities")
    for coll in d.names:
        check_value_list(
            c.nbia.getModality(collection=coll), "Modality", d.select(collection=coll), "modality", coll
        )
    part = next(s["body_part"] for s in d.series if s["body_part"])
    rows = c.nbia.getModality(bodyPart=part)
    check_value_list(rows, "Modality", d.select(body_part=part), "modality", f"body part {part}")


@check("getManufacturer")
def _manufacturers(c: Ctx) -> None:
    d = c.data
    check_value_list(c.nbia.getManufacturer(), "Manufacturer", d.series, "manufacturer", "all manufacturers")
    s = next(s for s in d.series if s["manufacturer"] and s["body_part"])
    rows = c.nbia.getManufacturer(collection=s["collection"], modality=s["modality"], bodyPart=s["body_part"])
    want = d.select(collection=s["collection"], modality=s["modality"], body_part=s["body_part"])
    check_value_list(rows, "Manufacturer", want, "manufacturer", "filtered manufacturers")


# ---- patients, studies, series ------------------------------------------------------------------------------


@check("getPatient")
def _patients(c: Ctx) -> None:
    d = c.data
    rows = nonempty_rows(c.nbia.getPatient(), "getPatient")
    equal(
        {(r["Collection"], r["PatientId"]) for r in rows},
        {(p["collection"], p["id"]) for p in d.patients},
        "all",
    )
    for coll in d.names:
        rows = nonempty_rows(c.nbia.getPatient(collection=coll), coll)
        equal({r["PatientId"] for r in rows}, {p["id"] for p in d.patients if p["collection"] == coll}, coll)
        if any("PatientBirthDate" in r for r in rows) or any(r.get("Authorized") != 1 for r in rows):
            raise AssertionError(f"v4 getPatient rows carry PatientBirthDate or lack Authorized=1: {rows[0]}")


@check("getPatientByCollectionAndModality")
def _patients_by_modality(c: Ctx) -> None:
    d = c.data
    pairs = sorted({(s["collection"], s["modality"]) for s in d.series})
    for coll, modality in pairs:
        rows = nonempty_rows(c.nbia.getPatientByCollectionAndModality(coll, modality), f"{coll}/{modality}")
        want = d.patients_of(d.select(collection=coll, modality=modality))
        equal({r["PatientId"] for r in rows}, want, f"patients of {coll} with {modality}")


@check("getNewPatientsInCollection")
def _new_patients(c: Ctx) -> None:
    d = c.data
    coll = d.collection_with(min_patients=2)
    rows_of = d.select(collection=coll)
    when = discriminating_day([s["released_at"] for s in rows_of], "on")
    want = d.patients_of([s for s in rows_of if s["released_at"] >= when])  # v4 fromDate: on or after
    rows = nonempty_rows(c.nbia.getNewPatientsInCollection(coll, when.strftime("%Y/%m/%d")), "new patients")
    equal({r["PatientId"] for r in rows}, want, f"patients of {coll} released on or after {when:%Y-%m-%d}")
    later = max(s["released_at"] for s in d.series) + dt.timedelta(days=1)
    equal(c.nbia.getNewPatientsInCollection(coll, later.strftime("%Y/%m/%d")), None, "after the last release")


@check("getStudy")
def _studies(c: Ctx) -> None:
    d = c.data
    for coll in d.names:
        rows = nonempty_rows(c.nbia.getStudy(coll), coll)
        equal(
            {r["StudyInstanceUID"] for r in rows},
            {st["uid"] for st in d.studies if st["collection"] == coll},
            coll,
        )
        for r in rows:
            want_series = len(d.select(study=r["StudyInstanceUID"]))
            equal(r.get("SeriesCount"), want_series, f"SeriesCount of {r['StudyInstanceUID']}")
    st = d.studies[0]
    rows = nonempty_rows(c.nbia.getStudy(st["collection"], patientId=st["patient"]), "by patient")
    want = {
        x["uid"] for x in d.studies if (x["collection"], x["patient"]) == (st["collection"], st["patient"])
    }
    equal({r["StudyInstanceUID"] for r in rows}, want, "studies of one patient")
    rows = nonempty_rows(c.nbia.getStudy(st["collection"], studyUid=st["uid"]), "by study")
    equal([r["StudyInstanceUID"] for r in rows], [st["uid"]], "one study")


@check("getNewStudiesInPatient")
def _new_studies(c: Ctx) -> None:
    d = c.data
    tried = 0
    for (coll, patient), _studies_of in sorted(d.studies_per_patient().items()):
        rows_of = d.select(collection=coll, patient=patient)
        when = discriminating_day([s["released_at"] for s in rows_of], "on")
        want = {s["study"] for s in rows_of if s["released_at"] >= when}  # v4 fromDate: on or after
        got = c.nbia.getNewStudiesInPatient(coll, patient, when.strftime("%Y/%m/%d"))
        what = f"studies of {coll}/{patient} released on or after {when:%Y-%m-%d}"
        equal({r["StudyInstanceUID"] for r in nonempty_rows(got, what)}, want, what)
        tried += 1
    later = max(s["released_at"] for s in d.series) + dt.timedelta(days=1)
    st = d.studies[0]
    equal(
        c.nbia.getNewStudiesInPatient(st["collection"], st["patient"], later.strftime("%Y/%m/%d")),
        None,
        "later",
    )
    if not tried:
        raise AssertionError("no patient to ask about")


def check_series_rows(rows: Any, d: Data, want: set[str], what: str) -> None:
    rows = nonempty_rows(rows, what)
    got = {r["SeriesInstanceUID"]: r for r in rows}
    equal(set(got), want, what)
    for uid, r in got.items():
        s = d.by_uid[uid]
        equal(
            (
                r.get("ImageCount"),
                r.get("FileSize"),
                r.get("Collection"),
                r.get("PatientID"),
                r.get("Modality"),
            ),
            (s["image_count"], s["file_size"], s["collection"], s["patient"], s["modality"]),
            f"{what}: row of {uid}",
        )


@check("getSeries")
def _series(c: Ctx) -> None:
    d = c.data
    check_series_rows(c.nbia.getSeries(), d, {s["uid"] for s in d.series}, "all series")
    for coll in d.names:
        check_series_rows(c.nbia.getSeries(collection=coll), d, d.uids(collection=coll), coll)
    s = next(s for s in d.series if s["body_part"] and s["manufacturer"] and s["model"])
    check_series_rows(
        c.nbia.getSeries(
            collection=s["collection"],
            patientId=s["patient"],
            studyUid=s["study"],
            modality=s["modality"],
            bodyPart=s["body_part"],
            manufacturer=s["manufacturer"],
            manufacturerModel=s["model"],
        ),
        d,
        d.uids(
            collection=s["collection"],
            patient=s["patient"],
            study=s["study"],
            modality=s["modality"],
            body_part=s["body_part"],
            manufacturer=s["manufacturer"],
            model=s["model"],
        ),
        "every filter at once",
    )
    check_series_rows(c.nbia.getSeries(seriesUid=s["uid"]), d, {s["uid"]}, "one series")
    df = c.nbia.getSeries(collection=s["collection"], format="df")
    equal(set(df["SeriesInstanceUID"]), d.uids(collection=s["collection"]), "as a DataFrame")


@check("getUpdatedSeries")
def _updated(c: Ctx) -> None:
    d = c.data
    when = discriminating_day([s["released_at"] for s in d.series], "after")
    want = {s["uid"] for s in d.series if s["released_at"] > when}  # v4 fromDate: strictly after
    check_series_rows(
        c.nbia.getUpdatedSeries(when.strftime("%Y/%m/%d")), d, want, f"released after {when:%Y-%m-%d}"
    )


@check("getSeriesList")
def _series_list(c: Ctx) -> None:
    d = c.data
    uids = [s["uid"] for s in d.series]
    df = c.nbia.getSeriesList(uids)
    if df is None or df.empty:
        raise AssertionError("no DataFrame")
    equal(set(df["SeriesInstanceUID"]), set(uids), "series")
    for _, row in df.iterrows():
        s = d.by_uid[row["SeriesInstanceUID"]]
        equal(
            (int(row["ImageCount"]), int(row["FileSize"]), row["Collection"], str(row["PatientID"])),
            (s["image_count"], s["file_size"], s["collection"], s["patient"]),
            f"row of {s['uid']}",
        )
    csv = c.workdir / "getSeriesList-out"
    c.nbia.getSeriesList(uids[:2], csv_filename=str(csv))
    equal(len(pd.read_csv(f"{csv}.csv")), 2, "rows saved to the CSV file")


@check("getSeriesSize")
def _series_size(c: Ctx) -> None:
    for s in c.data.series[:4]:
        rows = nonempty_rows(c.nbia.getSeriesSize(s["uid"]), s["uid"])
        equal(len(rows), 1, "rows")
        equal(
            (float(rows[0]["TotalSizeInBytes"]), int(rows[0]["ObjectCount"])),
            (float(s["file_size"]), s["image_count"]),
            f"size of {s['uid']}",
        )


@check("getSopInstanceUids")
def _sops(c: Ctx) -> None:
    for s in c.data.series:
        rows = nonempty_rows(c.nbia.getSopInstanceUids(s["uid"]), s["uid"])
        equal(
            [r["SOPInstanceUID"] for r in rows], s["sops"], f"SOPInstanceUIDs of {s['uid']} (database order)"
        )


@check("getSharedCart")
def _shared_cart(c: Ctx) -> None:
    if not c.data.carts:
        raise AssertionError("the server has no shared cart the guest may see")
    for name, uids in c.data.carts.items():
        rows = nonempty_rows(c.nbia.getSharedCart(name), name)
        equal({r["SeriesInstanceUID"] for r in rows}, set(uids), f"cart {name}")
        if not all("Date Released" in r for r in rows):
            raise AssertionError(f"getContentsByName rows lack 'Date Released': {rows[0]}")


# ---- downloads ----------------------------------------------------------------------------------------------


def check_dir(folder: Path, s: dict[str, Any], names: str) -> None:
    """``folder`` holds exactly the series' instances, byte for byte, named as ``names`` says."""
    if not folder.is_dir():
        raise AssertionError(f"{folder.name}: not downloaded")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    got = Counter((md5(data), len(data)) for data in (p.read_bytes() for p in files))
    equal(got, Counter(zip(s["md5"], s["sizes"], strict=True)), f"instances of {s['uid']} (MD5, size)")
    width = len(str(s["image_count"]))
    if names == "new":
        bad = [p.name for p in files if not re.fullmatch(rf"\d+-\d{{{width}}}\.dcm", p.name)]
        if bad or not (folder / "LICENSE").is_file():
            listing = sorted(p.name for p in folder.iterdir())[:4]
            raise AssertionError(f"NewFileNames names {bad[:3]} or no LICENSE in {listing}")
    elif names == "md5":
        hashes = (folder / "md5hashes.csv").read_text().splitlines()
        table = dict(line.split(",", 1) for line in hashes[1:] if line)
        equal(hashes[0], "Filename,MD5Hash", "md5hashes.csv header")
        equal(table, {p.name: md5(p.read_bytes()) for p in files}, "md5hashes.csv")


@check("downloadSeries")
def _download_series(c: Ctx) -> None:
    d = c.data
    nbia = c.nbia

    def default_json() -> None:
        path = c.path("json")
        series_json = nbia.getSeries()
        result = nbia.downloadSeries(series_json, path=str(path))
        equal(result, None, "return value without format")
        for s in d.series:
            check_dir(path / s["uid"], s, "new")

    def md5_list() -> None:
        path = c.path("md5")
        uids = [s["uid"] for s in d.series[:3]]
        nbia.downloadSeries(uids, path=str(path), input_type="list", hash="y")
        for uid in uids:
            check_dir(path / uid, d.by_uid[uid], "md5")

    def zip_df() -> None:
        path = c.path("zip")
        coll = d.collection_with(min_series=2)
        df = nbia.getSeries(collection=coll, format="df")
        nbia.downloadSeries(df, path=str(path), input_type="df", as_zip=True, number=2)
        zips = sorted(path.glob("*.zip"))
        equal(len(zips), 2, "ZIP files (number=2)")
        for z in zips:
            s = d.by_uid[z.stem]
            with zipfile.ZipFile(z) as zf:
                members = [m for m in zf.namelist() if m.endswith(".dcm")]
                got = Counter((md5(data), len(data)) for data in (zf.read(m) for m in members))
                equal(got, Counter(zip(s["md5"], s["sizes"], strict=True)), f"ZIP {z.name} (MD5, size)")

    def manifest_df() -> None:
        path = c.path("manifest")
        coll = d.collection_with(min_series=2)
        text = nbia.getSimpleSearch(collections=[coll], format="manifest_text")
        manifest = c.workdir / "downloadSeries.tcia"
        manifest.write_text(text)
        df = nbia.downloadSeries(str(manifest), path=str(path), input_type="manifest", format="df")
        want = d.uids(collection=coll)
        for uid in want:
            check_dir(path / uid, d.by_uid[uid], "new")
        equal(set(df["SeriesInstanceUID"]), want, "metadata of the downloaded series")
        again = nbia.downloadSeries(str(manifest), path=str(path), input_type="manifest", format="df")
        equal(set(again["SeriesInstanceUID"]), want, "metadata of previously downloaded series")

    c.variant("getSeries JSON, NewFileNames", default_json)
    c.variant("list, hash=y", md5_list)
    c.variant("df, as_zip", zip_df)
    c.variant("manifest, format=df", manifest_df)


@check("downloadImage")
def _download_image(c: Ctx) -> None:
    path = c.path("img")
    for s in c.data.series[:3]:
        for sop, digest, size in list(zip(s["sops"], s["md5"], s["sizes"], strict=True))[:2]:
            c.nbia.downloadImage(s["uid"], sop, path=str(path))
            data = (path / s["uid"] / f"{sop}.dcm").read_bytes()
            equal((md5(data), len(data)), (digest, size), f"instance {sop} (MD5, size)")


# ---- the advanced API ---------------------------------------------------------------------------------------


@check("getCollectionDescriptions")
def _descriptions(c: Ctx) -> None:
    d = c.data
    rows = nonempty_rows(c.nbia.getCollectionDescriptions(), "descriptions")
    described = {x["name"]: x for x in d.collections if x["described"]}
    equal({r["collectionName"] for r in rows}, set(described), "described collections")
    for r in rows:
        if "<" not in (r.get("description") or ""):
            raise AssertionError(
                f"description of {r['collectionName']} is not HTML: {r.get('description')!r}"
            )
        equal(r.get("descriptionURI"), described[r["collectionName"]]["doi"], "descriptionURI")
    df = c.nbia.getCollectionDescriptions(format="df", removeHtml="yes")
    if any("<" in text for text in df["description"]):
        raise AssertionError("removeHtml left tags")


def patients_per(d: Data, key: str, series: list[dict[str, Any]]) -> dict[str, int]:
    groups: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for s in series:
        if s[key] is not None:
            groups[s[key]].add((s["collection"], s["patient"]))
    return {k: len(v) for k, v in groups.items()}


def check_counts(rows: Any, key: str, want: dict[str, int], what: str) -> None:
    rows = nonempty_rows(rows, what)
    got = {r[key]: r["Count"] for r in rows if key in r}
    equal({_fold(k): v for k, v in got.items()}, {_fold(k): v for k, v in want.items()}, f"{what} (patients)")
    if any(r.get("Authorized") != 1 for r in rows):
        raise AssertionError(f"{what}: rows without Authorized=1")


@check("getCollectionPatientCounts")
def _collection_counts(c: Ctx) -> None:
    d = c.data
    check_counts(
        c.nbia.getCollectionPatientCounts(), "Collection", patients_per(d, "collection", d.series), "all"
    )


@check("getModalityCounts")
def _modality_counts(c: Ctx) -> None:
    d = c.data
    check_counts(c.nbia.getModalityCounts(), "Modality", patients_per(d, "modality", d.series), "all")
    for coll in d.names:
        got = c.nbia.getModalityCounts(collection=coll)
        check_counts(got, "Modality", patients_per(d, "modality", d.select(collection=coll)), coll)
    part = next(s["body_part"] for s in d.series if s["body_part"])
    got = c.nbia.getModalityCounts(bodyPart=part)
    check_counts(got, "Modality", patients_per(d, "modality", d.select(body_part=part)), part)


@check("getBodyPartCounts")
def _body_part_counts(c: Ctx) -> None:
    d = c.data
    check_counts(c.nbia.getBodyPartCounts(), "BodyPart", patients_per(d, "body_part", d.series), "all")
    s = d.series[0]
    got = c.nbia.getBodyPartCounts(collection=s["collection"], modality=s["modality"])
    want = patients_per(d, "body_part", d.select(collection=s["collection"], modality=s["modality"]))
    check_counts(got, "BodyPart", want, "by collection and modality")


@check("getManufacturerCounts")
def _manufacturer_counts(c: Ctx) -> None:
    d = c.data
    check_counts(
        c.nbia.getManufacturerCounts(), "Manufacturer", patients_per(d, "manufacturer", d.series), "all"
    )
    s = next(s for s in d.series if s["manufacturer"] and s["body_part"])
    got = c.nbia.getManufacturerCounts(
        collection=s["collection"], modality=s["modality"], bodyPart=s["body_part"]
    )
    want = d.select(collection=s["collection"], modality=s["modality"], body_part=s["body_part"])
    check_counts(got, "Manufacturer", patients_per(d, "manufacturer", want), "filtered")


def tag(df: Any, element: str) -> Any:
    rows = df.loc[df["element"] == element, "data"]
    if len(rows) != 1:
        raise AssertionError(f"{len(rows)} rows for {element}")
    return rows.item()


@check("getDicomTags")
def _dicom_tags(c: Ctx) -> None:
    for s in c.data.series:
        df = c.nbia.getDicomTags(s["uid"])
        if df is None or df.empty:
            raise AssertionError(f"no tags for {s['uid']}")
        equal(tag(df, "(0020,000E)"), s["uid"], "Series Instance UID")
        equal(tag(df, "(0008,0018)"), s["sops"][0], "SOP Instance UID (the first instance)")
        equal(tag(df, "(0008,0060)"), s["modality"], "Modality")


@check("getSegRefSeries")
def _seg_ref(c: Ctx) -> None:
    segs = c.data.select(modality="SEG")
    if not segs:
        raise AssertionError("the server has no SEG series")
    for s in segs:
        equal(
            c.nbia.getSegRefSeries(s["uid"]), s.get("ref_series") or "N/A", f"series referenced by {s['uid']}"
        )
    other = next(s for s in c.data.series if s["modality"] not in ("SEG", "RTSTRUCT"))
    equal(c.nbia.getSegRefSeries(other["uid"]), "N/A", "a series that is no segmentation")


@check("getDoiMetadata")
def _doi(c: Ctx) -> None:
    d = c.data
    with_doi = [x for x in d.collections if x["doi"]]
    if not with_doi:
        raise AssertionError("no collection with a DOI")
    for coll in with_doi:
        rows = nonempty_rows(c.nbia.getDoiMetadata(coll["doi"]), coll["doi"])
        equal({r["collection"] for r in rows}, {coll["name"]}, f"collections of {coll['doi']}")
        rows = nonempty_rows(c.nbia.getDoiMetadata(coll["doi"], output="series"), coll["doi"])
        equal(
            {r["seriesInstanceUID"] for r in rows},
            d.uids(collection=coll["name"]),
            f"series of {coll['doi']}",
        )


def search_subjects(answer: Any, what: str, visible: set[str]) -> set[str]:
    """The subjects of a v4 simple search the caller may download; v4 also lists the others, marked
    ``authorized: 0`` (facts §7), which must then be patients the guest cannot see."""
    if not isinstance(answer, dict) or not answer.get("resultSet"):
        raise AssertionError(f"{what}: no resultSet in {str(answer)[:200]}")
    rows = answer["resultSet"]
    if answer.get("totalPatients") != len(rows):
        raise AssertionError(f"{what}: totalPatients {answer.get('totalPatients')} for {len(rows)} subjects")
    refused = {r["subjectId"] for r in rows if r.get("authorized") == 0}
    if refused & visible:
        raise AssertionError(
            f"{what}: patients the guest may see marked authorized=0: {sorted(refused & visible)}"
        )
    return {r["subjectId"] for r in rows if r.get("authorized") != 0}


@check("getSimpleSearch")
def _simple_search(c: Ctx) -> None:
    d = c.data
    nbia = c.nbia
    everyone = {p["id"] for p in d.patients}
    coll = d.collection_with(min_patients=2)

    def subjects(answer: Any, what: str) -> set[str]:
        return search_subjects(answer, what, everyone)

    def by(**want: Any) -> set[str]:
        return d.patients_of(d.select(**want))

    def plain() -> None:
        equal(subjects(nbia.getSimpleSearch(), "no criteria"), everyone, "every patient")
        equal(subjects(nbia.getSimpleSearch(collections=[coll]), coll), by(collection=coll), coll)
        two = d.names[:2]
        either = by(collection=two[0]) | by(collection=two[1])
        equal(subjects(nbia.getSimpleSearch(collections=two), "two"), either, "collections OR-ed")

    def facets() -> None:
        equal(subjects(nbia.getSimpleSearch(modalities=["MR"]), "MR"), by(modality="MR"), "modality MR")
        equal(subjects(nbia.getSimpleSearch(bodyParts=["CHEST"]), "CHEST"), by(body_part="CHEST"), "CHEST")
        maker = next(s["manufacturer"] for s in d.series if s["manufacturer"])
        equal(subjects(nbia.getSimpleSearch(manufacturers=[maker]), maker), by(manufacturer=maker), maker)
        pid = d.patients[0]["id"]
        equal(subjects(nbia.getSimpleSearch(patients=[pid]), pid), {pid}, "one patient")
        equal(subjects(nbia.getSimpleSearch(species=["human"]), "human"), everyone, "species human")
        multi = {k[1] for k, v in d.studies_per_patient().items() if len(v) >= 2}
        equal(subjects(nbia.getSimpleSearch(minStudies=2), "minStudies"), multi, "patients with 2+ studies")
        anded = by(modality="MR") & by(modality="SEG")
        got = subjects(nbia.getSimpleSearch(modalities=["MR", "SEG"], modalityAnded=True), "MR and SEG")
        equal(got, anded, "modalityAnded")

    def manifests() -> None:
        uids = nbia.getSimpleSearch(collections=[coll], format="uids")
        equal(set(uids or []), d.uids(collection=coll), "format=uids")
        text = nbia.getSimpleSearch(collections=[coll], format="manifest_text")
        if not text.startswith("downloadServerUrl="):
            raise AssertionError(f"manifest text {text[:80]!r}")
        for old in c.workdir.glob("manifest-*.tcia"):  # named by the minute: clear earlier runs' files
            old.unlink()
        nbia.getSimpleSearch(collections=[coll], format="manifest")
        written = sorted(c.workdir.glob("manifest-*.tcia"))
        equal(len(written), 1, "manifest files written")
        equal(set(nbia.manifestToList(str(written[0]))), d.uids(collection=coll), "manifest file")

    def dates() -> None:
        # No series of the archive is from 2050: a date filter that is sent must leave no patient.
        got = nbia.getSimpleSearch(fromDate="2050/01/01", toDate="2050/12/31")
        if got is None:
            return
        if subjects(got, "2050") == everyone:
            raise KnownBugError(
                "getSimpleSearch sends criteriaType<i>=Criteria.DateRange (the Enum member, not its value "
                "'DateRangeCriteria'), so the server, like production, ignores an unknown criteria type and "
                "the date range filters nothing (every patient came back for 2050)"
            )
        raise AssertionError(f"patients for a date range in 2050: {sorted(subjects(got, '2050'))}")

    c.variant("collections", plain)
    c.variant("facets", facets)
    c.variant("manifest formats", manifests)
    c.variant("fromDate/toDate", dates)


# ---- reports ------------------------------------------------------------------------------------------------


def summary_rows(df: Any, d: Data, key: str) -> None:
    if df is None or df.empty:
        raise AssertionError("no summary")
    got = {
        r[key]: (
            int(r["Subjects"]),
            int(r["Studies"]),
            int(r["Series"]),
            int(r["Images"]),
            int(r["File Size"]),
        )
        for _, r in df.iterrows()
    }
    want = {}
    for coll in d.names:
        rows = d.select(collection=coll)
        want[coll] = (
            len(d.patients_of(rows)),
            len({s["study"] for s in rows}),
            len(rows),
            sum(s["image_count"] for s in rows),
            sum(s["file_size"] for s in rows),
        )
    equal(got, want, "subjects, studies, series, images, bytes per collection")


@check("formatSeriesInput")
def _format_input(c: Ctx) -> None:
    d = c.data
    uids = [s["uid"] for s in d.series]
    for label, df in (
        ("list", c.nbia.formatSeriesInput(uids, "list", "")),
        ("json", c.nbia.formatSeriesInput(c.nbia.getSeries(), "", "")),
    ):
        equal(set(df["SeriesInstanceUID"]), set(uids), f"{label}: series")
        for _, r in df.iterrows():
            s = d.by_uid[r["SeriesInstanceUID"]]
            equal(
                (int(r["ImageCount"]), int(r["FileSize"])), (s["image_count"], s["file_size"]), f"{label} row"
            )
        if df["DateReleased"].isna().any():
            raise AssertionError(f"{label}: DateReleased not parsed")


@check("reportCollectionSummary")
def _collection_summary(c: Ctx) -> None:
    summary_rows(c.nbia.reportCollectionSummary(c.nbia.getSeries()), c.data, "Collection")
    uids = [s["uid"] for s in c.data.series]
    summary_rows(c.nbia.reportCollectionSummary(uids, input_type="list"), c.data, "Collection")


@check("reportDataSummary")
def _data_summary(c: Ctx) -> None:
    df = c.nbia.reportDataSummary(c.nbia.getSeries(format="df"), input_type="df", report_type="collection")
    summary_rows(df, c.data, "Collection")


@check("reportDoiSummary")
def _doi_summary(c: Ctx) -> None:
    raise OtherServiceError(
        "looks every DOI up at DataCite (tcia_utils.datacite.getDoi, api.datacite.org), which no NBIA server "
        "serves; its NBIA part is reportDataSummary, checked above"
    )


@check("makeSeriesReport")
def _series_report(c: Ctx) -> None:
    d = c.data
    want = (
        len({(s["collection"], s["patient"]) for s in d.series}),
        len({s["study"] for s in d.series}),
        len(d.series),
        sum(s["image_count"] for s in d.series),
    )
    for label, report in (
        ("json", c.nbia.makeSeriesReport(c.nbia.getSeries(), format="var")),
        ("list", c.nbia.makeSeriesReport([s["uid"] for s in d.series], input_type="list", format="var")),
    ):
        got = (report["subjects"], report["studies"], report["series"], int(report["images"]))
        equal(got, want, f"{label}: subjects, studies, series, images")


@check("reportDicomTags")
def _report_tags(c: Ctx) -> None:
    d = c.data
    uids = [s["uid"] for s in d.series[:4]]
    df = c.nbia.reportDicomTags(uids, elements=["(0008,0060)", "(0020,000D)"])
    if df is None:
        raise AssertionError("no report")
    equal(
        {r["Series Instance UID (0020,000E)"]: r["Modality (0008,0060)"] for _, r in df.iterrows()},
        {u: d.by_uid[u]["modality"] for u in uids},
        "modality per series",
    )
    equal(
        list(df["Study Instance UID (0020,000D)"]), [d.by_uid[u]["study"] for u in uids], "study per series"
    )
    full = c.nbia.reportDicomTags(uids[:1])
    if full is None or full.shape[1] < 20:
        raise AssertionError("the report of every tag has fewer than 20 columns")


FIGURES: list[Any] = []


def figure_totals(fig: Any) -> dict[str, int]:
    return {trace.name: int(max(trace.y)) for trace in fig.data if len(trace.y)}


@check("reportSeriesReleaseDate")
def _release_chart(c: Ctx) -> None:
    FIGURES.clear()
    c.nbia.reportSeriesReleaseDate(c.nbia.getSeries())
    equal(len(FIGURES), 1, "figures shown")
    want = {coll: len(c.data.select(collection=coll)) for coll in c.data.names}
    equal(figure_totals(FIGURES[0]), want, "cumulative series per collection")


@check("reportSeriesSubmissionDate")
def _submission_chart(c: Ctx) -> None:
    FIGURES.clear()
    series_json = c.nbia.getSeries()
    c.nbia.reportSeriesSubmissionDate(series_json)
    equal(len(FIGURES), 1, "figures shown")
    want = {coll: len(c.data.select(collection=coll)) for coll in c.data.names}
    got = figure_totals(FIGURES[0])
    if got == want:
        return
    if not got and all("TimeStamp" not in r and "MaxSubmissionTimestamp" in r for r in series_json):
        raise KnownBugError(
            "it charts the 'TimeStamp' column, which getSeries has only on v1/v2: on v4 (the only getSeries "
            "tcia_utils calls) production names it 'MaxSubmissionTimestamp' (facts §3), so the chart is empty"
        )
    equal(got, want, "cumulative series per collection")


@check("queryData")
def _query_data(c: Ctx) -> None:
    d = c.data
    nbia = c.nbia
    rows = nbia.queryData("getCollectionValues", {}, "", "json")
    equal(sorted(r["Collection"] for r in rows), sorted(d.names), "json")
    coll = d.collection_with(min_series=2)
    df = nbia.queryData("getSeries", {"Collection": coll}, "", "df")
    equal(set(df["SeriesInstanceUID"]), d.uids(collection=coll), "df")
    for old in c.workdir.glob("getPatient_*.csv"):  # named by the minute: clear earlier runs' files
        old.unlink()
    df = nbia.queryData("getPatient", {"Collection": coll}, "", "csv")
    written = list(c.workdir.glob("getPatient_*.csv"))
    equal(len(written), 1, "CSV files written")
    equal(set(pd.read_csv(written[0])["PatientId"].astype(str)), set(df["PatientId"].astype(str)), "CSV rows")
    html = nbia.queryData("getSeries", {"Collection": coll}, "", "html")
    missing = [u for u in d.uids(collection=coll) if u not in html.data]
    equal(missing, [], "series in the HTML table")
    posted = nbia.queryData(
        "getCollectionOrSeriesForDOI", None, "", "json", method="POST", param={"DOI": d.collections[0]["doi"]}
    )
    equal([r["collection"] for r in nonempty_rows(posted, "POST")], [d.collections[0]["name"]], "POST")
    equal(nbia.queryData("getSeries", {"Collection": "No Such Collection"}, "", "json"), None, "no rows")


# ---------------------------------------------------------------------------------------------------------
# Main


def point_at(nbia: Any, base: str) -> None:
    """Swap the scheme and host of every URL tcia_utils builds for ``base`` (its path choice is kept)."""
    original = nbia.setApiUrl

    def set_api_url(endpoint: str, api_url: str = "nbia") -> str:
        return base + urlsplit(original(endpoint, api_url)).path

    nbia.setApiUrl = set_api_url


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--expect", required=True, type=Path)
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args()
    base = args.base.rstrip("/")
    args.workdir = args.workdir.resolve()
    os.chdir(args.workdir)  # tcia_utils writes some files (manifests, CSVs) to the current directory
    data = Data(json.loads(args.expect.read_text()))

    plotly.basedatatypes.BaseFigure.show = lambda self, *a, **k: FIGURES.append(self)  # type: ignore[method-assign]
    from tcia_utils import nbia

    logging.getLogger().setLevel(logging.INFO)
    point_at(nbia, base)
    traffic = Traffic(base)
    version = getattr(sys.modules.get("tcia_utils"), "__version__", None)
    try:
        from importlib.metadata import version as dist_version

        version = dist_version("tcia_utils")
    except Exception:
        pass
    print(f"# tcia_utils {version} against {base}", flush=True)

    functions = querying_functions(nbia)
    print(
        f"# {len(functions)} functions of tcia_utils.nbia query or download: {', '.join(functions)}",
        flush=True,
    )
    for name, why in functions.items():
        fn = CHECKS.get(name)
        if fn is None:
            record(
                "FAIL",
                name,
                f"no check written for it ({why}): new in this tcia_utils? add one to tcia_driver.py",
            )
            continue
        try:
            with traffic.watch() as calls:
                fn(Ctx(nbia, data, args.workdir, name))
        except OtherServiceError as skip:
            record("SKIP", name, str(skip))
        except KnownBugError as bug:
            record("SKIP", name, f"tcia_utils bug: {bug}")
        except Exception as exc:
            traceback.print_exc()
            record("FAIL", name, f"{type(exc).__name__}: {exc}"[:600])
        else:
            if not calls:
                record("FAIL", name, "sent no request")
            else:
                record("PASS", name, traffic.summary(calls))
    for name in sorted(set(CHECKS) - set(functions)):
        record("FAIL", name, "has a check but was not found to query: renamed or removed in this tcia_utils?")

    print(f"# v2 OAuth client (nbiatoolkit's sequence) against {base}", flush=True)
    try:
        v2_oauth_client.run(base, data.raw, record)
    except Exception as exc:
        traceback.print_exc()
        record("FAIL", "v2oauth", f"{type(exc).__name__}: {exc}")

    counts = Counter(status for status, _, _ in RESULTS)
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
