"""getDicomTags: the header of a series' first instance as NBIA's tag walker lists it (facts §7).

File meta first, then the dataset up to PixelData, in tag order. ``element`` is ``(GGGG,EEEE)`` in upper-case
hex, with one ``>`` per sequence level; each sequence is followed by an ``End <name>`` row. ``data`` joins
multiple values with ``\\``; groups 6000-7FFF give ``...``; sequences and binary values give null. Private
and unknown tags have an empty name.
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from nbiafs.server.formats import java_double

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"})


def _name(tag: Any) -> str:
    if tag.is_private:
        return ""
    try:
        return str(dictionary_description(tag))
    except KeyError:
        return ""


def _text(value: Any) -> str:
    if type(value) is float:  # FL/FD; DS values keep the text they were written with
        return java_double(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _data(elem: Any) -> str | None:
    group = elem.tag >> 16
    if 0x6000 <= group < 0x8000:  # Java's signed int comparison: groups from 8000 are "negative"
        return "..."
    if elem.VR == "SQ" or elem.VR in _BINARY_VRS:
        return None
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_text(v) for v in value)
    return _text(value)


def _walk(dataset: Dataset, prefix: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for elem in dataset:
        element = f"{prefix}({elem.tag >> 16:04X},{elem.tag & 0xFFFF:04X})"
        name = _name(elem.tag)
        data = _data(elem)
        rows.append({"element": element, "name": name, "data": data})
        if elem.VR == "SQ":
            for item in elem.value:
                rows.extend(_walk(item, prefix + ">"))
            rows.append({"element": element, "name": f"End {name}", "data": data})
    return rows


def dicom_tags(data: bytes) -> list[dict[str, Any]]:
    """The tag rows of one DICOM file's bytes."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return _walk(ds.file_meta, "") + _walk(ds, "")
