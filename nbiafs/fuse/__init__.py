"""The FUSE adapter: the only code that imports mfusepy, and the one place exceptions become errno values."""
