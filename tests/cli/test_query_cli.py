"""``nbiafs query`` against the bundled server: json, csv and table output, v3 metadata, errors."""

from __future__ import annotations

import csv
import io
import json

import pytest

from nbiafs.cli.main import main
from nbiafs.cli.query import parse_params, write_csv, write_table
from nbiafs.errors import ConfigError
from nbiafs.server import ArchiveServer
from tests.helpers import ALICE, ALICE_PASSWORD, API_KEY, RESTRICTED

MR = "NBIAFS-MR-Brain"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["query", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(autouse=True)
def no_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NBIA_USER", "NBIA_PASSWORD", "NBIA_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_json(archive_server: ArchiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    api = f"{archive_server.url}/nbia-api/services/v2"
    status, out, _ = run(
        capsys, "getSeries", "--api-url", api, "-p", f"Collection={MR}", "-p", "Modality=SEG"
    )
    assert status == 0
    rows = json.loads(out)
    expected = [s for s in archive_server.archive.iter_series() if s.collection == MR and s.modality == "SEG"]
    assert {r["SeriesInstanceUID"] for r in rows} == {s.series_instance_uid for s in expected}
    assert out.startswith("[\n  {")  # pretty-printed


def test_csv_header_is_the_union_of_keys(
    archive_server: ArchiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys, "getSeries", "--server", "tcia-v4", "--api-url", archive_server.url, "-f", "csv"
    )
    assert status == 0
    reader = csv.DictReader(io.StringIO(out))
    rows = list(reader)
    assert reader.fieldnames is not None and "MaxSubmissionTimestamp" in reader.fieldnames
    assert len(rows) == sum(1 for s in archive_server.archive.iter_series() if s.collection != RESTRICTED)
    # Series without a SeriesNumber leave the cell empty rather than shifting columns.
    assert any(r["SeriesNumber"] == "" for r in rows) and all(r["SeriesInstanceUID"] for r in rows)


def test_table(
    archive_server: ArchiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBIA_PASSWORD", ALICE_PASSWORD)
    api = f"{archive_server.url}/nbia-api/services/v2"
    status, out, _ = run(
        capsys, "getCollectionValues", "--api-url", api, "--user", ALICE, "--format", "table"
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "Collection" and set(lines[1]) == {"-"}
    assert RESTRICTED in lines[2:] and MR in lines[2:]
    assert ALICE_PASSWORD not in out


def test_v3_metadata_and_api_key(
    archive_server: ArchiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBIA_API_KEY", API_KEY)
    base = ["--server", "legacy-v3", "--api-url", archive_server.url]
    status, out, _ = run(capsys, "getPatientStudy", "--metadata", *base)
    assert status == 0 and json.loads(out)["name"] == "getPatientStudy"
    status, out, _ = run(
        capsys, "PatientsByModality", *base, "-p", f"Collection={MR}", "-p", "Modality=SEG", "-f", "csv"
    )
    assert status == 0 and out.splitlines() == ["PatientId", "BRAIN-001"]


def test_errors_are_reported_not_raised(
    archive_server: ArchiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    api = f"{archive_server.url}/nbia-api/services/v1"
    status, out, err = run(capsys, "getSeriesSize", "--api-url", api)
    assert status == 1 and out == "" and "SeriesInstanceUID" in err
    status, _, err = run(
        capsys, "getCollectionValues", "--server", "legacy-v3", "--api-url", archive_server.url
    )
    assert status == 1 and "NBIA_API_KEY" in err


def test_empty_answer(archive_server: ArchiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    api = f"{archive_server.url}/nbia-api/services/v1"
    for fmt, expected in (("json", "[]\n"), ("csv", ""), ("table", "(no rows)\n")):
        status, out, _ = run(capsys, "getPatient", "--api-url", api, "-p", "Collection=nothing", "-f", fmt)
        assert (status, out) == (0, expected)


def test_formatters_and_params() -> None:
    rows = [{}, {"A": 1, "B": "x,y"}, {"C": True, "A": "long " * 20}]
    buf = io.StringIO()
    write_csv(rows, buf)
    # A {} row (a null value of a one-column list) stays a row: empty cells.
    assert buf.getvalue().splitlines() == ["A,B,C", ",,", '1,"x,y",', ("long " * 20) + ",,true"]
    buf = io.StringIO()
    write_table(rows, buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["A", "B", "C"] and set(lines[1]) == {"-", " "} and lines[2] == ""
    assert lines[3].index("x,y") == lines[0].index("B") and lines[4].endswith("true")
    assert "…" in lines[4] and lines[4].index("true") == lines[0].index("C")  # long cell cut, columns aligned
    uid = "1.2.826.0.1.3680043.8.498.70985579507329031225816304914395629331"
    buf = io.StringIO()
    write_table([{"SeriesInstanceUID": uid}], buf)
    assert uid in buf.getvalue()  # a 64-character UID is never cut
    assert parse_params(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ConfigError):
        parse_params(["novalue"])


ADVANCED = [
    ("getModalityValuesAndCounts", ["-p", "Collection=RIDER Synth CT"]),
    ("getBodyPartValuesAndCounts", []),
    ("getCollectionValuesAndCounts", []),
    ("getManufacturerValuesAndCounts", []),
    ("getCollectionDescriptions", ["-p", "collectionName=RIDER Synth CT"]),
    ("getCollectionOrSeriesForDOI", ["-p", "CollectionOrSeries=collection"]),
    (
        "getSimpleSearch",
        ["-p", "criteriaType0=CollectionCriteria", "-p", "value0=RIDER Synth CT", "-p", "sortField=subject"]
        + ["-p", "sortDirection=ascending", "-p", "start=0", "-p", "size=10"],
    ),
]


@pytest.mark.parametrize("version", ["v2", "v4"])
@pytest.mark.parametrize(("endpoint", "params"), ADVANCED, ids=[name for name, _ in ADVANCED])
def test_every_advanced_endpoint_answers_on_both_prefixes(
    archive_server: ArchiveServer,
    capsys: pytest.CaptureFixture[str],
    version: str,
    endpoint: str,
    params: list[str],
) -> None:
    api = f"{archive_server.url}/nbia-api/services/{version}"
    status, out, err = run(capsys, endpoint, "--api-url", api, *params)
    assert status == 0, err
    rows = json.loads(out)
    assert rows and all(isinstance(row, dict) for row in rows), out


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_dicom_tags_and_the_search_manifest(
    archive_server: ArchiveServer, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    api = f"{archive_server.url}/nbia-api/services/{version}"
    series = next(s for s in archive_server.archive.iter_series() if s.collection == "RIDER Synth CT")
    status, out, err = run(
        capsys, "getDicomTags", "--api-url", api, "-p", f"SeriesUID={series.series_instance_uid}"
    )
    assert status == 0, err
    assert any(row.get("data") == series.series_instance_uid for row in json.loads(out))
    search = ADVANCED[-1][1]  # sortField, sortDirection, start and size are required (else 500)
    status, out, err = run(capsys, "getManifestForSimpleSearch", "--api-url", api, *search)
    assert status == 0, err
    assert "ListOfSeriesToDownload=" in out and series.series_instance_uid in out
