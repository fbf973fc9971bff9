"""cli_users: user list's rows, its JSON printed as each page comes, and its table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from matrix_stack.cli.user_args import format_time
from matrix_stack.cli.users import format_table, print_json_list, user_row

ROWS = [
    {"user_id": "@alice:example.org", "admin": True, "deactivated": False,
     "created": "2026-11-27T00:00:00Z", "last_seen": None},
    {"user_id": "@bob:example.org", "admin": False, "deactivated": True,
     "created": None, "last_seen": "2026-11-28T10:00:00Z"},
    {"user_id": "@e\u00e9\\\"q:example.org", "admin": False, "deactivated": False,
     "created": None, "last_seen": None},
]


@pytest.mark.parametrize(
    "pages", [[], [[]], [ROWS[:1]], [ROWS], [ROWS[:2], [], ROWS[2:]]], ids=repr
)
def test_the_streamed_json_list_is_what_json_dumps_writes(
    pages: list[list[dict[str, Any]]],
) -> None:
    written: list[str] = []

    print_json_list(iter(pages), written.append)

    every_row = [row for page in pages for row in page]
    assert "".join(written) == json.dumps(every_row, indent=2) + "\n"


def test_each_page_is_written_before_the_next_is_asked_for() -> None:
    written: list[str] = []

    def pages() -> Iterator[list[dict[str, Any]]]:
        for row in ROWS:
            yield [row]
            assert json.dumps(row["user_id"]) in "".join(written)

    print_json_list(pages(), written.append)


@pytest.mark.parametrize("milliseconds", [0, 1, 999, 1000, 1795766819999, 4102444800000, -1500])
def test_format_time_is_the_utc_second_datetime_gives(milliseconds: int) -> None:
    import datetime

    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, tz=datetime.UTC)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%SZ") if milliseconds else None
    assert format_time(milliseconds) == expected


def test_a_row_has_the_documented_keys_and_times_in_utc() -> None:
    user = {"name": "@a:example.org", "admin": 1, "deactivated": 0,
            "creation_ts": 1795766819000, "last_seen_ts": None}

    assert user_row(user) == {"user_id": "@a:example.org", "admin": True, "deactivated": False,
                              "created": "2026-11-27T08:06:59Z", "last_seen": None}


def test_the_table_aligns_columns_under_a_header() -> None:
    assert format_table(ROWS[:2]).splitlines() == [
        "USER                ADMIN  DEACTIVATED  CREATED               LAST SEEN",
        "@alice:example.org  yes    no           2026-11-27T00:00:00Z  never",
        "@bob:example.org    no     yes          -                     2026-11-28T10:00:00Z",
    ]
