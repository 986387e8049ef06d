"""A mount against the bundled server in its default, production (Keycloak-era) mode, where a list request
made with a dead token is answered 200 with no rows: the tree must never show such an answer as an empty
directory, nor remember it; and a refused image is EACCES at once."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from nbiafs.server import ArchiveServer
from tests.helpers import ALICE, ALICE_PASSWORD, RESTRICTED, MakeServer
from tests.mountutil import mounted, needs_fuse

pytestmark = [pytest.mark.mount, needs_fuse]

CT = "RIDER Synth CT"
MR = "NBIAFS-MR-Brain"


def expected_tree(srv: ArchiveServer, collection: str) -> dict[str, set[str]]:
    """``{relative directory: entry names}`` of ``collection`` in the uid layout, from the server's model."""
    tree: dict[str, set[str]] = {collection: set()}
    for patient in srv.archive.collections[collection].patients:
        tree[collection].add(patient.patient_id)
        p = f"{collection}/{patient.patient_id}"
        tree[p] = set()
        for study in patient.studies:
            tree[p].add(study.study_instance_uid)
            st = f"{p}/{study.study_instance_uid}"
            tree[st] = {s.series_instance_uid for s in study.series}
            for series in study.series:
                tree[f"{st}/{series.series_instance_uid}"] = {
                    f"{i.sop_instance_uid}.dcm" for i in series.instances
                }
    return tree


def assert_tree(root: Path, expected: dict[str, set[str]]) -> None:
    for rel, names in expected.items():
        assert set(os.listdir(root / rel)) == names, rel


@pytest.mark.parametrize("refresh_too", [False, True], ids=["access-tokens-dead", "keycloak-restart"])
def test_dead_tokens_never_show_as_empty_directories(
    make_server: MakeServer, tmp_path: Path, refresh_too: bool
) -> None:
    srv = make_server(auth_era="keycloak")
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", "--layout", "uid") as m:
        assert CT in os.listdir(m.path)  # logged in, root listed
        srv.revoke_tokens(refresh_tokens=refresh_too)  # every token the mount holds is now dead
        started = time.monotonic()
        assert_tree(m.path, expected_tree(srv, MR))  # never listed before: true contents
        assert time.monotonic() - started < 20
    # Nothing empty was remembered: a remount on the same cache shows the same.
    with mounted(tmp_path / "mnt", srv.url, tmp_path / "cache", "--layout", "uid") as m:
        assert_tree(m.path, expected_tree(srv, MR))
        assert_tree(m.path, expected_tree(srv, CT))


def test_refused_instance_is_eacces_at_once(make_server: MakeServer, tmp_path: Path) -> None:
    srv = make_server(auth_era="keycloak")
    secret = next(s for s in srv.archive.iter_series() if s.collection == RESTRICTED)
    with mounted(
        tmp_path / "mnt", srv.url, tmp_path / "cache", "--layout", "uid", user=ALICE, password=ALICE_PASSWORD
    ) as m:
        series_dir = next((m.path / RESTRICTED).glob(f"*/*/{secret.series_instance_uid}"))
        victim = series_dir / f"{secret.instances[-1].sop_instance_uid}.dcm"
        assert victim.exists()
        srv.config.restricted[RESTRICTED] = set()  # the server withdraws alice's access
        before = len(srv.requests)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            victim.read_bytes()
        elapsed = time.monotonic() - started
        assert info.value.errno == errno.EACCES and elapsed < 1.0
        time.sleep(0.2)  # the server logs a request just after answering it
        fetches = [r for r in srv.requests[before:] if r.endpoint == "getSingleImage"]
        assert 1 <= len(fetches) <= 2
