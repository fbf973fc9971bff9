"""Parsing --expires and showing registration tokens."""

from __future__ import annotations

import datetime

import pytest

from matrix_stack.base.errors import UsageError
from matrix_stack.cli.tokens import _rows, parse_expiry

NOW = datetime.datetime(2026, 11, 27, 10, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", datetime.datetime(2026, 11, 27, 10, 30, tzinfo=datetime.UTC)),
        ("12h", datetime.datetime(2026, 11, 27, 22, 0, tzinfo=datetime.UTC)),
        ("7d", datetime.datetime(2026, 12, 4, 10, 0, tzinfo=datetime.UTC)),
        ("2w", datetime.datetime(2026, 12, 11, 10, 0, tzinfo=datetime.UTC)),
        ("2026-12-31", datetime.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC)),
        ("2026-12-01T08:00:00+01:00",
         datetime.datetime(2026, 12, 1, 7, 0, tzinfo=datetime.UTC)),
        ("2026-12-01T08:00", datetime.datetime(2026, 12, 1, 8, 0, tzinfo=datetime.UTC)),
    ],
)
def test_parse_expiry_reads_dates_times_and_durations(
    text: str, expected: datetime.datetime
) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize("text", ["tomorrow", "7 days", "-1d", "2026-13-01", "2026-11-26"])
def test_parse_expiry_refuses_garbage_and_the_past(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--expires "):
        parse_expiry(text, NOW)


def test_token_rows_count_pending_and_completed_uses() -> None:
    rows = _rows([
        {"token": "abc", "uses_allowed": 3, "pending": 1, "completed": 1,
         "expiry_time": 1_800_000_000_000},
        {"token": "def", "uses_allowed": None, "pending": 0, "completed": 5, "expiry_time": None},
    ])

    assert rows == [
        {"token": "abc", "uses_allowed": 3, "uses_left": 1, "completed": 1,
         "expires": "2027-01-15T08:00:00Z"},
        {"token": "def", "uses_allowed": None, "uses_left": None, "completed": 5,
         "expires": None},
    ]
