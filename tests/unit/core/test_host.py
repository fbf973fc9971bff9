"""host: TURN addresses from the answers or the default route; Synapse's database."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_stack.base.paths import DEFAULT_SQLITE_PATH as SYNAPSE_SQLITE_PATH
from matrix_stack.core.host import Facts, gather_facts, synapse_has_database
from tests.unit.helpers import make_settings


def test_gather_facts_with_both_answers_uses_them() -> None:
    settings = make_settings(turn_listening_ip="10.0.0.7", turn_external_ip="198.51.100.7/10.0.0.7")

    assert gather_facts(settings) == Facts("10.0.0.7", "198.51.100.7/10.0.0.7")


@pytest.mark.parametrize(
    ("size", "expected"), [(None, None), (0, None), (4096, SYNAPSE_SQLITE_PATH)]
)
def test_synapse_has_database_only_when_the_file_holds_data(
    tmp_path: Path, size: int | None, expected: Path | None
) -> None:
    if size is not None:
        database = tmp_path / "var/lib/matrix-synapse/homeserver.db"
        database.parent.mkdir(parents=True)
        database.write_bytes(b"\0" * size)

    assert synapse_has_database(tmp_path) == expected
