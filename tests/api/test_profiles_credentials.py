"""Server profiles and where credentials come from (no server needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nbiafs.api.credentials import Credentials, load_credentials, read_credentials_file
from nbiafs.api.profiles import PROFILE_NAMES, infer_flavour, resolve_profile
from nbiafs.errors import ConfigError


def test_named_profiles() -> None:
    tcia = resolve_profile()
    assert tcia.name == "tcia" and tcia.flavour == "v2" and tcia.auth == "oauth"
    assert tcia.api_url == "https://services.cancerimagingarchive.net/nbia-api/services/v2"
    assert tcia.token_url == "https://services.cancerimagingarchive.net/nbia-api/oauth/token"
    assert tcia.guest_user == "nbia_guest"
    assert tcia.endpoint_url("getSeries") == f"{tcia.api_url}/getSeries"

    nlst = resolve_profile("nlst")
    assert nlst.api_url == "https://nlst.cancerimagingarchive.net/nbia-api/services/v2"
    assert nlst.token_url == "https://nlst.cancerimagingarchive.net/nbia-api/oauth/token"

    v4 = resolve_profile("tcia-v4")
    assert (v4.flavour, v4.auth, v4.token_url) == ("v4", "none", None)
    assert v4.contents_by_name_url is not None and v4.contents_by_name_url.endswith(
        "/services/v1/getContentsByName"
    )

    v3 = resolve_profile("legacy-v3")
    assert (v3.flavour, v3.auth) == ("v3", "api_key")
    assert v3.api_url == "https://services.cancerimagingarchive.net/services/v3/TCIA/query"
    assert (
        v3.contents_by_name_url
        == "https://services.cancerimagingarchive.net/services/v3/SharedList/query/ContentsByName"
    )
    assert set(PROFILE_NAMES) == {"tcia", "nlst", "tcia-v4", "legacy-v3"}


def test_custom_urls_infer_flavour_and_token_url() -> None:
    p = resolve_profile(api_url="http://127.0.0.1:8080/nbia-api/services/v2/")
    assert (p.name, p.flavour, p.auth) == ("custom", "v2", "oauth")
    assert p.api_url == "http://127.0.0.1:8080/nbia-api/services/v2"
    assert p.token_url == "http://127.0.0.1:8080/nbia-api/oauth/token"
    assert p.logout_url == "http://127.0.0.1:8080/nbia-api/logout"

    p = resolve_profile(api_url="http://h:1/nbia-api/services/v1")
    assert (p.flavour, p.auth, p.token_url) == ("v1", "none", None)

    p = resolve_profile(api_url="http://h:1/nbia-api/services/v4")
    assert p.contents_by_name_url == "http://h:1/nbia-api/services/v1/getContentsByName"

    p = resolve_profile(api_url="http://h:1/services/v3/TCIA/query")
    assert (p.flavour, p.auth) == ("v3", "api_key")
    assert p.contents_by_name_url == "http://h:1/services/v3/SharedList/query/ContentsByName"

    p = resolve_profile(api_url="https://x.org/api/v2", token_url="https://auth.x.org/realm/oauth/token")
    assert (p.flavour, p.auth) == ("v2", "oauth")
    assert (p.token_url, p.logout_url) == (
        "https://auth.x.org/realm/oauth/token",
        "https://auth.x.org/realm/logout",
    )


def test_bare_server_root_takes_the_named_layout() -> None:
    p = resolve_profile("tcia-v4", api_url="http://127.0.0.1:9")
    assert p.api_url == "http://127.0.0.1:9/nbia-api/services/v4" and p.flavour == "v4"
    p = resolve_profile("legacy-v3", api_url="http://127.0.0.1:9/")
    assert p.api_url == "http://127.0.0.1:9/services/v3/TCIA/query"
    p = resolve_profile(api_url="http://127.0.0.1:9")
    assert p.token_url == "http://127.0.0.1:9/nbia-api/oauth/token" and p.flavour == "v2"


def test_profile_errors() -> None:
    with pytest.raises(ConfigError):
        resolve_profile("nope")
    with pytest.raises(ConfigError, match="version"):
        resolve_profile(api_url="http://h/some/api")
    with pytest.raises(ConfigError):
        resolve_profile(api_url="ftp://h/nbia-api/services/v2")
    with pytest.raises(ConfigError, match="token URL"):
        resolve_profile(api_url="http://h/api/v2")
    assert infer_flavour("http://h/x/v3/y") == "v3"
    assert infer_flavour("http://h/x") is None


def test_credentials_never_show_secrets() -> None:
    c = Credentials("alice", "s3cret-pw", api_key="k3y-value")
    for text in (repr(c), str(c), f"{c}", repr([c])):
        assert "s3cret-pw" not in text and "k3y-value" not in text
        assert "alice" in text


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NBIA_USER", "NBIA_PASSWORD", "NBIA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_nothing_given_means_guest(clean_env: pytest.MonkeyPatch) -> None:
    assert load_credentials(interactive=False) is None


def test_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NBIA_USER", "alice")
    clean_env.setenv("NBIA_PASSWORD", "wonder land ")
    clean_env.setenv("NBIA_API_KEY", "key-1")
    c = load_credentials(interactive=False)
    assert c is not None and (c.user, c.password, c.api_key) == ("alice", "wonder land ", "key-1")
    c = load_credentials(user="bob", interactive=False)
    assert c is not None and c.user == "bob"


def test_api_key_alone(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NBIA_API_KEY", "key-2")
    c = load_credentials(interactive=False)
    assert c is not None and (c.user, c.api_key) == ("", "key-2")


def test_user_without_password_and_no_tty(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="NBIA_PASSWORD"):
        load_credentials(user="alice", interactive=False)
    clean_env.setenv("NBIA_PASSWORD", "x")
    with pytest.raises(ConfigError, match="NBIA_USER"):
        load_credentials(interactive=False)


def test_guest_user_needs_no_password(clean_env: pytest.MonkeyPatch) -> None:
    c = load_credentials(user="nbia_guest", interactive=False)
    assert c is not None and (c.user, c.password) == ("nbia_guest", "")


def test_prompt_only_on_a_tty(clean_env: pytest.MonkeyPatch) -> None:
    class FakeTty:
        def isatty(self) -> bool:
            return True

    asked: list[str] = []

    def fake_getpass(prompt: str) -> str:
        asked.append(prompt)
        return "typed-pw"

    clean_env.setattr("sys.stdin", FakeTty())
    clean_env.setattr("getpass.getpass", fake_getpass)
    c = load_credentials(user="alice")
    assert c is not None and c.password == "typed-pw" and len(asked) == 1
    with pytest.raises(ConfigError):
        load_credentials(user="alice", interactive=False)


def test_credentials_file(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "creds.txt"
    path.write_text("\ufeff# Data Retriever\r\nuserName=alice\r\npassWord=p=ss word\r\n", encoding="utf-8")
    path.chmod(0o600)
    clean_env.setenv("NBIA_PASSWORD", "from-env")
    with caplog.at_level(logging.DEBUG, logger="nbiafs"):
        c = load_credentials(credentials_file=path, interactive=False)
    assert c is not None and (c.user, c.password) == ("alice", "p=ss word")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "p=ss word" not in caplog.text

    path.chmod(0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nbiafs"):
        assert read_credentials_file(path) == ("alice", "p=ss word")
    assert "readable by others" in caplog.text and "p=ss word" not in caplog.text

    with pytest.raises(ConfigError, match="differs"):
        load_credentials(user="bob", credentials_file=path)
    bad = tmp_path / "bad.txt"
    bad.write_text("userName=alice\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="passWord"):
        read_credentials_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_credentials_file(tmp_path / "missing.txt")
