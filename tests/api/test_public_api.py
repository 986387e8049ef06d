"""The public Python API: ``import nbiafs`` names, records as dicts and DataFrames."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pandas as pd

import nbiafs
from nbiafs.server import ArchiveServer
from tests.helpers import api_client


def test_every_public_name_resolves() -> None:
    for name in nbiafs.__all__:
        assert getattr(nbiafs, name) is not None, name
    assert issubclass(nbiafs.NoSpaceError, nbiafs.CacheError)


def test_importing_the_server_does_not_load_the_client() -> None:
    code = "import sys, nbiafs.server; print(sorted(m for m in sys.modules if m.startswith('nbiafs.api')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_records_to_dicts_and_dataframes(archive_server: ArchiveServer) -> None:
    with api_client(archive_server.url, "v1") as client:
        series = client.series(collection="RIDER Synth CT")
        counts = client.modality_counts()
    first = series[0].to_dict()
    assert first["series_instance_uid"] == series[0].series_instance_uid and "raw" not in first
    assert series[0].to_dict(raw=True) == series[0].raw and "SeriesInstanceUID" in series[0].raw

    frame = nbiafs.to_dataframe(series)
    assert list(frame["series_instance_uid"]) == [s.series_instance_uid for s in series]
    assert pd.api.types.is_datetime64_any_dtype(frame["date_released"]) or all(
        isinstance(v, dt.datetime) for v in frame["date_released"].dropna()
    )
    raw = nbiafs.to_dataframe(series, raw=True)
    assert "SeriesInstanceUID" in raw.columns and len(raw) == len(series)
    assert set(nbiafs.to_dataframe(counts).columns) >= {"value", "count"}
