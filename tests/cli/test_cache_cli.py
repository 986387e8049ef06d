"""``nbiafs cache info|clear``, run through ``nbiafs.cli.main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbiafs.cli.main import main
from nbiafs.fs.instance_cache import InstanceCache
from tests.fs.helpers import dicom_bytes

UID = "1.3.6.1.4.1.14519.5.2.1.7695.1700.{}"


def fill(directory: Path) -> Path:
    with InstanceCache(directory, 3 * 1024**2) as cache:
        path = cache.fetch(UID.format(1), lambda out: out.write(b"x" * 2048))
        cache.fetch(UID.format(2), lambda out: out.write(b"y" * 1024))
        cache.get(UID.format(1))
    return path


def test_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "c"
    fill(directory)
    assert main(["cache", "info", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"directory: {directory}" in out
    assert "size:      3.0 KiB (3072 bytes)" in out
    assert "bound:     3.0 MiB (3145728 bytes)" in out
    assert "entries:   2" in out
    assert "hits:      1" in out
    assert "misses:    2" in out


def test_info_uses_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fill(tmp_path / "nbiafs")
    assert main(["cache", "info"]) == 0
    assert "entries:   2" in capsys.readouterr().out


def test_info_without_a_cache_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "none"
    assert main(["cache", "info", "--cache-dir", str(directory)]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert not directory.exists()
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert "nothing to clear" in capsys.readouterr().out
    assert not directory.exists()


def test_clear_while_a_mount_holds_a_file_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "c"
    with InstanceCache(directory, 10**6) as mounted:  # a mount's cache, still in use
        body = dicom_bytes(UID.format(1))  # a real instance: opening a cache checks what it finds
        path = mounted.fetch(UID.format(1), lambda out: out.write(body))
        with open(path, "rb") as handle:
            assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
            assert "cleared 1 entries" in capsys.readouterr().out
            assert handle.read() == body
        assert mounted.get(UID.format(1)) is None
        assert mounted.info().entries == 0
    assert main(["cache", "info", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "entries:   0" in out and "size:      0 B (0 bytes)" in out


def test_action_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["cache"])
    assert exc.value.code == 2


def test_info_and_clear_cover_listings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nbiafs.fs.listing_store import MetaStore

    directory = tmp_path / "c"
    fill(directory)
    with MetaStore(directory) as store:
        scoped = store.scoped("http://server/v2|guest")
        scoped.put("collections", ["A", "B"])
        scoped.put("patients\x1fA", [])
    assert main(["cache", "info", "--cache-dir", str(directory)]) == 0
    assert "listings:  2" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert "cleared 2 entries (3.0 KiB) and 2 listings" in capsys.readouterr().out
    with MetaStore(directory) as store:
        assert store.count() == 0
        assert store.scoped("http://server/v2|guest").get("collections", 3600) is None


def test_info_shows_pinned_and_unpinned_bytes_per_collection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "c"
    with InstanceCache(directory, 10**6) as cache:
        cache.fetch(UID.format(1), lambda out: out.write(b"a" * 2048), collection="LIDC-IDRI")
        cache.fetch(UID.format(2), lambda out: out.write(b"b" * 1024), collection="LIDC-IDRI")
        cache.fetch(UID.format(3), lambda out: out.write(b"c" * 100))
        cache.pin([UID.format(1)])
    assert main(["cache", "info", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "pinned:    2.0 KiB (2048 bytes) in 1 entries" in out
    assert "  LIDC-IDRI: pinned 2.0 KiB (2048 bytes), unpinned 1.0 KiB (1024 bytes) (2 entries)" in out
    assert "  (unknown): pinned 0 B (0 bytes), unpinned 100 B (100 bytes) (1 entries)" in out


def test_unpin_a_collection_or_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "c"
    with InstanceCache(directory, 10**6) as cache:
        cache.fetch(UID.format(1), lambda out: out.write(b"a" * 10), collection="A")
        cache.fetch(UID.format(2), lambda out: out.write(b"b" * 10), collection="B")
        cache.pin([UID.format(1), UID.format(2)])
    assert main(["cache", "unpin", "--collection", "A", "--cache-dir", str(directory)]) == 0
    assert "unpinned 1 entries" in capsys.readouterr().out
    assert main(["cache", "unpin", "--all", "--cache-dir", str(directory)]) == 0
    assert "unpinned 1 entries" in capsys.readouterr().out
    with InstanceCache(directory, None) as cache:
        assert cache.pinned() == {}
    assert main(["cache", "unpin", "--all", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "nothing to unpin" in capsys.readouterr().out


def test_unpin_needs_one_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "unpin", "--cache-dir", str(tmp_path)]) == 1
    assert main(["cache", "unpin", "--all", "--collection", "A", "--cache-dir", str(tmp_path)]) == 1
    assert main(["cache", "unpin", str(tmp_path)]) == 1
    assert "not inside an nbiafs mount" in capsys.readouterr().err
