"""The ``nbiafs`` entry point: subcommands registered, errors as messages, a private log file."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from nbiafs.cli.main import COMMANDS, build_parser, main


def test_every_subcommand_is_registered() -> None:
    help_text = build_parser().format_help()
    for name in COMMANDS:
        assert name in help_text


def test_log_file_is_private(tmp_path: Path) -> None:
    log_file = tmp_path / "nbiafs.log"
    try:
        assert (
            main(["cache", "info", "--cache-dir", str(tmp_path / "c"), "-v", "--log-file", str(log_file)])
            == 0
        )
        logging.getLogger("nbiafs.test").warning("a line")
        assert "a line" in log_file.read_text()
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)


def test_unwritable_log_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "missing-dir" / "nbiafs.log"
    assert main(["cache", "info", "--log-file", str(bad)]) == 1
    assert f"cannot write the log file {bad}" in capsys.readouterr().err
