"""The fsspec filesystem and a real mount of the same server give identical names, times and bytes for a whole
collection (in both layouts), and share one disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fsspec", reason="fsspec is not installed (the nbiafs[fsspec] extra)")

from nbiafs.server import ArchiveServer
from tests.fsspec.conftest import MakeFs
from tests.helpers import settle
from tests.mountutil import archive_files, mounted, needs_fuse

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]

IMAGE_ENDPOINTS = ("getSingleImage", "getImage")


def mount_entries(root: Path, collection: str) -> dict[str, bool]:
    """``{path relative to root: is a directory}`` of everything under ``root/collection`` (itself excluded)."""
    out: dict[str, bool] = {}
    for dirpath, dirs, files in os.walk(root / collection):
        rel = Path(dirpath).relative_to(root).as_posix()
        out.update({f"{rel}/{d}": True for d in dirs})
        out.update({f"{rel}/{f}": False for f in files})
    return out


@pytest.mark.parametrize(
    ("layout", "collection"),
    [("descriptive", "RIDER Synth CT"), ("descriptive", "NBIAFS-MR-Brain"), ("uid", "NBIAFS-MR-Brain")],
)
def test_names_times_and_bytes_equal_the_mount(
    archive_server: ArchiveServer, make_fs: MakeFs, tmp_path: Path, layout: str, collection: str
) -> None:
    archive = archive_server.archive
    fs = make_fs(archive_server.url, layout=layout, cache_dir=str(tmp_path / "fsspec-cache"))
    with mounted(tmp_path / "mnt", archive_server.url, tmp_path / "mount-cache", "--layout", layout) as m:
        assert fs.ls("", detail=False) == sorted(os.listdir(m.path))
        on_mount = mount_entries(m.path, collection)
        found = fs.find(collection, withdirs=True, detail=True)
        found.pop(collection, None)
        assert {p: info["type"] == "directory" for p, info in found.items()} == on_mount
        for path, info in found.items():
            assert int(os.stat(m.path / path).st_mtime) == int(info["mtime"]), path
        files = sorted(p for p, is_dir in on_mount.items() if not is_dir)
        expected = archive_files(archive, collection)
        assert sorted(p.rsplit("/", 1)[-1] for p in files) == sorted(expected)
        for path in files:
            data = (m.path / path).read_bytes()
            assert data == expected[path.rsplit("/", 1)[-1]], path
            assert fs.cat_file(path) == data, path
            assert fs.info(path)["size"] == os.stat(m.path / path).st_size == len(data)

        # The same disk cache: on the mount's cache directory, fsspec reads the collection without a download.
        shared = make_fs(archive_server.url, layout=layout, cache_dir=str(m.cache_dir))
        settle(archive_server)
        since = len(archive_server.requests)
        assert all(shared.info(p)["exact_size"] for p in files)
        assert [shared.cat_file(p) for p in files] == [expected[p.rsplit("/", 1)[-1]] for p in files]
        settle(archive_server)
        assert [r.path for r in archive_server.requests[since:] if r.endpoint in IMAGE_ENDPOINTS] == []
