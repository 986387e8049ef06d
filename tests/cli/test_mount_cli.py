"""``nbiafs mount``'s command line without mounting: suggestions for typos, ``-o key=value`` settings, the mount
helper form, exit statuses, logging for services, systemd's notify protocol, messages a person can act on."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

import pytest

from nbiafs.api.credentials import Credentials
from nbiafs.api.profiles import resolve_profile
from nbiafs.cli import demo, logs, service, status
from nbiafs.cli.main import build_parser, main, mount_helper_form
from nbiafs.cli.mount import apply_source, parse_fuse_options, settings_from_args
from nbiafs.errors import ConfigError
from nbiafs.mounting import MountSettings, check_settings


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("urllib3").setLevel(logging.NOTSET)


def test_flag_typo_suggests_the_option_with_the_subcommand_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["mount", "/mnt/x", "--cache-sise", "1G"])
    assert info.value.code == status.USAGE
    err = capsys.readouterr().err
    assert "did you mean --cache-size?" in err
    assert "usage: nbiafs mount" in err


def test_subcommand_typo_suggests_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["umout", "/mnt/x"])
    assert info.value.code == status.USAGE
    assert "did you mean 'umount'?" in capsys.readouterr().err


def test_every_setting_as_an_o_option() -> None:
    args = parse(
        "mount",
        "/mnt/x",
        "-o",
        "ro,noauto,_netdev,user,cache_size=50G,cache-dir=/tmp/c,layout=uid,collection=A,collection=B",
        "-o",
        "listing_ttl=60,negative_ttl=5,readahead=0,timeout=7,retries=2,server=nlst,user=bob",
        "-o",
        "credentials_file=/tmp/cred,log_file=/tmp/log,share_restricted_data,uid=1000,umask=022,allow_other",
    )
    assert args.cache_size == "50G" and args.cache_dir == "/tmp/c" and args.layout == "uid"
    assert args.collection == ["A", "B"]
    assert (args.listing_ttl, args.negative_ttl, args.readahead) == (60.0, 5.0, 0)
    assert (args.timeout, args.retries, args.server, args.user) == (7.0, 2, "nlst", "bob")
    assert args.credentials_file == "/tmp/cred" and args.log_file == "/tmp/log" and args.share_restricted
    allow_other, options = parse_fuse_options(args.fuse_options)
    assert allow_other
    assert options == {
        "ro": True,
        "noauto": True,
        "_netdev": True,
        "user": True,
        "uid": "1000",
        "umask": "022",
    }
    for extra in ("manifest=/tmp/m.tcia", "cart=c", "api_url=http://h/x", "token_url=http://h/t"):
        key, _, value = extra.partition("=")
        assert getattr(parse("mount", "/mnt/x", "-o", extra), key) == value


@pytest.mark.parametrize("bad", ["layout=flat", "timeout=abc", "cache_size", "server=nowhere"])
def test_bad_o_setting_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse("mount", "/mnt/x", "-o", bad)
    assert info.value.code == status.USAGE
    assert "usage: nbiafs mount" in capsys.readouterr().err


def test_fstab_options_are_dropped_from_the_fuse_options() -> None:
    from nbiafs.fuse.mount import fuse_options

    options = fuse_options(
        extra={"rw": True, "noauto": True, "_netdev": True, "nofail": True, "defaults": True, "user": True,
               "x-systemd.automount": True, "uid": "1000", "auto_unmount": True, "nodev": True}
    )  # fmt: skip
    assert options["ro"] is True and "rw" not in options
    for dropped in ("noauto", "_netdev", "nofail", "defaults", "user", "x-systemd.automount"):
        assert dropped not in options
    assert options["uid"] == "1000" and options["auto_unmount"] is True and options["nodev"] is True


def test_mount_helper_form_and_source() -> None:
    assert mount_helper_form(["tcia", "/mnt/t", "-o", "ro"]) == ["mount", "tcia", "/mnt/t", "-o", "ro"]
    url = "http://127.0.0.1:8080/nbia-api/services/v2"
    assert mount_helper_form([url, "/mnt/t"])[0] == "mount"
    assert mount_helper_form(["mount", "/mnt/t"]) == ["mount", "/mnt/t"]
    assert mount_helper_form(["mout", "/mnt/t"]) == ["mout", "/mnt/t"]  # a typo stays a typo
    args = parse("mount", "nlst", "/mnt/t")
    apply_source(args)
    assert args.server == "nlst" and args.mountpoint == "/mnt/t"
    args = parse("mount", url, "/mnt/t")
    apply_source(args)
    assert args.api_url == url
    args = parse("mount", "/mnt/t")
    apply_source(args)
    assert args.source is None and args.server is None
    with pytest.raises(ConfigError, match="unknown SOURCE"):
        apply_source(parse("mount", "somewhere", "/mnt/t"))


def test_help_documents_exit_statuses_and_options() -> None:
    from nbiafs.cli.parser import subparser_of

    text = subparser_of(build_parser(), argparse.Namespace(command="mount")).format_help()
    for needle in ("exit status:", "0  success", "2  usage error", "3  configuration", "cache_size", "auto_unmount",
                   "umask=M", "allow_other", "nonempty", "fuse.nbiafs", "syslog"):  # fmt: skip
        assert needle in text, needle


def _settings(user: str | None, allow_other: bool, share: bool = False) -> MountSettings:
    return MountSettings(
        mountpoint="/mnt/x",
        profile=resolve_profile("tcia"),
        credentials=Credentials(user, "pw") if user else None,
        allow_other=allow_other,
        share_restricted=share,
    )


def test_allow_other_with_an_account_needs_an_explicit_flag() -> None:
    with pytest.raises(ConfigError, match="share-restricted-data-with-all-users"):
        check_settings(_settings("alice", True))
    check_settings(_settings("alice", True, share=True))
    check_settings(_settings(None, True))
    check_settings(_settings("nbia_guest", True))
    check_settings(_settings("alice", False))
    args = parse("mount", "/mnt/x", "-o", "allow_other", "--share-restricted-data-with-all-users")
    settings = settings_from_args(args, resolve_profile("tcia"), Credentials("alice", "pw"))
    assert settings.allow_other and settings.share_restricted
    check_settings(settings)


def test_urllib3_warnings_are_silenced_unless_vv() -> None:
    logs.setup_logging(0)
    assert logging.getLogger("urllib3").getEffectiveLevel() == logging.ERROR
    logs.setup_logging(2)
    assert logging.getLogger("urllib3").getEffectiveLevel() == logging.DEBUG


def test_journal_lines_carry_their_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logs.stderr_is_journal()
    logs.setup_logging(2)
    formatter = logging.getLogger().handlers[0].formatter
    assert isinstance(formatter, logs.JournalFormatter)
    for level, prefix in ((logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (logging.INFO, "<6>"),
                          (logging.DEBUG, "<7>")):  # fmt: skip
        record = logging.LogRecord("nbiafs.x", level, __file__, 1, "one\ntwo", None, None)
        assert formatter.format(record) == f"{prefix}nbiafs.x: one\n{prefix}two"
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not logs.stderr_is_journal()


def test_background_log_goes_to_syslog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        sink.settimeout(5)
        monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(path))
        logs.setup_logging(0)
        assert logs.use_syslog()
        logging.getLogger("nbiafs.test").warning("to the journal")
        line = sink.recv(4096).decode()
        assert (
            line.startswith("<28>nbiafs[") and "WARNING nbiafs.test: to the journal" in line
        )  # daemon.warning
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(tmp_path / "none"))
    logs.setup_logging(0)
    assert not logs.use_syslog()


@pytest.fixture
def fresh_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "_taken", False)
    monkeypatch.setattr(service, "_address", None)


@pytest.mark.usefixtures("fresh_service")
def test_notify_sends_datagrams_and_unsets_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(tmp_path / "n.sock"))
        sink.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
        assert service.ready("/mnt/x", pid=42)
        assert "NOTIFY_SOCKET" not in os.environ
        assert sink.recv(4096) == b"READY=1\nSTATUS=mounted at /mnt/x\nMAINPID=42"
        assert service.stopping()
        assert sink.recv(4096).startswith(b"STOPPING=1")


@pytest.mark.usefixtures("fresh_service")
def test_notify_without_systemd_or_with_a_dead_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not service.ready("/mnt/x")
    monkeypatch.setattr(service, "_taken", False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert not service.ready("/mnt/x")  # errors ignored


def test_no_permission_on_dev_fuse_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nbiafs.fuse.mount import MountError, check_fuse_device

    device = tmp_path / "fuse"
    device.write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(MountError, match="no permission to open .*fuse"):
        check_fuse_device(str(device))
    with pytest.raises(MountError, match="modprobe fuse"):
        check_fuse_device(str(tmp_path / "missing"))


def test_every_libfuse_status_has_a_cause() -> None:
    from nbiafs.fuse.mount import LIBFUSE_ERRORS

    assert set(LIBFUSE_ERRORS) == set(range(1, 9))
    assert "not be a directory" in LIBFUSE_ERRORS[4]


def test_demo_hint_names_this_nbiafs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mine = tmp_path / "venv" / "bin" / "nbiafs"
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/sh\n")
    mine.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert demo.nbiafs_command(str(mine)) == str(mine)
    monkeypatch.setenv("PATH", str(mine.parent))
    assert demo.nbiafs_command(str(mine)) == "nbiafs"
    assert demo.nbiafs_command("/x/nbiafs/__main__.py").endswith("-m nbiafs")
