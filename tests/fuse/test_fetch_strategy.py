"""The fetch strategy through a real mount: ``cp -r`` of small-instance series streams getImage ZIPs, and
the copies are byte-identical to the archive."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from nbiafs.server import ArchiveServer
from tests.helpers import settle
from tests.mountutil import archive_files, files_under, mounted, needs_fuse, run

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]

BENCH = "NBIAFS-Bench"  # one series of 200 small instances
MR = "NBIAFS-MR-Brain"  # several series of small instances


def copied_and_counted(srv: ArchiveServer, tmp_path: Path, collection: str) -> Counter[str]:
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache") as m:
        done = run(["cp", "-r", str(m.path / collection), str(tmp_path / "copy")], timeout=90)
        assert done.returncode == 0, done.stderr
    got = files_under(tmp_path / "copy")
    expected = archive_files(srv.archive, collection)
    assert sorted(got) == sorted(expected)
    for name, path in got.items():
        assert path.read_bytes() == expected[name], f"{path} differs from the archive's bytes"
    settle(srv)
    # v2 (the mount's default) asks its series ZIPs (with md5hashes.csv) as getImageWithMD5Hash
    return Counter("getImage" if r.endpoint == "getImageWithMD5Hash" else r.endpoint for r in srv.requests)


def test_cp_of_a_small_instance_series_streams_its_zip(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server()
    counts = copied_and_counted(srv, tmp_path, BENCH)
    assert counts["getImage"] == 1
    assert counts["getSingleImage"] <= 2  # the opens before the walk was recognised


def test_cp_of_a_collection_streams_each_walked_series_once(
    make_server: Callable[..., ArchiveServer], tmp_path: Path
) -> None:
    srv = make_server()
    series = [s for s in srv.archive.iter_series() if s.collection == MR]
    counts = copied_and_counted(srv, tmp_path, MR)
    images = sum(s.image_count for s in series)
    assert 1 <= counts["getImage"] <= len(series)
    assert counts["getImage"] + counts["getSingleImage"] + counts["getM5HashForImage"] < images
    assert counts["getSOPInstanceUIDs"] == len(series)  # each listing once
