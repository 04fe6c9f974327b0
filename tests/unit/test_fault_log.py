"""A repeated fault is logged once per interval with a count, never with a traceback."""

from __future__ import annotations

import logging

import pytest

from sidecar.fault_log import FaultLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_fault_repeated_within_the_interval_is_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    faults = FaultLog(logging.getLogger("test.faults"), interval=60, clock=clock)
    with caplog.at_level(logging.WARNING, "test.faults"):
        for _ in range(20):
            faults.log("disk", logging.ERROR, "spool write failed: %s", "disk full")
            clock.now += 1
        assert [r.getMessage() for r in caplog.records] == ["spool write failed: disk full"]
        clock.now += 60
        faults.log("disk", logging.ERROR, "spool write failed: %s", "disk full")
        faults.log("other", logging.WARNING, "another fault")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[1] == "spool write failed: disk full (and 19 more times in the last 80s)"
    assert messages[2] == "another fault"
    assert all(r.exc_info is None for r in caplog.records)
