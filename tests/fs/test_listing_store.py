"""The on-disk listing store: persistence, expiry, namespaces, sharing by two instances and two processes."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nbiafs.api.records import Patient, Series, Study
from nbiafs.errors import ConfigError
from nbiafs.fs.listing_store import DB_NAME, MetaStore, decode_records, encode_records


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
        assert store.get("old", max_age=200) == (pytest.approx(now - 100), [1])
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
        assert guest.get("collections", 60)[1] == ["PUBLIC"]  # type: ignore[index]
        assert store.get("collections", 60) is None
        guest.clear()
        assert guest.get("collections", 60) is None
        assert alice.get("collections", 60)[1] == ["PUBLIC", "RESTRICTED"]  # type: ignore[index]


def test_two_instances_share_one_directory_concurrently(tmp_path: Path) -> None:
    a, b = MetaStore(tmp_path), MetaStore(tmp_path)
    errors: list[BaseException] = []

    def writer(store: MetaStore, tag: str) -> None:
        try:
            for i in range(50):
                store.put(f"k{i}", [tag, i])
                assert store.get(f"k{i}", 60) is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, t)) for s, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
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
        assert store.scoped("srv|u").get("patients\x1fC", 60) == (
            pytest.approx(time.time(), abs=60),
            ["p1", "p2"],
        )


def test_corrupt_database_is_replaced_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with MetaStore(tmp_path) as store:
        assert store.get("collections", 60) is None
        store.put("collections", ["A"])
        assert store.get("collections", 60)[1] == ["A"]  # type: ignore[index]


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
