"""Filesystem semantics without FUSE: names, the tree, the listing and instance caches, read-ahead."""
