"""The advanced API through the client, on both prefixes (unversioned with a token, v4 anonymous)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nbiafs.api.client import NbiaClient
from nbiafs.errors import AccessDeniedError, ConfigError
from nbiafs.server import ArchiveServer, SeriesInfo
from tests.helpers import API_KEY, RESTRICTED, api_client

CT = "RIDER Synth CT"


@pytest.fixture(params=["v2", "v4", "v1"])
def client(request: pytest.FixtureRequest, archive_server: ArchiveServer) -> Iterator[NbiaClient]:
    with api_client(archive_server.url, request.param) as c:
        yield c


def public_series(srv: ArchiveServer) -> list[SeriesInfo]:
    return [s for s in srv.archive.iter_series() if s.collection != RESTRICTED]


def test_counts_are_distinct_patients(client: NbiaClient, archive_server: ArchiveServer) -> None:
    expected: dict[str, set[tuple[str, str]]] = {}
    for s in public_series(archive_server):
        expected.setdefault(s.modality, set()).add((s.collection, s.patient_id))
    got = {c.value: c.count for c in client.modality_counts()}
    assert got == {m: len(p) for m, p in expected.items()}
    collections = {c.value: c.count for c in client.collection_counts()}
    assert RESTRICTED not in collections
    assert collections[CT] == len(archive_server.archive.collections[CT].patients)
    assert {c.value for c in client.modality_counts(collection=CT)} == {
        s.modality for s in public_series(archive_server) if s.collection == CT
    }
    assert all(c.count > 0 for c in client.body_part_counts() + client.manufacturer_counts())


def test_descriptions_doi_and_tags(client: NbiaClient, archive_server: ArchiveServer) -> None:
    described = {d.collection: d for d in client.collection_descriptions()}
    assert CT in described and RESTRICTED not in described
    doi = described[CT].description_uri
    assert doi is not None and doi.startswith("https://doi.org/")
    assert client.collection_descriptions("no such collection") == []

    entries = client.doi_entries(doi, series=True)
    archive = archive_server.archive
    doi_collections = {name for name, c in archive.collections.items() if c.collection_uri == doi}
    series_uids = {
        s.series_instance_uid for s in public_series(archive_server) if s.collection in doi_collections
    }
    assert {e.series_instance_uid for e in entries} == series_uids and series_uids
    assert {e.collection for e in client.doi_entries(doi)} == {CT}

    one = sorted(series_uids)[0]
    tags = client.dicom_tags(one)
    assert tags[0].element.startswith("(0002,")
    assert any(t.element == "(0020,000E)" and t.data == one for t in tags)
    secret = next(s for s in archive_server.archive.iter_series() if s.collection == RESTRICTED)
    with pytest.raises(AccessDeniedError):
        client.dicom_tags(secret.series_instance_uid)


def test_simple_search_and_its_manifest(client: NbiaClient, archive_server: ArchiveServer) -> None:
    coll = archive_server.archive.collections[CT]
    result = client.simple_search([("CollectionCriteria", CT)], size=100)
    assert result.total_patients == len(coll.patients)
    assert {p.subject_id for p in result.patients} == {p.patient_id for p in coll.patients}
    assert all(p.project == CT for p in result.patients)
    page = client.simple_search([("CollectionCriteria", CT)], start=0, size=1)
    assert len(page.patients) == 1 and page.total_patients == len(coll.patients)
    manifest = client.simple_search_manifest([("CollectionCriteria", CT)])
    assert set(manifest.series_instance_uids) == {
        s.series_instance_uid for s in public_series(archive_server) if s.collection == CT
    }
    assert client.simple_search_manifest([("CollectionCriteria", "no such")]).series_instance_uids == ()


def test_v3_has_no_advanced_api(archive_server: ArchiveServer) -> None:
    from nbiafs.api.credentials import Credentials

    with api_client(archive_server.url, "v3", Credentials("", "", API_KEY)) as c, pytest.raises(ConfigError):
        c.modality_counts()
