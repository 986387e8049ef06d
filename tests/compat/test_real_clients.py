"""Real clients, unmodified, against ``nbiafs serve``: tcia_utils (every querying or downloading function of
``tcia_utils.nbia``, on v4) and the community v2 OAuth sequence, via ``run_tcia_utils.py``.

The first run builds the compat venv (about a minute, cached under ``~/.cache/nbiafs-compat``); the test is
skipped only when PyPI cannot be reached to build it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run_tcia_utils.py")
DEADLINE = 220.0  # seconds for the whole run, venv build included
EXIT_OFFLINE = 3

pytestmark = [pytest.mark.compat, pytest.mark.timeout(DEADLINE + 60)]


def test_real_clients_work_against_nbiafs_serve(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--workdir", str(tmp_path), "--timeout", str(DEADLINE)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DEADLINE + 30, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"run_tcia_utils.py did not finish in {DEADLINE + 30:.0f} s:\n{exc.stdout or ''}")
    if done.returncode == EXIT_OFFLINE:
        pytest.skip(f"PyPI is unreachable, so tcia_utils cannot be installed: {done.stderr.strip()[-300:]}")
    lines = done.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    report = f"{done.stdout}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0 and not failed, report
    assert lines and lines[-1].endswith(" skipped") and " 0 failed" in lines[-1], report
    passed = [line for line in lines if line.startswith("PASS")]
    assert any(line.startswith("PASS getSeriesList") for line in passed), report
    assert any(line.startswith("PASS v2oauth.token") for line in passed), report
