"""Wiring of a running mount: a client, the instance cache, the listing store, the tree and the FUSE adapter.

:class:`MountSettings` is everything a mount needs, resolved before any fork; :func:`run_mount` builds the
layers from it, serves until unmounted or signalled, then closes them in reverse order. The command line
(``nbiafs mount``, ``nbiafs demo``) and the Python API both mount through here.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import GUEST_USER, Credentials
from nbiafs.api.profiles import ServerProfile
from nbiafs.errors import AuthenticationError, ConfigError, NbiaError
from nbiafs.settings import CacheSettings, ClientSettings, TreeSettings

if TYPE_CHECKING:
    from nbiafs.fuse.loop import LoopOutcome

log = logging.getLogger(__name__)

#: Seconds given to closing the caches and logging out after a stop that abandoned hung operations.
CLOSE_DEADLINE = 4.0


@dataclass(frozen=True)
class MountSettings:
    """Everything the mounting process needs (paths absolute). ``cart`` names a shared cart whose series
    become ``tree.series_filter`` once logged in; ``fuse_options`` are extra ``-o`` options.
    ``share_restricted``: allow ``allow_other`` on a mount by a non-guest account, whose restricted
    collections every local user can then read."""

    mountpoint: str
    profile: ServerProfile
    credentials: Credentials | None = field(default=None, repr=False)
    client: ClientSettings = field(default_factory=ClientSettings)
    tree: TreeSettings = field(default_factory=TreeSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    cart: str | None = None
    allow_other: bool = False
    fuse_options: Mapping[str, str | bool] = field(default_factory=lambda: MappingProxyType({}))
    share_restricted: bool = False


def check_settings(settings: MountSettings) -> None:
    """ConfigError for settings that must not be mounted: ``allow_other`` with a non-guest account, unless
    ``share_restricted`` says the account's restricted data may be read by every local user."""
    creds = settings.credentials
    personal = creds is not None and creds.user not in ("", GUEST_USER)
    if settings.allow_other and personal and not settings.share_restricted:
        assert creds is not None
        raise ConfigError(
            f"-o allow_other would let every user of this machine read what {creds.user!r} may see, "
            "restricted collections included; mount as the guest, or add --share-restricted-data-with-all-users "
            "(-o share_restricted_data) if that is intended"
        )


def run_mount(
    settings: MountSettings,
    on_ready: Callable[[], None] | None = None,
    on_stopping: Callable[[], object] | None = None,
) -> LoopOutcome:
    """Log in, mount and serve until unmounted or signalled; then log out and close the caches.

    Runs in the process that will serve the mount (after any fork). ``on_ready`` is called from a helper
    thread once the mount answers, ``on_stopping`` when it starts to stop. Returns how the mount ended: if
    ``abandoned``, operations hung on the server are still running in threads that will never be joined (the
    caches are closed; a command-line process should end now, with ``os._exit``). Raises NbiaError subclasses
    (ConfigError for bad settings, an unusable mountpoint or cache, or an unknown collection;
    AuthenticationError for refused credentials, ...).
    """
    from nbiafs.fs.instance_cache import InstanceCache
    from nbiafs.fs.listing_store import MetaStore
    from nbiafs.fs.tree import ArchiveTree
    from nbiafs.fuse.mount import check_mountpoint, mount

    check_settings(settings)
    check_mountpoint(settings.mountpoint, nonempty=bool(settings.fuse_options.get("nonempty")))
    with contextlib.ExitStack() as stack:
        client = NbiaClient(settings.profile, settings.credentials, settings.client)
        stack.callback(client.close)
        online = _log_in(client)
        if online and settings.tree.collections:
            check_collections(client, settings.tree.collections)
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
        outcome = mount(
            tree,
            settings.mountpoint,
            allow_other=settings.allow_other,
            options=settings.fuse_options,
            ready_callback=on_ready,
            stopping_callback=on_stopping,
        )
        if outcome.abandoned:
            # Hung operations still run in other threads: close what is on disk first (sqlite keeps the caches
            # consistent whatever those threads do next), then the rest, all within a deadline.
            stack.pop_all()
            _close_within([store.close, cache.close, tree.close, client.close], CLOSE_DEADLINE)
        return outcome


def _close_within(closers: Sequence[Callable[[], None]], deadline: float) -> None:
    """Call ``closers`` in order in a helper thread; give up waiting for them after ``deadline`` seconds."""

    def close_all() -> None:
        for close in closers:
            try:
                close()
            except Exception as exc:
                log.warning("closing after the stop: %s", exc)

    thread = threading.Thread(target=close_all, name="nbiafs-close", daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        log.warning("closing did not finish within %.0f s (the server does not answer the logout)", deadline)


def check_collections(client: NbiaClient, wanted: Sequence[str]) -> None:
    """ConfigError naming close matches for a collection the server does not list (to this account); nothing
    if the server cannot be asked now."""
    try:
        known = client.collections()
    except NbiaError as exc:
        log.info("cannot check the collection names now: %s", exc)
        return
    known_set = set(known)
    by_folded = {name.casefold(): name for name in known}
    for name in wanted:
        if name in known_set:
            continue
        matches = [by_folded[name.casefold()]] if name.casefold() in by_folded else []
        matches += [m for m in difflib.get_close_matches(name, known, n=3, cutoff=0.6) if m not in matches]
        hint = f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
        raise ConfigError(
            f"unknown collection {name!r} (not among the {len(known)} collections this account can see{hint})"
        )


def _log_in(client: NbiaClient) -> bool:
    """Obtain the first token now, so refused credentials fail the mount instead of every later request.

    AuthenticationError (refused credentials) is raised; a server that cannot be reached is only logged, so a
    mount can still serve what its caches hold (the client logs in again on its first request). Returns
    whether the server answered.
    """
    try:
        client.login()
    except AuthenticationError:
        raise
    except NbiaError as exc:
        log.warning("cannot log in now (%s); mounting anyway, cached data stays readable", exc)
        return False
    return True
