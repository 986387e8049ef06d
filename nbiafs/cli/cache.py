"""``nbiafs cache info|clear|unpin [--cache-dir DIR]``: inspect, empty or unpin the disk cache.

The cache directory holds the DICOM instances (:mod:`nbiafs.fs.instance_cache`) and the persisted listings
(:mod:`nbiafs.fs.listing_store`). Both commands are safe while mounts use the cache: the indexes are shared through
sqlite, and ``clear`` unlinks files, so instances already open stay readable; a running mount still answers
from the listings it holds in memory until they expire. ``info`` shows pinned and unpinned bytes per collection
(entries whose collection was not recorded are counted as ``(unknown)``); ``unpin PATH...`` lets the instances
below paths of a mounted nbiafs be evicted again (``nbiafs prefetch --pin`` pinned them); ``clear`` removes pins
with everything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from nbiafs.cli import prefetch
from nbiafs.cli.logs import add_logging_options
from nbiafs.errors import ConfigError
from nbiafs.fs.instance_cache import INDEX_NAME, InstanceCache
from nbiafs.fs.listing_store import DB_NAME, MetaStore
from nbiafs.settings import default_cache_dir, format_size

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``cache`` with its ``info``, ``clear`` and ``unpin`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"the cache directory (default: {default_cache_dir()})",
    )
    add_logging_options(common)
    parser = subparsers.add_parser("cache", help="inspect or empty the disk cache of DICOM instances")
    actions = parser.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    info = actions.add_parser(
        "info", parents=[common], help="show the cache's directory, size, bound, entries, hits and misses"
    )
    info.set_defaults(func=run_info)
    clear = actions.add_parser(
        "clear", parents=[common], help="remove every cached instance and listing (safe while mounted)"
    )
    clear.set_defaults(func=run_clear)
    unpin = actions.add_parser(
        "unpin",
        parents=[common],
        help="let pinned instances (nbiafs prefetch --pin) be evicted again",
        description="Unpin the instances below PATH (directories or files inside a mounted nbiafs; the cache "
        "is the mount's unless --cache-dir is given), or every instance of a collection, or all.",
    )
    unpin.add_argument("paths", nargs="*", metavar="PATH", help="a directory or file inside an nbiafs mount")
    unpin.add_argument(
        "--collection", metavar="NAME", help="unpin every instance of this collection (no mount needed)"
    )
    unpin.add_argument("--all", action="store_true", help="unpin every instance (no mount needed)")
    unpin.set_defaults(func=run_unpin)


def _directory(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()


def _size(size: int) -> str:
    return f"{format_size(size)} ({size} bytes)"


def run_info(args: argparse.Namespace) -> int:
    """Print the cache's figures; a directory holding no cache yet is reported empty (and not created)."""
    directory = _directory(args)
    if not (directory / INDEX_NAME).exists() and not (directory / DB_NAME).exists():
        print(f"directory: {directory}")
        print("no cache there yet (0 entries)")
        return 0
    print(f"directory: {directory}")
    if (directory / INDEX_NAME).exists():
        with InstanceCache(directory, None) as cache:
            info = cache.info()
        bound = _size(info.max_bytes) if info.max_bytes is not None else "unknown"
        print(f"size:      {_size(info.total_bytes)}")
        print(f"bound:     {bound}")
        print(f"entries:   {info.entries}")
        print(f"hits:      {info.hits}")
        print(f"misses:    {info.misses}")
        print(f"pinned:    {_size(info.pinned_bytes)} in {info.pinned_entries} entries")
        if info.collections:
            print("per collection:")
            for usage in info.collections:
                name = usage.collection if usage.collection is not None else "(unknown)"
                print(
                    f"  {name}: pinned {_size(usage.pinned_bytes)}, unpinned {_size(usage.unpinned_bytes)}"
                    f" ({usage.pinned_entries + usage.unpinned_entries} entries)"
                )
    if (directory / DB_NAME).exists():
        with MetaStore(directory) as store:
            print(f"listings:  {store.count()}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    """Empty the cache (files open in mounts stay readable) and reset its counters."""
    directory = _directory(args)
    if not (directory / INDEX_NAME).exists() and not (directory / DB_NAME).exists():
        print(f"no cache in {directory}: nothing to clear")
        return 0
    removed, total, listings = 0, 0, 0
    if (directory / INDEX_NAME).exists():
        with InstanceCache(directory, None) as cache:
            total = cache.info().total_bytes
            removed = cache.clear()
    if (directory / DB_NAME).exists():
        with MetaStore(directory) as store:
            listings = store.count()
            store.clear()
    print(f"cleared {removed} entries ({format_size(total)}) and {listings} listings from {directory}")
    return 0


def run_unpin(args: argparse.Namespace) -> int:
    """Unpin what the paths hold (through their mount), a collection's entries, or every entry."""
    chosen = sum((bool(args.paths), bool(args.collection), bool(args.all)))
    if chosen != 1:
        raise ConfigError("give PATH (inside an nbiafs mount), --collection NAME or --all: one of them")
    failures = prefetch.Failures()
    keys: list[str] = []
    directory = Path(args.cache_dir).expanduser() if args.cache_dir else None
    if args.paths:
        mountpoint, keys, failures = prefetch.keys_below(args.paths)
        if directory is None:
            directory, _bound = prefetch.mount_cache(mountpoint)
            if directory is None:
                raise ConfigError(f"{mountpoint} does not say where its cache is: give --cache-dir")
    if directory is None:
        directory = default_cache_dir()
    if not (directory / INDEX_NAME).exists():
        print(f"no cache in {directory}: nothing to unpin")
        return 0
    with InstanceCache(directory, None) as cache:
        count = cache.unpin(keys) if args.paths else cache.unpin_all(args.collection)
    print(f"unpinned {count} entries in {directory}")
    if failures.count:
        print(prefetch.summary_of_failures(failures, "unpin"), file=sys.stderr)
        return 1
    return 0
