"""Crash durability: SIGKILL the receiver under load, again and again; nothing acknowledged
may be lost (tests/reliability/crash_harness.py; the README's Reliability table runs it longer).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.reliability.crash_harness import run_crashes


def test_every_acknowledged_event_survives_repeated_sigkill(
    database_url: str, tmp_path: Path
) -> None:
    report = run_crashes(database_url, kills=10, workdir=tmp_path, seed=1)
    print(report.line())
    assert report.acknowledged > 100  # the kills happened under real load
    assert report.lost == 0, report.line()
    assert report.stored == report.acknowledged


def test_the_harness_catches_a_receiver_that_acknowledges_before_committing(
    database_url: str, tmp_path: Path
) -> None:
    broken = (sys.executable, "-m", "tests.reliability.ack_first_receiver")
    report = run_crashes(database_url, kills=3, workdir=tmp_path, seed=1, receiver=broken)
    print(report.line())
    assert report.acknowledged > 0
    assert report.lost > 0, "the harness missed events acknowledged but never committed"
