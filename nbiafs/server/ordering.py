"""The orders the live servers answer in.

- Database order: instances as the database returns them (by an internal key assigned at ingestion), stable
  but unrelated to InstanceNumber. getSOPInstanceUIDs and the default ZIP members use it.
- Java ``HashMap`` iteration order: how ``md5hashes.csv`` rows come out of a ``HashMap<String, String>``.
- Value lists: sorted case-insensitively with the null first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

from nbiafs.server.archive import InstanceInfo

T = TypeVar("T")


def database_order(instances: Sequence[InstanceInfo]) -> list[InstanceInfo]:
    """The instances in the order the database keeps them: a stable shuffle keyed on the SOPInstanceUID."""
    return sorted(instances, key=lambda i: hashlib.sha1(i.sop_instance_uid.encode()).digest())


def instance_number_order(instances: Sequence[InstanceInfo]) -> list[InstanceInfo]:
    """The instances by InstanceNumber (``NewFileNames=Yes``), ties by database order."""
    ranked = {i.sop_instance_uid: n for n, i in enumerate(database_order(instances))}
    return sorted(instances, key=lambda i: (i.instance_number, ranked[i.sop_instance_uid]))


def java_string_hash(text: str) -> int:
    """``String.hashCode()`` as an unsigned 32-bit number."""
    data = text.encode("utf-16-be")
    h = 0
    for pos in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[pos : pos + 2], "big")) & 0xFFFFFFFF
    return h


def java_hashmap_order(keys: Iterable[str]) -> list[str]:
    """``keys`` (distinct, in insertion order) in the order a ``java.util.HashMap`` iterates them."""
    ordered = list(dict.fromkeys(keys))
    capacity = 16
    while len(ordered) > capacity * 3 // 4:
        capacity *= 2

    def bucket(key: str) -> int:
        h = java_string_hash(key)
        return (h ^ (h >> 16)) & (capacity - 1)

    return [k for _, _, k in sorted((bucket(k), n, k) for n, k in enumerate(ordered))]


def value_order(values: Iterable[str | None]) -> list[str | None]:
    """Distinct values sorted case-insensitively, the null (if any) first."""
    distinct = set(values)
    named = sorted((v for v in distinct if v is not None), key=lambda v: (v.casefold(), v))
    return ([None] if None in distinct else []) + list(named)
