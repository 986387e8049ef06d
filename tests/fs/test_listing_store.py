"""The on-disk listing store: persistence, expiry, namespaces, sharing by two instances and two processes."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbiafs.api.records import Patient, Series, Study
from nbiafs.errors import ConfigError
from nbiafs.fs.listing_store import DB_NAME, MetaStore, decode_records, encode_records
from tests.fs.helpers import in_threads, stored


def test_put_get_persist_across_instances(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        store.put("collections", ["A", "B"])
    with MetaStore(tmp_path) as again:
        got = again.get("collections", max_age=60)
        assert got is not None
        fetched_at, value = got
        assert value == ["A", "B"]
        assert abs(fetched_at - time.time()) < 5
    mode = stat.S_IMODE((tmp_path / DB_NAME).stat().st_mode)
    assert mode & 0o077 == 0


def test_expiry_and_future_stamps(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        now = time.time()
        store.put("old", [1], fetched_at=now - 100)
        assert store.get("old", max_age=50) is None
        fetched_at, value = stored(store, "old", max_age=200)
        assert fetched_at == pytest.approx(now - 100)
        assert value == [1]
        store.put("future", [2], fetched_at=now + 3600)
        assert store.get("future", max_age=10**9) is None
        assert store.get("absent", max_age=60) is None
        assert store.prune(50) == 1  # only "old" is older than 50 s
        assert store.get("old", max_age=200) is None


def test_namespaces_do_not_mix(tmp_path: Path) -> None:
    with MetaStore(tmp_path) as store:
        guest = store.scoped("http://x|nbia_guest")
        alice = store.scoped("http://x|alice")
        alice.put("collections", ["PUBLIC", "RESTRICTED"])
        guest.put("collections", ["PUBLIC"])
        assert alice.get("collections", 60) is not None
        assert stored(guest, "collections")[1] == ["PUBLIC"]
        assert store.get("collections", 60) is None
        guest.clear()
        assert guest.get("collections", 60) is None
        assert stored(alice, "collections")[1] == ["PUBLIC", "RESTRICTED"]


def test_two_instances_share_one_directory_concurrently(tmp_path: Path) -> None:
    a, b = MetaStore(tmp_path), MetaStore(tmp_path)

    def writer(store: MetaStore, tag: str) -> None:
        for i in range(50):
            store.put(f"k{i}", [tag, i])
            assert store.get(f"k{i}", 60) is not None

    _, errors = in_threads(lambda: writer(a, "a"), lambda: writer(b, "b"))
    assert not errors
    for i in range(50):
        got = a.get(f"k{i}", 60)
        assert got is not None and got[1][1] == i and got[1][0] in ("a", "b")
    a.close()
    b.close()


def test_another_process_sees_the_listing(tmp_path: Path) -> None:
    code = (
        "import sys; from nbiafs.fs.listing_store import MetaStore\n"
        "s = MetaStore(sys.argv[1]).scoped('srv|u')\n"
        "s.put('patients\\x1fC', ['p1', 'p2'])\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60, env=env)
    with MetaStore(tmp_path) as store:
        fetched_at, value = stored(store.scoped("srv|u"), "patients\x1fC")
        assert fetched_at == pytest.approx(time.time(), abs=60)
        assert value == ["p1", "p2"]


def test_corrupt_database_is_replaced_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with MetaStore(tmp_path) as store:
        assert store.get("collections", 60) is None
        store.put("collections", ["A"])
        assert stored(store, "collections")[1] == ["A"]


def test_unusable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError):
        MetaStore(blocker / "sub")


def test_records_round_trip() -> None:
    records: list[Patient | Study | Series | str] = [
        Patient(patient_id="0042", collection="C", raw={"PatientId": "0042", "Collection": "C"}),
        Study(
            study_instance_uid="1.2",
            study_date=dt.datetime(2001, 2, 3),
            longitudinal_temporal_offset_from_event=1.5,
            raw={"StudyInstanceUID": "1.2", "StudyDate": "2001-02-03 00:00:00.0"},
        ),
        Series(series_instance_uid="1.2.3", series_number=1000, annotations_flag=False, raw={"FileSize": 10}),
        "1.2.3.4",
    ]
    back = decode_records(encode_records(records))
    assert back == records
    assert [getattr(r, "raw", None) for r in back] == [getattr(r, "raw", None) for r in records]
    with pytest.raises(ValueError):
        decode_records([{"type": "Nope", "fields": {}, "raw": {}}])
    with pytest.raises(ValueError):
        decode_records({"not": "a list"})


def test_a_row_another_connection_writes_is_seen_once_the_keys_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MetaStore(tmp_path) as a, MetaStore(tmp_path) as b:
        assert a.get("k", 60) is None  # a has read the keys: none
        b.put("k", [1])
        assert b.get("k", 60) is not None  # its own write, at once
        monkeypatch.setattr("nbiafs.fs.listing_store.KEYS_REFRESH", 0.0)
        assert stored(a, "k")[1] == [1]  # read since the last rowid a saw
        b.delete("k")
        assert a.get("k", 60) is None
        b.put("k", [2])
        assert stored(a, "k")[1] == [2]
