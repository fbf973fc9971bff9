"""hooks: the maintainer-script entry point refuses anything but 'configure'."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_stack.answers import DATABASE_PASSWORD_QUESTION
from matrix_stack.errors import MatrixStackError
from matrix_stack.hooks import main, store_database_password
from matrix_stack.settings import from_mapping


@pytest.mark.parametrize("argv", [[], ["remove"], ["Configure"]])
def test_main_without_configure_exits_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == "usage: matrix-stack hook configure\n"


class Answers:
    """A debconf database in a dict, remembering what was set."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)

    def get(self, question: str) -> str:
        return self.values.get(question, "")

    def set(self, question: str, value: str) -> None:
        self.values[question] = value


REMOTE = from_mapping({"server_name": "example.org", "database": "postgresql",
                       "database_host": "db.example.org"})


def test_the_database_password_is_stored_then_cleared_from_debconf(tmp_path: Path) -> None:
    debconf = Answers({DATABASE_PASSWORD_QUESTION: "pw"})
    store_database_password(debconf, REMOTE, tmp_path)
    assert debconf.values[DATABASE_PASSWORD_QUESTION] == ""
    assert (tmp_path / "etc/matrix-stack/secrets/database.pgpass").read_text() == "*:*:*:*:pw\n"
    # Reconfigured without a new password: the stored one is kept.
    store_database_password(Answers({}), REMOTE, tmp_path)
    assert (tmp_path / "etc/matrix-stack/secrets/database.pgpass").read_text() == "*:*:*:*:pw\n"


def test_a_remote_database_without_any_password_is_refused(tmp_path: Path) -> None:
    debconf = Answers({DATABASE_PASSWORD_QUESTION: ""})
    with pytest.raises(MatrixStackError, match="a password for PostgreSQL role matrix_synapse"):
        store_database_password(debconf, REMOTE, tmp_path)


def test_a_password_answer_is_cleared_even_for_a_local_database(tmp_path: Path) -> None:
    debconf = Answers({DATABASE_PASSWORD_QUESTION: "pw"})
    store_database_password(debconf, from_mapping({"server_name": "example.org"}), tmp_path)
    assert debconf.values[DATABASE_PASSWORD_QUESTION] == ""
    assert not (tmp_path / "etc/matrix-stack/secrets/database.pgpass").exists()
