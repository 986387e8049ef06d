"""Data Retriever .tcia manifests: headers, BOM, CRLF, blank lines, garbage."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbiafs.api.manifest import load_manifest, parse_manifest
from nbiafs.errors import ConfigError

UID1 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
UID2 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"

MANIFEST = f"""downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
includeAnnotation=true
noOfrRetry=4
databasketId=manifest-1600709154662.tcia
manifestVersion=3.0
ListOfSeriesToDownload=
{UID1}
{UID2}
"""


def test_parse_headers_and_series() -> None:
    m = parse_manifest(MANIFEST)
    assert m.series_instance_uids == (UID1, UID2)
    assert (
        m.download_server_url == "https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"
    )
    assert m.include_annotation is True
    assert m.no_of_retry == 4
    assert m.databasket_id == "manifest-1600709154662.tcia"
    assert m.manifest_version == "3.0"
    assert m.series_filter == frozenset({UID1, UID2})
    assert m.headers["noOfrRetry"] == "4"


def test_bom_crlf_blank_lines_and_duplicates(tmp_path: Path) -> None:
    text = MANIFEST.replace("\n", "\r\n").replace(
        "ListOfSeriesToDownload=\r\n", "ListOfSeriesToDownload=\r\n\r\n"
    )
    text += f"\r\n  {UID1}  \r\n\r\n"
    path = tmp_path / "m.tcia"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    m = load_manifest(path)
    assert m.series_instance_uids == (UID1, UID2)
    assert m.download_server_url is not None and m.download_server_url.startswith("https://")
    assert m.include_annotation is True


def test_minimal_manifest_without_headers() -> None:
    m = parse_manifest(f"ListOfSeriesToDownload=\n{UID1}\n")
    assert m.series_instance_uids == (UID1,)
    assert m.include_annotation is None and m.no_of_retry is None and m.manifest_version is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just some text\n",
        f"downloadServerUrl=x\n{UID1}\n",  # no ListOfSeriesToDownload=
        "ListOfSeriesToDownload=\n",  # no series
        "ListOfSeriesToDownload=\nnot-a-uid\n",
        f"ListOfSeriesToDownload=\n{UID1}; rm -rf /\n",
        "ListOfSeriesToDownload=\n" + "1." * 40 + "1\n",  # longer than 64 characters
        f"includeAnnotation=maybe\nListOfSeriesToDownload=\n{UID1}\n",
        f"noOfrRetry=four\nListOfSeriesToDownload=\n{UID1}\n",
        "<html><body>404</body></html>\n",
    ],
)
def test_garbage_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_manifest(text)


def test_binary_and_missing_files(tmp_path: Path) -> None:
    binary = tmp_path / "image.dcm"
    binary.write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)))
    with pytest.raises(ConfigError):
        load_manifest(binary)
    latin = tmp_path / "latin.tcia"
    latin.write_bytes(b"databasketId=\xe9\nListOfSeriesToDownload=\n1.2\n")
    with pytest.raises(ConfigError):
        load_manifest(latin)
    with pytest.raises(ConfigError, match="cannot read"):
        load_manifest(tmp_path / "missing.tcia")
