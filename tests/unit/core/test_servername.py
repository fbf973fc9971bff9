"""servername: the name is fixed once the database Synapse uses (SQLite or PostgreSQL) has data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import SERVER_NAME_PATH
from matrix_stack.core import postgres
from matrix_stack.core.servername import ensure_server_name
from matrix_stack.core.settings import Settings
from tests.unit.core.test_postgres import LIVE, SQLITE, FakePsql, synapse_sqlite
from tests.unit.helpers import make_settings

OLD = "old.example.org"
REFUSED = (
    "the server name cannot change from old.example.org to matrix.example.org: Synapse's "
    "database {database} holds users and rooms of old.example.org; keep old.example.org, or "
    "start afresh by moving that database away"
)


def synapse_on_postgresql(root: Path, settings: Settings) -> None:
    """Leave Synapse named OLD and running on the PostgreSQL database settings name."""
    (root / LIVE).parent.mkdir(parents=True)
    (root / LIVE).write_text(yaml.safe_dump(
        {"database": postgres.synapse_database_block(settings)}))
    (root / SERVER_NAME_PATH.relative_to("/")).write_text(f"server_name: {OLD}\n")


def test_ensure_server_name_refuses_a_new_name_once_local_postgresql_holds_users(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, database="postgresql")
    synapse_on_postgresql(tmp_path, settings)
    psql = FakePsql(database=True, data=True)

    with pytest.raises(MatrixStackError) as caught:
        ensure_server_name(settings, tmp_path, runner=psql)

    assert str(caught.value) == REFUSED.format(database="PostgreSQL database matrix_synapse")
    assert psql.statements[-1] == (
        "SELECT (EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM rooms) "
        "OR EXISTS (SELECT 1 FROM events))::int"
    )
    assert (tmp_path / SERVER_NAME_PATH.relative_to("/")).read_text() == f"server_name: {OLD}\n"


@pytest.mark.parametrize("psql", [
    FakePsql(database=False), FakePsql(database=True, schema=False), FakePsql(database=True)
], ids=["no-database", "no-schema", "no-rows"])
def test_ensure_server_name_on_postgresql_without_data_writes_the_new_name(
    tmp_path: Path, psql: FakePsql
) -> None:
    settings = make_settings(tmp_path, database="postgresql")
    synapse_on_postgresql(tmp_path, settings)
    synapse_sqlite(tmp_path / SQLITE, users=1)  # an old SQLite file Synapse no longer reads

    assert ensure_server_name(settings, tmp_path, runner=psql) is True
    assert (tmp_path / SERVER_NAME_PATH.relative_to("/")).read_text() == (
        "server_name: matrix.example.org\n"
    )


def test_ensure_server_name_on_local_postgresql_that_cannot_be_asked_says_so(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, database="postgresql")
    synapse_on_postgresql(tmp_path, settings)

    with pytest.raises(MatrixStackError) as caught:
        ensure_server_name(settings, tmp_path, runner=FakePsql(up=False))

    assert str(caught.value) == (
        f"cannot tell whether PostgreSQL database matrix_synapse holds users and rooms of {OLD} "
        "(psql: error: connection to server failed): start PostgreSQL and try again"
    )


def test_ensure_server_name_refuses_a_new_name_once_remote_postgresql_holds_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, database="postgresql", database_host="db.example.org",
                             database_name="synapse")
    synapse_on_postgresql(tmp_path, settings)
    asked: list[tuple[str, str]] = []

    def remote_query(settings: Settings, statement: str) -> list[list[Any]]:
        asked.append((settings.database_host, statement))
        return [["3"]] if "table_name IN" in statement else [["1"]]

    monkeypatch.setattr(postgres, "remote_query", remote_query)

    with pytest.raises(MatrixStackError) as caught:
        ensure_server_name(settings, tmp_path, runner=FakePsql(up=False))

    assert str(caught.value) == REFUSED.format(
        database="PostgreSQL database synapse on db.example.org:5432")
    assert [host for host, _statement in asked] == ["db.example.org"] * 2
