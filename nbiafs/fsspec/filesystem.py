"""``nbia://``: an NBIA archive as an fsspec filesystem, built on the mount's own :class:`ArchiveTree`.

``nbia://<Collection>/<PatientID>/<study>/<series>/<SOPInstanceUID>.dcm``: the names, layouts, sizes, times,
listing caches (``metadata.sqlite3``), instance cache (:class:`InstanceCache` in the same cache directory,
default the mount's) and fetch strategy (one download per instance, read-ahead along a series) are the
mount's, because the tree is the mount's; no FUSE is involved. docs/semantics.md is the contract for both.

Processes and pickling. An :class:`NbiaFileSystem` holds only plain settings (server, user name, layout,
selection, cache directory and size, timeouts); it pickles by them, never with a password or a token. Each
process builds its own client, caches and tree on first use (never at unpickling), shared by every instance
with equal settings in that process; a forked child builds new ones rather than touching its parent's.
Passwords come, in each process, from ``credentials_file``, ``NBIA_PASSWORD`` or the guest account (see
:mod:`nbiafs.api.credentials`); the v3 API key from ``NBIA_API_KEY``.

Errors: :class:`~nbiafs.errors.NotFoundError` becomes FileNotFoundError, AccessDeniedError (refused
credentials included) PermissionError, every other NbiaError an OSError with its errno and message; writing
of any kind raises OSError(EROFS).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import errno
import hashlib
import io
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

try:
    from fsspec.spec import AbstractFileSystem, make_instance
    from fsspec.utils import stringify_path
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("nbiafs.fsspec needs fsspec: pip install 'nbiafs[fsspec]'") from exc

from nbiafs.api.client import NbiaClient
from nbiafs.api.credentials import ENV_API_KEY, ENV_USER, Credentials, load_credentials
from nbiafs.api.manifest import load_manifest
from nbiafs.api.profiles import ServerProfile, resolve_profile
from nbiafs.errors import AccessDeniedError, ConfigError, NbiaError, NotFoundError
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.listing_store import MetaStore
from nbiafs.fs.tree import XATTR_PREFIX, ArchiveTree, Node
from nbiafs.settings import (
    DEFAULT_CACHE_SIZE,
    CacheSettings,
    ClientSettings,
    TreeSettings,
    default_cache_dir,
    parse_size,
)

log = logging.getLogger(__name__)

PROTOCOL = "nbia"

#: Seconds given to logging out and closing the caches at interpreter exit (a dead server must not hang it).
CLOSE_DEADLINE = 4.0


# --- what one process builds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    """Everything a process needs to build its client, caches and tree; hashable (the key of its state)."""

    profile: ServerProfile
    user: str | None
    credentials_file: str | None
    client: ClientSettings
    tree: TreeSettings
    cache: CacheSettings
    cart: str | None = None


@dataclass
class _State:
    """One process's client, caches and tree for one :class:`_Config`."""

    pid: int
    client: NbiaClient
    cache: InstanceCache
    store: MetaStore
    tree: ArchiveTree

    def close(self) -> None:
        """Stop the tree, close the caches, log out (in this order). Only in the process that built it."""
        if self.pid != os.getpid():
            return
        for close in (self.tree.close, self.store.close, self.cache.close, self.client.close):
            try:
                close()
            except Exception as exc:
                log.warning("closing nbia:// state: %s", exc)


def _credentials(config: _Config) -> Credentials | None:
    """This process's credentials for ``config`` (as the command line's ``--user``/``--credentials-file``)."""
    profile = config.profile
    if profile.auth == "oauth":
        return load_credentials(user=config.user, credentials_file=config.credentials_file, interactive=False)
    if config.user or config.credentials_file:
        log.warning(
            "the %s API takes no user name or password: user/credentials_file ignored", profile.flavour
        )
    api_key = os.environ.get(ENV_API_KEY)
    if profile.auth == "api_key" and api_key:
        return Credentials("", "", api_key)
    return None


def _build(config: _Config) -> _State:
    """Client, instance cache, listing store and tree, as :func:`nbiafs.mounting.run_mount` builds them."""
    with contextlib.ExitStack() as stack:
        client = NbiaClient(config.profile, _credentials(config), config.client)
        stack.callback(client.close)
        tree_settings = config.tree
        if config.cart:
            series = frozenset(row.series_instance_uid for row in client.contents_by_name(config.cart))
            if not series:
                raise ConfigError(f"cart {config.cart!r} is empty or unknown")
            if tree_settings.series_filter is not None:
                series &= tree_settings.series_filter
            tree_settings = replace(tree_settings, series_filter=series)
        cache = InstanceCache(config.cache.directory, config.cache.max_bytes)
        stack.callback(cache.close)
        store = MetaStore(config.cache.directory)
        stack.callback(store.close)
        tree = ArchiveTree(client, cache, store, tree_settings)
        stack.pop_all()
    log.debug("nbia:// state for %s built in process %d", config.profile.api_url, os.getpid())
    return _State(os.getpid(), client, cache, store, tree)


_lock = threading.Lock()
_states: dict[_Config, _State] = {}
_states_pid = os.getpid()
_atexit_registered = False


def _after_fork_in_child() -> None:
    """A forked child never uses (nor closes) its parent's clients and caches: it builds its own."""
    global _lock, _states_pid
    _lock = threading.Lock()
    _states.clear()
    _states_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _state_for(config: _Config) -> _State:
    """This process's state for ``config``, built on first use."""
    global _states_pid, _atexit_registered
    with _lock:
        if _states_pid != os.getpid():
            _states.clear()
            _states_pid = os.getpid()
        state = _states.get(config)
        if state is None:
            state = _build(config)
            _states[config] = state
            if not _atexit_registered:
                _register_close_at_exit()
                _atexit_registered = True
        return state


class _Anchor:
    """An object that lives as long as the interpreter (see :func:`_register_close_at_exit`)."""


_ANCHOR = _Anchor()


def _noop() -> None:
    pass


def _register_close_at_exit() -> None:
    """Run :func:`close_all` at exit, before weakref finalizers: urllib3 empties its connection pools in one,
    after which the logout would wait forever for a connection. atexit runs handlers last registered first,
    and creating a finalizer registers theirs (once), so create one first."""
    weakref.finalize(_ANCHOR, _noop)
    atexit.register(close_all)


def _drop_state(config: _Config) -> _State | None:
    with _lock:
        if _states_pid != os.getpid():
            return None
        return _states.pop(config, None)


def close_all(deadline: float = CLOSE_DEADLINE) -> None:
    """Close every client, cache and tree this process built for ``nbia://`` (logging out), giving up waiting
    after ``deadline`` seconds. Runs at interpreter exit; filesystems used afterwards build new ones."""
    with _lock:
        states = list(_states.values()) if _states_pid == os.getpid() else []
        _states.clear()
    if not states:
        return

    def close() -> None:
        for state in states:
            state.close()

    thread = threading.Thread(target=close, name="nbiafs-fsspec-close", daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        log.warning("closing nbia:// did not finish within %.0f s (the server does not answer)", deadline)


# --- errors ----------------------------------------------------------------------------------------------------


def _os_error(exc: NbiaError, path: str) -> OSError:
    """The exception fsspec users expect for ``exc`` met on ``path``."""
    where = f"{PROTOCOL}://{path}"
    if isinstance(exc, NotFoundError):
        return FileNotFoundError(errno.ENOENT, str(exc), where)
    if isinstance(exc, AccessDeniedError):
        return PermissionError(errno.EACCES, str(exc), where)
    return OSError(exc.errno, str(exc), where)


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[None]:
    try:
        yield
    except NbiaError as exc:
        raise _os_error(exc, path) from exc


def _read_only(path: str = "") -> NoReturn:
    raise OSError(errno.EROFS, "nbia:// is read-only", f"{PROTOCOL}://{path}")


# --- files -----------------------------------------------------------------------------------------------------


class InstanceFile(io.BufferedReader):
    """A read-only open file of one instance's local copy (in the cache): a plain buffered file with the
    fsspec extras ``path`` (its ``nbia://`` path, without the protocol) and ``size`` (its exact size)."""

    def __init__(self, local: Path, path: str) -> None:
        super().__init__(io.FileIO(os.fspath(local), "rb"))
        self.path = path
        self.size = os.fstat(self.fileno()).st_size

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"cannot pickle an open nbia:// file ({self.path}): pickle the filesystem and the path"
        )


# --- the filesystem --------------------------------------------------------------------------------------------


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class NbiaFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """An NBIA server as a read-only fsspec filesystem (protocol ``nbia``), with the mount's names and caches.

    Server: ``server`` (a profile: ``tcia`` (default), ``nlst``, ``tcia-v4``, ``legacy-v3``) and/or
    ``api_url`` (an API base such as ``http://127.0.0.1:8080/nbia-api/services/v2``, or a bare
    ``http://HOST:PORT``) and ``token_url``. Account: ``user`` (default ``NBIA_USER``, else the guest) with
    its password from ``credentials_file`` or ``NBIA_PASSWORD`` in each process; there is no password
    argument, so a pickled filesystem never carries one.

    Tree: ``layout`` (``descriptive`` or ``uid``), ``collections`` (only these), ``series`` and/or
    ``manifest`` (a ``.tcia`` file, read here) and/or ``cart`` (a shared cart's name): only those series.
    ``listing_ttl``, ``negative_ttl``, ``readahead`` as the mount's options. Cache: ``cache_dir`` (default the
    mount's, resolved in each process), ``cache_size`` (bytes, or ``"20G"``). Client: ``timeout``,
    ``retries``. Raises ValueError for bad settings; nothing here contacts the server.
    """

    protocol = PROTOCOL
    root_marker = ""
    cachable = True

    def __init__(
        self,
        server: str | None = None,
        *,
        api_url: str | None = None,
        token_url: str | None = None,
        user: str | None = None,
        credentials_file: str | os.PathLike[str] | None = None,
        layout: str = "descriptive",
        collections: Iterable[str] | str | None = None,
        series: Iterable[str] | None = None,
        manifest: str | os.PathLike[str] | None = None,
        cart: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_size: int | str = DEFAULT_CACHE_SIZE,
        timeout: float = ClientSettings.timeout,
        retries: int = ClientSettings.retries,
        listing_ttl: float = TreeSettings.listing_ttl,
        negative_ttl: float = TreeSettings.negative_ttl,
        readahead: int = TreeSettings.readahead,
    ) -> None:
        super().__init__()
        if isinstance(collections, str):
            collections = (collections,)
        try:
            series_filter = frozenset(series) if series is not None else None
            if manifest is not None:
                listed = load_manifest(os.fspath(manifest)).series_filter
                series_filter = listed if series_filter is None else series_filter & listed
            if cart is not None and not cart:
                raise ConfigError("cart: give a shared cart's name")
            self._config = _Config(
                profile=resolve_profile(server, api_url, token_url),
                user=user or os.environ.get(ENV_USER) or None,
                credentials_file=os.fspath(credentials_file) if credentials_file is not None else None,
                client=ClientSettings(timeout=float(timeout), retries=int(retries)),
                tree=TreeSettings(
                    layout=layout,
                    collections=tuple(collections) if collections is not None else None,
                    series_filter=series_filter,
                    listing_ttl=float(listing_ttl),
                    negative_ttl=float(negative_ttl),
                    readahead=int(readahead),
                ),
                cache=CacheSettings(
                    directory=Path(cache_dir).expanduser().absolute() if cache_dir else default_cache_dir(),
                    max_bytes=parse_size(cache_size) if isinstance(cache_size, str) else int(cache_size),
                ),
                cart=cart,
            )
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        if self._config.cache.max_bytes <= 0:
            raise ValueError(f"cache_size must be positive, not {cache_size!r}")
        self._server_args = (server, api_url, token_url)
        self._cache_dir_given = cache_dir is not None

    # --- plumbing --------------------------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by plain, resolved settings: the user name but no password, the series but no manifest path;
        the default cache directory stays the default of the process that unpickles."""
        config = self._config
        tree = config.tree
        server, api_url, token_url = self._server_args
        options: dict[str, Any] = {
            "server": server,
            "api_url": api_url,
            "token_url": token_url,
            "user": config.user,
            "credentials_file": config.credentials_file,
            "layout": tree.layout,
            "collections": tree.collections,
            "series": tuple(sorted(tree.series_filter)) if tree.series_filter is not None else None,
            "cart": config.cart,
            "cache_dir": str(config.cache.directory) if self._cache_dir_given else None,
            "cache_size": config.cache.max_bytes,
            "timeout": config.client.timeout,
            "retries": config.client.retries,
            "listing_ttl": tree.listing_ttl,
            "negative_ttl": tree.negative_ttl,
            "readahead": tree.readahead,
        }
        return make_instance, (type(self), (), options)

    def __repr__(self) -> str:
        return f"NbiaFileSystem({self._config.profile.api_url!r}, layout={self._config.tree.layout!r})"

    @property
    def fsid(self) -> str:
        """Stable across sessions: the server, the account and the selection and names of the tree."""
        config = self._config
        tree = config.tree
        parts = [
            config.profile.api_url,
            config.user or "",
            tree.layout,
            ",".join(sorted(tree.collections or ())),
            ",".join(sorted(tree.series_filter or ())),
            config.cart or "",
        ]
        key = "|".join(parts)
        return "nbia_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    @property
    def cache_dir(self) -> Path:
        """The instance and listing cache directory (shared with mounts that use it)."""
        return self._config.cache.directory

    def archive_tree(self) -> ArchiveTree:
        """This process's :class:`ArchiveTree` for these settings (built on first use, shared by every
        filesystem with equal settings in this process)."""
        return _state_for(self._config).tree

    def close(self) -> None:
        """Log out and close this process's caches for these settings; a later call builds them again."""
        state = _drop_state(self._config)
        if state is not None:
            state.close()

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``nbia://A/B/``, ``nbia:///A//B``, ``/A/B`` -> ``A/B``; the root is ``""``."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(stringify_path(path))
        for prefix in (f"{PROTOCOL}://", f"{PROTOCOL}::"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
        return "/".join(part for part in text.split("/") if part)

    def _call(self, path: str, method: Callable[[ArchiveTree, str], Any]) -> Any:
        with _mapped(path):
            return method(_state_for(self._config).tree, "/" + path)

    def _details(self, path: str, node: Node) -> dict[str, Any]:
        return {
            "name": path,
            "size": node.size,
            "type": "directory" if node.is_dir else "file",
            "mtime": node.mtime,
            "exact_size": node.exact_size,
            "kind": node.kind,
        }

    # --- reading ---------------------------------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """The entries of a directory, sorted (of a file: the file itself). ``detail``: dicts with ``name``,
        ``size`` (exact for cached instances, else the series' estimate, as on the mount), ``type``, ``mtime``
        (seconds since the epoch, from the archive's dates), ``exact_size`` and ``kind``. Never downloads."""
        path = self._strip_protocol(path)
        node: Node = self._call(path, ArchiveTree.lookup)
        if not node.is_dir:
            return [self._details(path, node)] if detail else [path]
        names: list[str] = self._call(path, ArchiveTree.listdir)
        if not detail:
            return [_join(path, name) for name in names]
        out = []
        for name in names:
            child = _join(path, name)
            out.append(self._details(child, self._call(child, ArchiveTree.lookup)))
        return out

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """One entry as :meth:`ls` describes it (the root is ``""``)."""
        path = self._strip_protocol(path)
        return self._details(path, self._call(path, ArchiveTree.lookup))

    def walk(
        self,
        path: str,
        maxdepth: int | None = None,
        topdown: bool = True,
        on_error: Any = "raise",
        **kwargs: Any,
    ) -> Iterator[Any]:
        """fsspec's walk, but a directory that cannot be listed raises by default (``on_error="raise"``)
        rather than being left out silently: ``find`` of a collection is all of it or an error."""
        yield from super().walk(path, maxdepth=maxdepth, topdown=topdown, on_error=on_error, **kwargs)

    def modified(self, path: str) -> dt.datetime:
        """The entry's time (from the archive's dates, as on the mount), as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.info(path)["mtime"], tz=dt.timezone.utc)

    def ukey(self, path: str) -> str:
        """An instance's bytes never change (a SOPInstanceUID names fixed bytes): its key is the server and
        the file name, whether its size is still an estimate or not."""
        info = self.info(path)
        if info["type"] != "file":
            return str(super().ukey(path))
        key = f"{self._config.profile.api_url}|{info['name'].rsplit('/', 1)[-1]}"
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def metadata(self, path: str) -> dict[str, str]:
        """The API's fields of an entry (the mount's ``user.nbia.*`` extended attributes, without the
        prefix): a series its getSeries row, an instance its UIDs and its series' main fields, ..."""
        path = self._strip_protocol(path)
        raw: dict[str, bytes] = self._call(path, ArchiveTree.xattrs)
        return {key[len(XATTR_PREFIX) :]: value.decode("utf-8", "replace") for key, value in raw.items()}

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        """The instance at ``path`` as a local, seekable binary file (downloaded into the cache first if it
        is not there, with the mount's read-ahead along its series). Only mode ``"rb"``: writing modes raise
        OSError(EROFS), text modes ValueError (instances are DICOM)."""
        if mode != "rb":
            if any(c in mode for c in "wax+"):
                _read_only(self._strip_protocol(path))
            raise ValueError(f"nbia:// files are binary DICOM: open them with mode 'rb', not {mode!r}")
        return super().open(path, mode, *args, **kwargs)

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> InstanceFile:
        if mode != "rb":
            _read_only(path)
        path = self._strip_protocol(path)
        try:
            local, _fetched = _state_for(self._config).tree.open_instance("/" + path)
            return InstanceFile(local, path)
        except NotFoundError as exc:
            with contextlib.suppress(NbiaError):
                if self.archive_tree().lookup("/" + path).is_dir:
                    raise IsADirectoryError(errno.EISDIR, "is a directory", f"{PROTOCOL}://{path}") from exc
            raise _os_error(exc, path) from exc
        except NbiaError as exc:
            raise _os_error(exc, path) from exc

    # --- writing: never --------------------------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> NoReturn:
        _read_only(self._strip_protocol(path))

    def makedirs(self, path: str, exist_ok: bool = False) -> NoReturn:
        _read_only(self._strip_protocol(path))

    def rmdir(self, path: str) -> NoReturn:
        _read_only(self._strip_protocol(path))

    def rm_file(self, path: str) -> NoReturn:
        _read_only(self._strip_protocol(path))

    def _rm(self, path: str) -> NoReturn:
        _read_only(self._strip_protocol(path))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> NoReturn:
        _read_only(self._strip_protocol(path) if isinstance(path, str) else "")

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> NoReturn:
        _read_only(self._strip_protocol(path2))

    def mv(self, path1: Any, path2: Any, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only(self._strip_protocol(path2) if isinstance(path2, str) else "")

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only(self._strip_protocol(path))

    def put_file(self, lpath: Any, rpath: str, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only(self._strip_protocol(rpath))

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> NoReturn:
        _read_only(self._strip_protocol(path))
