"""The CI rule: under CI=true a test that cannot get its real services fails instead of skipping."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(what: str, why: str):
    """Fail under CI, skip locally."""
    msg = f"{what} is not available: {why}"
    if in_ci():
        pytest.fail(f"{msg}. CI must run against real services: run `bash scripts/test.sh`.", pytrace=False)
    pytest.skip(f"{msg} (run `bash scripts/test.sh`, or `bash scripts/services.sh start` and export its URLs)")
