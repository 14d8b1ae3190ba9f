"""Pacing arithmetic, without a network: spread the budget, keep the reserve, never a 429."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.pacer import Pacer, RateLimit, read_rate_limit, retry_after


def test_one_request_alone_until_a_window_is_known() -> None:
    """Before any answer the budget is unknown: one request goes, the rest wait for its
    headers (None: ask again after the next answer), then are paced."""
    pacer = Pacer(reserve=0.2)
    assert [pacer.reserve_slot(now=100.0) for _ in range(3)] == [0.0, None, None]
    pacer.settle(RateLimit(limit=100, remaining=99, reset_at=160.0))
    assert pacer.reserve_slot(now=100.1) == 0.0
    assert pacer.reserve_slot(now=100.1) == pytest.approx(0.75, rel=0.05)


def test_one_request_alone_again_after_a_window_resets() -> None:
    pacer = Pacer(reserve=0.0)
    pacer.settle(RateLimit(limit=100, remaining=50, reset_at=110.0))
    assert pacer.reserve_slot(now=105.0) == 0.0  # in the known window
    assert pacer.reserve_slot(now=120.0) == 0.0  # the window reset: this one probes
    assert pacer.reserve_slot(now=120.0) is None
    # A late answer from the window that ended says nothing about the new one.
    pacer.settle(RateLimit(limit=100, remaining=40, reset_at=110.0))
    assert pacer.reserve_slot(now=120.0) is None
    pacer.settle(RateLimit(limit=100, remaining=99, reset_at=180.0))
    assert pacer.reserve_slot(now=120.1) == 0.0


def test_a_failed_probe_lets_another_request_probe() -> None:
    pacer = Pacer(reserve=0.0)
    assert pacer.reserve_slot(now=100.0) == 0.0
    pacer.settle(None, answered=False)  # a connection error, say
    assert pacer.reserve_slot(now=100.0) == 0.0
    assert pacer.reserve_slot(now=100.0) is None


def test_an_api_that_announces_no_budget_is_not_paced() -> None:
    """The probe's answer had no rate-limit headers: nothing is held back after it, until an
    answer announces a window again."""
    pacer = Pacer(reserve=0.2)
    assert pacer.reserve_slot(now=100.0) == 0.0
    pacer.settle(None)
    assert [pacer.reserve_slot(now=100.0) for _ in range(5)] == [0.0] * 5
    pacer.settle(RateLimit(limit=100, remaining=10, reset_at=110.0))
    # Paced again: 10 left less 5 in flight less the reserve of 20 is nothing of ours.
    assert pacer.reserve_slot(now=100.0) == pytest.approx(10.0)


def test_an_answer_without_headers_in_a_known_window_keeps_the_pacing() -> None:
    pacer = Pacer(reserve=0.0)
    pacer.settle(RateLimit(limit=100, remaining=10, reset_at=110.0))
    assert pacer.reserve_slot(now=100.0) == 0.0
    pacer.settle(None)  # a 5xx page, say: it need not carry the headers
    assert pacer.reserve_slot(now=100.0) == pytest.approx(1.0)


def test_a_spent_window_is_probed_by_one_request_when_the_next_begins() -> None:
    pacer = Pacer(reserve=0.2)
    pacer.settle(RateLimit(limit=100, remaining=20, reset_at=130.0))
    assert pacer.reserve_slot(now=100.0) == pytest.approx(30.0)
    assert pacer.reserve_slot(now=100.0) is None


def test_budget_is_spread_evenly_over_the_window() -> None:
    pacer = Pacer(reserve=0.2)
    pacer.settle(RateLimit(limit=100, remaining=100, reset_at=160.0))
    waits = [pacer.reserve_slot(now=100.0) for _ in range(4)]
    # 80 usable requests over 60 s: one every 0.75 s (approximately, as the budget shrinks).
    assert waits[0] == 0.0
    assert waits[1] == pytest.approx(0.75, rel=0.05)
    assert waits[3] == pytest.approx(2.25, rel=0.05)


def test_reserve_is_left_for_other_clients() -> None:
    pacer = Pacer(reserve=0.2)
    pacer.settle(RateLimit(limit=100, remaining=20, reset_at=130.0))
    # Only the reserve is left: wait for the next window.
    assert pacer.reserve_slot(now=100.0) == pytest.approx(30.0)


def test_requests_in_flight_count_against_the_budget() -> None:
    pacer = Pacer(reserve=0.2)
    pacer.settle(RateLimit(limit=100, remaining=30, reset_at=200.0))
    # 30 left, 20 of them reserved: ten may go before any of them is answered...
    waits = [pacer.reserve_slot(now=100.0) for _ in range(10)]
    assert None not in waits
    assert max(wait or 0.0 for wait in waits) < 100.0
    # ...and the eleventh waits for the next window.
    assert pacer.reserve_slot(now=100.0) == pytest.approx(100.0)


def test_a_late_answer_does_not_bring_back_spent_budget() -> None:
    pacer = Pacer(reserve=0.0)
    pacer.settle(RateLimit(limit=100, remaining=1, reset_at=200.0))
    pacer.settle(RateLimit(limit=100, remaining=90, reset_at=200.0))  # served earlier
    pacer.reserve_slot(now=100.0)
    assert pacer.reserve_slot(now=100.0) == pytest.approx(100.0)


def test_pause_after_429_delays_every_slot() -> None:
    pacer = Pacer(reserve=0.0)
    pacer.pause_until(105.0)
    assert pacer.reserve_slot(now=100.0) == pytest.approx(5.0)


def test_headers_are_read_leniently() -> None:
    headers = {
        "x-ratelimit-limit": "1000",
        "x-ratelimit-remaining": "750",
        "x-ratelimit-reset": "1642089600",
    }
    assert read_rate_limit(headers) == RateLimit(1000, 750, 1642089600.0)
    assert read_rate_limit({"x-ratelimit-limit": "many"}) is None
    assert retry_after({"retry-after": "7"}, now=0) == 7.0
    assert retry_after(headers, now=1642089590.0) == 10.0
    assert retry_after({}, now=0) is None


@given(
    limit=st.integers(5, 500),
    window=st.integers(1, 120),
    reserve=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
    requests=st.integers(1, 600),
)
def test_simulated_fixed_window_server_never_answers_429(
    limit: int, window: int, reserve: float, requests: int
) -> None:
    """Drive the pacer against a fixed-window limiter like HealthDock's, one request at a time."""
    pacer = Pacer(reserve=reserve)
    now = 1000.0
    window_start, used = now, 0
    per_window: dict[float, int] = {}
    for _ in range(requests):
        delay = pacer.reserve_slot(now)
        assert delay is not None, "every answer was settled: the budget is known"
        now += delay
        while now >= window_start + window:
            window_start, used = window_start + window, 0
        used += 1
        assert used <= limit, "the server would answer 429"
        per_window[window_start] = used
        pacer.settle(RateLimit(limit, limit - used, window_start + window))
        now += 0.001  # the response takes a moment
    # Ours stays within our share of each window (one unpaced request may open a window).
    assert max(per_window.values()) <= max(1, limit - int(reserve * limit)) + 1
