"""bench/sync/floor.py and lean_pass.py: the lean pass measures the same work as ours, and the
runner's order and ratios."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.processes import RESULT_MARKER
from bench.sync import lean_pass
from bench.sync.floor import (
    LEAN_AIOHTTP,
    LEAN_HTTPX,
    OURS,
    TOOLS,
    PassRun,
    Startup,
    report,
    round_order,
)
from fake_healthdock import FakeHealthDock, serve_in_thread
from mirror import Action, Resource, create_mirror_engine, record_write, upgrade
from tests.bench.sync.first_pass import fill_patients

API_KEY = "floor-api-key"

# HealthDock's timestamps: milliseconds, UTC or an offset (the fake writes "...Z").
timestamps = st.builds(
    lambda moment, zone: moment.isoformat(timespec="milliseconds") + zone,
    st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(9998, 12, 30)),
    st.sampled_from(["Z", "+05:30", "-03:00", "+00:00"]),
)
# What a JSON body decodes to: no lone surrogates.
decoded_text = st.characters(blacklist_categories=("Cs",))
ids_text = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
listed_patients = st.fixed_dictionaries(
    {
        "id": st.text(ids_text, min_size=1, max_size=20),
        "first_name": st.text(decoded_text, max_size=30),
        "last_name": st.one_of(st.none(), st.text(decoded_text, max_size=30)),
        "date_of_birth": st.dates().map(str),
        "phone": st.text(alphabet="+0123456789", max_size=14),
        "created_at": timestamps,
        "updated_at": timestamps,
    },
    optional={
        "abha_number": st.text(decoded_text, max_size=16),
        "tags": st.lists(st.integers(), max_size=3),
    },
)


@given(listed_patients)
def test_the_lean_pass_computes_the_mirrors_version_of_a_listed_patient(
    record: dict[str, Any],
) -> None:
    """Its version is written out again (it imports nothing of ours): held to the guard's."""
    expected = record_write(Resource.PATIENT, Action.UPDATE, record["updated_at"], record)
    assert lean_pass.version_of(record) == expected.version


def run_lean(base_url: str, database: str, client: str) -> dict[str, int]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        lean_pass.main(["--base-url", base_url, "--api-key", API_KEY, "--database", database,
                        "--client", client, "--concurrency", "4"])  # fmt: skip
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith(RESULT_MARKER))
    return dict(json.loads(line.removeprefix(RESULT_MARKER)))


@pytest.mark.parametrize("client", lean_pass.CLIENTS)
def test_a_lean_pass_over_a_mirror_ours_filled_finds_nothing_changed_until_a_patient_is(
    tmp_path: Path, client: str
) -> None:
    path = tmp_path / "mirror.db"
    engine = create_mirror_engine(f"sqlite:///{path}")
    upgrade(engine)
    fake = FakeHealthDock(seed=5, patients=230, api_key=API_KEY, rate_limit=None)
    with serve_in_thread(fake) as base_url:
        fill_patients(engine, base_url, API_KEY)
        engine.dispose()
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM listed_records WHERE record_id = 'PAT000007'")
        last_pass = 1

        assert run_lean(base_url, f"sqlite:///{path}", client) == {
            "pages": 3, "records": 230, "changed": 0}  # fmt: skip
        with sqlite3.connect(path) as db:
            marks = dict(db.execute("SELECT run_id, count(*) FROM listed_records GROUP BY 1"))
        assert marks == {last_pass: 230}  # every record marked, as a pass would

        fake.update_patient("PAT000042", {"phone": "+919800000042"})
        assert run_lean(base_url, f"sqlite:///{path}", client)["changed"] == 1


def test_rounds_put_each_pass_first_middle_and_last_in_turn() -> None:
    orders = [round_order(n) for n in range(2 * len(TOOLS))]
    for position in range(len(TOOLS)):
        at = [order[position] for order in orders]
        assert sorted(at) == sorted(TOOLS * 2)
    assert all(sorted(order) == sorted(TOOLS) for order in orders)


def test_the_report_gives_each_rounds_ratio_and_the_cost_per_record_after_start_up() -> None:
    cpu = {OURS: [10.0, 12.0, 9.0], LEAN_AIOHTTP: [4.0, 4.0, 3.0], LEAN_HTTPX: [5.0, 6.0, 6.0]}
    found: list[PassRun | Startup] = [
        PassRun("sqlite", 200_000, tool, n, seconds, 1.0, 200_000)
        for tool, values in cpu.items()
        for n, seconds in enumerate(values)
    ]
    found += [Startup("sqlite", OURS, 0.6), Startup("sqlite", LEAN_AIOHTTP, 0.2)]
    text = report(found, 200_000)
    # ours: median 10.0 CPU-s, 20,000 records/CPU-s, (10.0 - 0.6) / 200k = 47.0 µs.
    assert "| sqlite | ours | 10.00 | 20,000 | 0.60 | 47.0 |  |" in text
    # Round ratios 2.5, 3.0, 3.0: the median, not 10.0 / 4.0.
    assert "| sqlite | lean, aiohttp | 4.00 | 50,000 | 0.20 | 19.0 | 3.00x |" in text
    # No start-up measured: no cost per record after it.
    assert "| sqlite | lean, httpx | 6.00 | 33,333 |  |  | 2.00x |" in text
