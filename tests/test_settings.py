"""The settings module: size syntax, the default cache directory, and the settings' own checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbiafs.errors import ConfigError
from nbiafs.settings import ClientSettings, TreeSettings, default_cache_dir, format_size, parse_size


def test_parse_size() -> None:
    assert parse_size("20G") == 20 * 1024**3
    assert parse_size("512m") == 512 * 1024**2
    assert parse_size("1.5K") == 1536
    assert parse_size("2TiB") == 2 * 1024**4
    assert parse_size("10GB") == 10 * 1024**3
    assert parse_size(" 4096 ") == 4096
    assert parse_size("100B") == 100
    for bad in ("", "G", "20X", "-1G", "0", "1 G G", "ten"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_format_size() -> None:
    assert format_size(5) == "5 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(20 * 1024**3) == "20.0 GiB"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "nbiafs"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "nbiafs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "nbiafs"


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ConfigError):
        ClientSettings(timeout=0)
    with pytest.raises(ConfigError):
        ClientSettings(retries=-1)
    with pytest.raises(ConfigError):
        ClientSettings(max_connections=0)
    with pytest.raises(ConfigError):
        TreeSettings(layout="flat")
    with pytest.raises(ConfigError):
        TreeSettings(listing_ttl=-1)
    with pytest.raises(ConfigError):
        TreeSettings(readahead=-2)
