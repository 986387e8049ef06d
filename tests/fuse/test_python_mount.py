"""``nbiafs.mount()`` from Python: a background mount, unmounted on exit, the password never in argv."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import nbiafs
from nbiafs.server import ArchiveServer
from tests.helpers import ALICE, ALICE_PASSWORD, RESTRICTED
from tests.mountutil import archive_files, files_under, is_mounted, needs_fuse, wait_until

pytestmark = [pytest.mark.mount, needs_fuse]

CT = "RIDER Synth CT"


def test_mount_reads_and_unmounts(archive_server: ArchiveServer, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    api = f"{archive_server.url}/nbia-api/services/v2"
    with nbiafs.mount(
        mp, api_url=api, cache_dir=tmp_path / "cache", layout="uid", user=ALICE, password=ALICE_PASSWORD
    ) as m:
        assert m.mounted and RESTRICTED in os.listdir(mp)
        cmdline = Path(f"/proc/{m.process.pid}/cmdline").read_bytes()
        assert ALICE_PASSWORD.encode() not in cmdline
        expected = archive_files(archive_server.archive, CT)
        got = {name: path.read_bytes() for name, path in files_under(mp / CT).items()}
        assert got == expected
    assert m.process.returncode == 0
    assert wait_until(lambda: not is_mounted(mp), 5)


def test_a_bad_option_is_a_config_error(archive_server: ArchiveServer, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    api = f"{archive_server.url}/nbia-api/services/v2"
    with pytest.raises(nbiafs.ConfigError, match="layout"):
        nbiafs.mount(mp, api_url=api, cache_dir=tmp_path / "cache", layout="flat", timeout=30)
    assert not is_mounted(mp)
