"""``nbiafs cache info|clear [--cache-dir DIR]``: inspect or empty the disk cache.

The cache directory holds the DICOM instances (:mod:`nbiafs.fs.instance_cache`) and the persisted listings
(:mod:`nbiafs.fs.listing_store`). Both commands are safe while mounts use the cache: the indexes are shared through
sqlite, and ``clear`` unlinks files, so instances already open stay readable; a running mount still answers
from the listings it holds in memory until they expire.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from nbiafs.cli.logs import add_logging_options
from nbiafs.fs.instance_cache import INDEX_NAME, InstanceCache
from nbiafs.fs.listing_store import DB_NAME, MetaStore
from nbiafs.settings import default_cache_dir, format_size

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``cache`` with its ``info`` and ``clear`` subcommands."""
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
