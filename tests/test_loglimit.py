"""The log limiter: the first of a kind at once, then one count per quiet period."""

from __future__ import annotations

import logging

import pytest

from edge.loglimit import LogLimiter

LOG = logging.getLogger("test.loglimit")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_a_flood_of_two_kinds_costs_two_lines_each_per_quiet_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOG.name)
    limiter = LogLimiter(LOG, quiet_s=10.0)
    for i in range(4932):  # one second of alternating bad frames
        kind = "garbage" if i % 2 else "truncated"
        limiter.note(kind, f"bad frame {i} ({kind})", 100.0 + i / 4932)
    assert len(_lines(caplog)) == 2  # the first of each, at once
    limiter.tick(109.9)
    assert len(_lines(caplog)) == 2  # still quiet
    limiter.tick(110.01)  # both periods (from 100.0 and 100.0002) have ended
    lines = _lines(caplog)
    assert len(lines) == 4 and limiter.lines == 4 and limiter.suppressed == 4930
    assert "2465 more truncated in 10.0 s (last: bad frame 4930 (truncated))" in lines
    assert "2465 more garbage in 10.0 s (last: bad frame 4931 (garbage))" in lines


def test_after_a_quiet_period_the_next_one_is_said_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    limiter = LogLimiter(LOG, quiet_s=5.0, level=logging.INFO)
    assert limiter.note("bad", "one", 0.0)
    assert not limiter.note("bad", "two", 1.0)
    assert limiter.note("bad", "three", 6.0)  # the period ended: its count, then this one
    assert _lines(caplog) == ["one", "1 more bad in 5.0 s (last: two)", "three"]
    limiter.tick(20.0)  # nothing was suppressed after "three": no summary line
    assert len(_lines(caplog)) == 3


def test_flush_says_what_is_left_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOG.name)
    limiter = LogLimiter(LOG, quiet_s=10.0)
    limiter.note("bad", "first", 0.0)
    limiter.note("bad", "second", 0.5)
    limiter.note("bad", "third", 2.0)
    limiter.flush(3.0)
    assert _lines(caplog) == ["first", "2 more bad in 3.0 s (last: third)"]


def test_a_quiet_period_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="quiet_s must be > 0"):
            LogLimiter(LOG, quiet_s=bad)
