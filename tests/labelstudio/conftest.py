"""Label Studio layer fixtures: nothing here may connect anywhere but loopback."""

from __future__ import annotations

import pytest

from tests.helpers import loopback_only


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A safety net: nothing in these tests may connect anywhere but loopback."""
    loopback_only(monkeypatch)
