"""fsspec for NBIA: ``nbia://Collection/Patient/Study/Series/<SOPInstanceUID>.dcm`` without FUSE.

:class:`NbiaFileSystem` (protocol ``nbia``) serves the mount's tree, names, caches and fetch strategy through
fsspec, so pandas, Dask, pydicom or anything that takes fsspec URLs reads TCIA paths, also where FUSE is not
available (containers without /dev/fuse, macOS, notebooks). Installed with the ``fsspec`` extra; the protocol
is registered through the ``fsspec.specs`` entry point, and again when this package is imported. Usage and a
Dask example: docs/python.md.
"""

from __future__ import annotations

from fsspec.registry import known_implementations, register_implementation, registry

from nbiafs.fsspec.filesystem import PROTOCOL, InstanceFile, NbiaFileSystem, close_all

__all__ = ["PROTOCOL", "InstanceFile", "NbiaFileSystem", "close_all"]

if PROTOCOL not in registry and PROTOCOL not in known_implementations:
    register_implementation(PROTOCOL, "nbiafs.fsspec.filesystem.NbiaFileSystem")
