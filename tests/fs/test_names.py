"""Directory entry names: hostile values, Data Retriever names, 255-byte limit, uniqueness and stability."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence

import pytest

from nbiafs.fs import names

HOSTILE = [
    "CHEST/ABD",
    "BRAIN W/WO_AH32",
    "IRM FEMUR GAUCHE C-/C+",
    "trailing  ",
    "double  spaces",
    'embedded "quotes"',
    "http://www.example.com/scanner",
    "RIDER Lung CT",
    "CT COLONOGRAPHY",
    "0042",
    "nul\x00byte",
    ".",
    "..",
    "",
    "/",
    "../../etc/passwd",
    "ümlaut/日本語",
]


def valid(name: str) -> bool:
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\x00" not in name
        and len(name.encode("utf-8")) <= names.NAME_MAX
    )


@pytest.mark.parametrize("value", HOSTILE)
def test_safe_name_is_always_a_valid_entry(value: str) -> None:
    assert valid(names.safe_name(value))


def test_safe_name_keeps_everything_but_slash_and_nul() -> None:
    assert names.safe_name("RIDER Lung CT") == "RIDER Lung CT"
    assert names.safe_name("trailing  ") == "trailing  "
    assert names.safe_name('a "q"') == 'a "q"'
    assert names.safe_name("0042") == "0042"
    assert names.safe_name("CHEST/ABD") == "CHEST_ABD"
    assert names.safe_name("a\x00b") == "a_b"
    assert names.safe_name(".") == "_"
    assert names.safe_name("..") == "__"
    assert names.safe_name("") == "_"
    assert names.safe_name("...") == "..."


@pytest.mark.parametrize("value", HOSTILE)
def test_descriptive_names_are_valid_and_clean(value: str) -> None:
    study = names.descriptive_study_name("1.2.3.45678", dt.datetime(2003, 12, 9), value, value)
    series = names.descriptive_series_name("1.2.3.98765", 1000, value)
    for name in (study, series):
        assert valid(name)
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .-")


def test_descriptive_study_name_matches_the_data_retriever() -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.7009.9004.160416029404301360186441590"
    name = names.descriptive_study_name(uid, dt.datetime(2000, 1, 2), "1", "CHEST/ABD W CONTRAST")
    assert name == "01-02-2000-1-CHESTABD W CONTRAST-41590"


def test_descriptive_missing_parts() -> None:
    # Missing date dropped; missing StudyID and description become NA (the server's cleanStr).
    assert names.descriptive_study_name("1.2.3.45678") == "NA-NA-45678"
    assert names.descriptive_study_name("1.2.3.45678", study_description="///") == "NA-NA-45678"
    # Missing SeriesNumber dropped; empty description NA.
    assert names.descriptive_series_name("1.2.3.99999", None, None) == "NA-99999"
    assert names.descriptive_series_name("1.2.3.99999", 3, "") == "3.000000-NA-99999"
    assert names.descriptive_series_name("1.2.3.99999", 0, "AX T1") == "0.000000-AX T1-99999"


def test_descriptions_cut_to_53_characters() -> None:
    long = "A" * 80
    name = names.descriptive_series_name("1.2.3.12345", 2, long)
    assert name == "2.000000-" + "A" * 53 + "-12345"


def test_255_bytes_with_multibyte_characters() -> None:
    value = "é" * 200  # 400 bytes of UTF-8
    name = names.safe_name(value)
    assert len(name.encode("utf-8")) <= 255
    assert name == "é" * 127  # cut on a character boundary, not mid-character
    mixed = "a" + "日本" * 100
    cut = names.safe_name(mixed)
    assert len(cut.encode("utf-8")) <= 255
    cut.encode("utf-8").decode("utf-8")  # still valid UTF-8
    inst = names.instance_name("1" + "/" * 300)
    assert inst.endswith(".dcm") and valid(inst)
    # A huge StudyID never pushes the UID digits off the end.
    study = names.descriptive_study_name("1.2.3.77777", None, "9" * 400, "x")
    assert valid(study) and study.endswith("-77777")


def test_instance_name() -> None:
    assert names.instance_name("1.2.840.1") == "1.2.840.1.dcm"


def series_names(rows: Sequence[tuple[str, int | None, str | None]]) -> dict[str, str]:
    by_uid = {uid: (num, desc) for uid, num, desc in rows}
    wanted = {uid: names.descriptive_series_name(uid, num, desc) for uid, num, desc in rows}

    def widen(uid: str, digits: int) -> str:
        num, desc = by_uid[uid]
        return names.descriptive_series_name(uid, num, desc, tail=digits)

    return names.unique_names(wanted, widen)


def test_repeated_series_are_told_apart_with_more_uid_digits() -> None:
    rows = [
        ("1.2.3.111.55555", 1000, "Segmentation"),
        ("1.2.3.222.55555", 1000, "Segmentation"),
        ("1.2.3.333.55555", 1000, "Segmentation"),
        ("1.2.3.444.12345", 1000, "Segmentation"),
    ]
    result = series_names(rows)
    assert len(set(result.values())) == 4
    assert result["1.2.3.444.12345"] == "1000.000000-Segmentation-12345"  # no clash, no change
    assert result["1.2.3.111.55555"] == "1000.000000-Segmentation-1.55555"
    assert result["1.2.3.222.55555"] == "1000.000000-Segmentation-2.55555"
    assert all(valid(n) for n in result.values())


def test_uniqueness_is_stable_under_reordering() -> None:
    rows = [(f"1.2.{i % 3}.{i}0055555", 1, "SAME") for i in range(12)] + [("9.9.9.1", 7, "other")]
    expected = series_names(rows)
    rng = random.Random(1234)
    for _ in range(10):
        shuffled = rows[:]
        rng.shuffle(shuffled)
        assert series_names(shuffled) == expected
    assert len(set(expected.values())) == len(rows)


def test_unique_names_without_widen_uses_a_hash_of_the_key() -> None:
    # Two PatientIDs that only differ in a character sanitising replaces.
    wanted = {pid: names.safe_name(pid) for pid in ("a/b", "a_b", "c")}
    result = names.unique_names(wanted)
    assert result["c"] == "c"
    assert result["a/b"] != result["a_b"]
    assert result["a/b"].startswith("a_b~") and result["a_b"].startswith("a_b~")
    assert names.unique_names(dict(reversed(list(wanted.items())))) == result


def test_unique_suffix_never_clashes_with_an_existing_name() -> None:
    first = names.unique_names({"k1": "x", "k2": "x"})
    # An entry that happens to be named like k1's suffixed name forces a longer suffix for k1.
    again = names.unique_names({"k1": "x", "k2": "x", "other": first["k1"]})
    assert again["other"] == first["k1"]
    assert len(set(again.values())) == 3


def test_unique_instance_names_keep_the_suffix() -> None:
    long_uid = "1" * 300
    wanted = {
        long_uid + "a": names.instance_name(long_uid + "a"),
        long_uid + "b": names.instance_name(long_uid),
    }
    result = names.unique_names(wanted)
    assert len(set(result.values())) == 2
    for name in result.values():
        assert name.endswith(".dcm") and valid(name)
