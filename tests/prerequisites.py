"""What a test needs from the machine (the shared images, Chromium, a tmpfs mount): a skip where it is missing,
a failure under CI (``CI=true``), so that a green CI run means every test ran."""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    """True when the environment says CI (``CI=true``, as GitHub Actions and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require(condition: bool, reason: str) -> None:
    """Go on when ``condition`` holds; otherwise fail the test under CI, or skip it with ``reason``."""
    __tracebackhide__ = True  # pytest reports the skip or failure at the caller's line
    if condition:
        return
    if under_ci():
        pytest.fail(f"missing prerequisite under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
