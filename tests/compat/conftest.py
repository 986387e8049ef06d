"""The ``compat`` marker: tests that run real third-party NBIA clients (in their own venv) against ``nbiafs
serve``. They run in the default suite and in CI; deselect them with ``-m "not compat"``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "compat: runs real NBIA clients (tcia_utils, a v2 OAuth client) in a venv"
    )
