"""nbiafs: The Cancer Imaging Archive (NBIA) as a read-only FUSE filesystem.

Layers, imports pointing one way only (each imports only layers above it in this list):

- ``errors``, ``records``: the typed error hierarchy and the typed API records.
- ``profiles``, ``credentials``, ``auth``, ``client``: the NBIA API client (knows only HTTP).
- ``names``, ``manifest``, ``metastore``, ``diskcache``, ``tree``: filesystem semantics (no FUSE).
- ``fuse_adapter``: the thin FUSE layer, the one place exceptions become errno values.
- ``commands``, ``cli``: the command line that wires them together.
- ``server``: the bundled NBIA-compatible archive server (its own module; imports nothing above but
  ``errors``).
"""

__version__ = "0.1.0"
