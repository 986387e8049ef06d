"""InstanceCache: one ``.part`` name per key, written under the key's lock; a dead process's is overwritten."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from nbiafs.fs.instance_cache import PART_SUFFIX, PART_TAG, InstanceCache

KEY = "1.3.6.1.4.1.14519.5.2.1.7695.1700.1"


def test_download_is_written_to_the_keys_part_file(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", None) as cache:
        final = cache.path_for(KEY)
        part = final.with_name(final.name + PART_TAG + PART_SUFFIX)
        seen: list[bool] = []

        def write(out: BinaryIO) -> int:
            seen.append(part.is_file() and not final.exists())
            return out.write(b"data")

        assert cache.store(KEY, write) == final
        assert seen == [True]
        assert final.read_bytes() == b"data"
        assert not part.exists()


def test_a_dead_processs_part_file_is_overwritten_or_swept(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", None) as cache:
        final = cache.path_for(KEY)
        final.parent.mkdir(parents=True, exist_ok=True)
        ours = final.with_name(final.name + PART_TAG + PART_SUFFIX)
        ours.write_bytes(b"a longer leftover of a dead process")
        older = final.with_name(final.name + ".x1y2z3" + PART_SUFFIX)  # an older version's random tag
        older.write_bytes(b"junk")
        assert cache.store(KEY, lambda out: out.write(b"new")) == final
        assert final.read_bytes() == b"new"
        assert not ours.exists() and older.exists()  # a ZIP member does not list the shard
        final.unlink()
        cache.fetch(KEY, lambda out: out.write(b"new"))
        assert not older.exists()  # a single download does


def test_paths_are_remembered_and_bounded(tmp_path: Path) -> None:
    import nbiafs.fs.instance_cache as ic

    with InstanceCache(tmp_path / "c", None) as cache:
        first = cache.path_for(KEY)
        assert cache.path_for(KEY) is first
        for i in range(ic.PATHS_REMEMBERED + 1):
            cache.path_for(f"k{i}")
        assert len(cache._paths) <= ic.PATHS_REMEMBERED
        assert cache.path_for(KEY) == first
