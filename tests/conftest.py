"""Every core test runs with no AFS/channel/rank settings and an empty working
directory (``afs_isolated_env``, from afs-core's own pytest plugin)."""

from __future__ import annotations

from pathlib import Path

import afs_core


def pytest_report_header() -> str:
    return f"afs_core from {Path(afs_core.__file__).parent}"


def pytest_sessionstart(session) -> None:
    # Under tox the tests must exercise the installed wheel, not this source tree.
    import os

    import pytest

    if os.environ.get("TOX_ENV_NAME") and "site-packages" not in afs_core.__file__:
        raise pytest.UsageError(f"afs_core imported from the source tree: {afs_core.__file__}")
