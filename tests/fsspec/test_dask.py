"""Dask distributed over ``nbia://``: two worker processes compute each series' pixel mean of a collection from
the bundled server, sharing one cache directory, and get what the same computation on the server's own bytes
gives locally. Skipped when dask or distributed is not installed (the nbiafs[dask] extra)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

pytest.importorskip("fsspec", reason="fsspec is not installed (the nbiafs[fsspec] extra)")
pytest.importorskip("dask", reason="dask is not installed (the nbiafs[dask] extra)")
distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (the nbiafs[dask] extra)"
)

import pydicom  # noqa: E402

from nbiafs.fsspec import NbiaFileSystem  # noqa: E402
from tests.fsspec.conftest import MakeFs  # noqa: E402
from tests.helpers import MakeServer, settle  # noqa: E402

pytestmark = pytest.mark.timeout(120)

COLLECTION = "NBIAFS-MR-Brain"
DEADLINE = 60.0  # seconds for the cluster to start and for the whole computation


def series_mean(series_dir: str, fs: NbiaFileSystem) -> tuple[int, float]:
    """The mean of the pixel means of a series' instances, in listing order (runs on a worker); and the
    worker's process id."""
    means = []
    for path in fs.ls(series_dir, detail=False):
        with fs.open(path) as f:
            means.append(float(pydicom.dcmread(f).pixel_array.mean()))
    return os.getpid(), sum(means) / len(means)


def local_means(archive: object, collection: str) -> dict[str, float]:
    """``{SeriesInstanceUID: mean}`` computed as :func:`series_mean` does, from the server's own bytes."""
    out = {}
    for series in archive.iter_series():  # type: ignore[attr-defined]
        if series.collection != collection:
            continue
        means = []
        for sop in sorted(i.sop_instance_uid for i in series.instances):  # listing order: by file name
            data = archive.instance_bytes(sop)  # type: ignore[attr-defined]
            means.append(float(pydicom.dcmread(io.BytesIO(data)).pixel_array.mean()))
        out[series.series_instance_uid] = sum(means) / len(means)
    return out


def test_series_means_on_a_local_cluster(make_server: MakeServer, make_fs: MakeFs, tmp_path: Path) -> None:
    srv = make_server()
    shared_cache = tmp_path / "shared-cache"
    fs = make_fs(srv.url, layout="uid", cache_dir=str(shared_cache))
    series_dirs = [
        p for p, info in fs.find(COLLECTION, withdirs=True, detail=True).items() if info["kind"] == "series"
    ]
    expected = local_means(srv.archive, COLLECTION)
    assert len(series_dirs) == len(expected) > 2

    cluster = client = None
    try:
        cluster = distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
            timeout=DEADLINE,
        )
        client = distributed.Client(cluster, timeout=DEADLINE)
        client.wait_for_workers(2, timeout=DEADLINE)
        worker_pids = set(client.run(os.getpid).values())
        futures = client.map(series_mean, series_dirs, fs=fs, pure=False)
        distributed.wait(futures, timeout=DEADLINE)
        results = client.gather(futures)
    finally:
        if client is not None:
            client.close(timeout=10)
        if cluster is not None:
            cluster.close(timeout=10)

    got = {path.rsplit("/", 1)[-1]: mean for (_pid, mean), path in zip(results, series_dirs, strict=True)}
    assert got == expected
    pids = {pid for pid, _mean in results}
    assert pids <= worker_pids and os.getpid() not in pids, "the series must be computed in the workers"

    # The workers filled the one shared cache: reading the collection here downloads nothing.
    settle(srv)
    since = len(srv.requests)
    files = fs.find(COLLECTION)
    assert all(fs.info(p)["exact_size"] for p in files)
    assert all(fs.cat_file(p) == srv.archive.instance_bytes(p.rsplit("/", 1)[-1][:-4]) for p in files)
    settle(srv)
    assert [r.path for r in srv.requests[since:] if r.endpoint in ("getSingleImage", "getImage")] == []
