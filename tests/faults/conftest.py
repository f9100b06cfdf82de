"""The fault suite's report: each test adds a row; the table is printed after the run."""

from __future__ import annotations

import json
import os

import pytest

from tests.backend.conftest import _loopback_only, backend, blob_pipeline, embedded_redis  # noqa: F401

_ROWS: list[dict] = []


@pytest.fixture
def fault_report():
    """``fault_report(row)``: one line of the table (see ``tests.faults.harness.row``)."""

    def add(entry: dict) -> None:
        _ROWS.append(entry)
        print("FAULT", json.dumps(entry))
        path = os.environ.get("CLIPSAM_FAULT_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    return add


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _ROWS:
        return
    terminalreporter.section("fault injection: events and control-plane latency")
    terminalreporter.write_line(
        "fault | sent | acknowledged | stored | lost | /health max s | /webhook max s"
    )
    for r in _ROWS:
        terminalreporter.write_line(
            f"{r['fault']} | {r['sent']} | {r['acknowledged']} | {r['stored']} | {r['lost']}"
            f" | {r['health_max_s']} | {r['webhook_max_s']}"
        )
