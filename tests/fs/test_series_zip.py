"""series_zip: members filed in the listing's order, from memory or from spill files, checked by the store."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import IO

import pytest

from nbiafs.errors import BadResponseError
from nbiafs.fs import series_zip
from nbiafs.fs.dicomcheck import check_instance
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.series_zip import copy_member, file_series
from tests.fs.helpers import dicom_bytes

SOPS = [f"1.2.3.{i}" for i in range(1, 7)]


class _Stream(io.RawIOBase):
    """A write-only, unseekable stream: zipfile writes data descriptors, as the server does."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def _zip(members: list[bytes], *, md5: bool = True) -> bytes:
    out = _Stream()
    rows = ["Filename,MD5Hash"]
    with zipfile.ZipFile(out, "w") as zf:
        for index, data in enumerate(members, 1):
            info = zipfile.ZipInfo(f"{index:08d}.dcm")
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            rows.append(f"{info.filename},{hashlib.md5(data).hexdigest()}")
        if md5:
            info = zipfile.ZipInfo(series_zip.MD5_MEMBER)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, "\n".join(rows) + "\n")
    return bytes(out.data)


class _Claim:
    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.released: list[str] = []

    def deliver(self, key: str, path: Path) -> None:
        self.delivered.append(key)

    def release(self, keys: list[str] | None = None) -> None:
        self.released.extend(keys or [])


def _run(cache: InstanceCache, body: bytes, order: list[str], claim: _Claim) -> set[str]:
    def store(sop: str, key: str, member: IO[bytes], size: int) -> Path | None:
        return cache.store(key, copy_member(member), expected=size, check=lambda p: check_instance(p, sop))

    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    keys = {sop: "k" + sop for sop in order}
    return file_series("S", chunks, keys, store, claim)  # type: ignore[arg-type]


@pytest.mark.parametrize("memory", [series_zip.STAGE_IN_MEMORY, 0], ids=["in-memory", "spilled"])
def test_members_are_filed_in_the_listing_order(
    tmp_path: Path, memory: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(series_zip.Staging.__init__, "__defaults__", (None, memory))
    spilled: list[int] = []
    real_sop_of = series_zip._sop_of

    def sop_of(member: IO[bytes], size: int) -> str | None:
        spilled.append(not isinstance(member, io.BytesIO))
        return real_sop_of(member, size)

    monkeypatch.setattr(series_zip, "_sop_of", sop_of)
    members = [dicom_bytes(sop, 300) for sop in SOPS]
    order = list(reversed(SOPS))
    claim = _Claim()
    with InstanceCache(tmp_path / "c", None) as cache:
        assert _run(cache, _zip(members), order, claim) == set(SOPS)
        assert claim.delivered == ["k" + sop for sop in order]
        for sop, data in zip(SOPS, members, strict=True):
            assert cache.path_for("k" + sop).read_bytes() == data
    assert spilled == [memory == 0] * len(SOPS)


def test_cut_member_is_never_cached(tmp_path: Path) -> None:
    members = [dicom_bytes(sop, 300) for sop in SOPS[:2]]
    cut = dicom_bytes(SOPS[2], 300)[:-9]  # its header is whole: only the store's check refuses it
    claim = _Claim()
    with InstanceCache(tmp_path / "c", None) as cache:
        filed = _run(cache, _zip([members[0], cut, members[1]], md5=False), SOPS[:3], claim)
        assert filed == {SOPS[0], SOPS[1]}  # the cut member is refused by the store's check
        assert cache.peek("k" + SOPS[2]) is None
        assert claim.released == ["k" + SOPS[2]]
        assert not list((tmp_path / "c" / "data").rglob("*.part"))


def test_unreadable_member_is_dropped(tmp_path: Path) -> None:
    claim = _Claim()
    with InstanceCache(tmp_path / "c", None) as cache:
        filed = _run(cache, _zip([b"<html>not DICOM</html>", dicom_bytes(SOPS[0])]), SOPS[:1], claim)
        assert filed == {SOPS[0]}


def test_copy_member_copies_memory_and_files(tmp_path: Path) -> None:
    data = b"x" * 3000
    out = io.BytesIO()
    assert copy_member(io.BytesIO(data))(out) == 3000
    assert out.getvalue() == data
    with open(tmp_path / "m", "w+b") as member:
        member.write(data)
        out = io.BytesIO()
        assert copy_member(member)(out) == 3000
        assert out.getvalue() == data


def test_header_of_spilled_member_is_read_through_mmap(tmp_path: Path) -> None:
    with open(tmp_path / "m", "w+b") as member:
        member.write(dicom_bytes(SOPS[0]))
        assert series_zip._sop_of(member, 0) == SOPS[0]
        assert member.tell() == 0
    with open(tmp_path / "empty", "w+b") as empty:
        assert series_zip._sop_of(empty, 0) is None
    with pytest.raises(BadResponseError):
        check_instance(tmp_path / "empty", None)
