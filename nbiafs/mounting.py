"""Wiring of a running mount: a client, the instance cache, the listing store, the tree and the FUSE adapter.

:class:`MountSettings` is everything a mount needs, resolved before any fork; :func:`run_mount` builds the
layers from it, serves until unmounted or signalled, then closes them in reverse order. The command line
(``nbiafs mount``, ``nbiafs demo``) and the Python API both mount through here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import Credentials
from nbiafs.api.profiles import ServerProfile
from nbiafs.errors import AuthenticationError, ConfigError, NbiaError
from nbiafs.settings import CacheSettings, ClientSettings, TreeSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountSettings:
    """Everything the mounting process needs (paths absolute). ``cart`` names a shared cart whose series
    become ``tree.series_filter`` once logged in; ``fuse_options`` are extra ``-o`` options."""

    mountpoint: str
    profile: ServerProfile
    credentials: Credentials | None = field(default=None, repr=False)
    client: ClientSettings = field(default_factory=ClientSettings)
    tree: TreeSettings = field(default_factory=TreeSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    cart: str | None = None
    allow_other: bool = False
    fuse_options: Mapping[str, str | bool] = field(default_factory=lambda: MappingProxyType({}))


def run_mount(settings: MountSettings, on_ready: Callable[[], None] | None = None) -> None:
    """Log in, mount and serve until unmounted or signalled; then log out and close the caches.

    Runs in the process that will serve the mount (after any fork). ``on_ready`` is called from a helper
    thread once the mount answers. Raises NbiaError subclasses (ConfigError for an unusable mountpoint or
    cache, AuthenticationError for refused credentials, ...).
    """
    from nbiafs.fs.instance_cache import InstanceCache
    from nbiafs.fs.listing_store import MetaStore
    from nbiafs.fs.tree import ArchiveTree
    from nbiafs.fuse.mount import check_mountpoint, mount

    check_mountpoint(settings.mountpoint)
    with contextlib.ExitStack() as stack:
        client = NbiaClient(settings.profile, settings.credentials, settings.client)
        stack.callback(client.close)
        _log_in(client)
        tree_settings = settings.tree
        if settings.cart:
            rows = client.contents_by_name(settings.cart)
            series_filter = frozenset(row.series_instance_uid for row in rows)
            if not series_filter:
                raise ConfigError(f"cart {settings.cart!r} is empty or unknown")
            tree_settings = replace(tree_settings, series_filter=series_filter)
        cache = InstanceCache(settings.cache.directory, settings.cache.max_bytes)
        stack.callback(cache.close)
        store = MetaStore(settings.cache.directory)
        stack.callback(store.close)
        tree = ArchiveTree(
            client, cache, store, tree_settings
        )  # the tree scopes the store by server and user
        stack.callback(tree.close)
        mount(
            tree,
            settings.mountpoint,
            allow_other=settings.allow_other,
            options=settings.fuse_options,
            ready_callback=on_ready,
        )


def _log_in(client: NbiaClient) -> None:
    """Obtain the first token now, so refused credentials fail the mount instead of every later request.

    AuthenticationError (refused credentials) is raised; a server that cannot be reached is only logged, so a
    mount can still serve what its caches hold (the client logs in again on its first request).
    """
    try:
        client.login()
    except AuthenticationError:
        raise
    except NbiaError as exc:
        log.warning("cannot log in now (%s); mounting anyway, cached data stays readable", exc)
