"""hooks: the maintainer-script entry point refuses anything but 'configure'."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_stack import answers
from matrix_stack.answers import DATABASE_PASSWORD_QUESTION
from matrix_stack.errors import MatrixStackError
from matrix_stack.hooks import main, run_configure, store_database_password
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


ADMIN_PASSWORD_QUESTION = "matrix-stack/admin-password"
SECRET_ANSWERS = {
    "matrix-stack/admin-user": "admin",
    ADMIN_PASSWORD_QUESTION: "admin-pw",
    DATABASE_PASSWORD_QUESTION: "db-pw",
}


@pytest.mark.parametrize(
    "failure",
    [MatrixStackError("apache2 refused the configuration"), RuntimeError("a bug"),
     OSError(28, "No space left on device"), KeyboardInterrupt()],
    ids=["ours", "bug", "os", "interrupted"],
)
def test_run_configure_forgets_the_passwords_whatever_stops_it(
    failure: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    def configure(debconf: answers.DebconfLike, **options: object) -> list[str]:
        raise failure

    monkeypatch.setattr("matrix_stack.hooks.configure", configure)
    debconf = Answers(SECRET_ANSWERS)

    if isinstance(failure, MatrixStackError):
        assert run_configure(debconf) == 1
    else:
        with pytest.raises(type(failure)):
            run_configure(debconf)

    assert debconf.values[ADMIN_PASSWORD_QUESTION] == ""
    assert debconf.values[DATABASE_PASSWORD_QUESTION] == ""


def test_run_configure_forgets_the_passwords_when_the_administrator_step_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def bootstrap_admin(name: str, password: str, server_name: str) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr("matrix_stack.hooks.configure", lambda debconf, **options: [])
    monkeypatch.setattr(answers, "read_stack", lambda: {"server_name": "example.org"})
    monkeypatch.setattr("matrix_stack.bootstrap.bootstrap_admin", bootstrap_admin)
    debconf = Answers(SECRET_ANSWERS)

    with pytest.raises(RuntimeError):
        run_configure(debconf)

    assert debconf.values[ADMIN_PASSWORD_QUESTION] == ""
    assert debconf.values[DATABASE_PASSWORD_QUESTION] == ""


def test_run_configure_creates_the_administrator_then_forgets_the_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    created: list[tuple[str, str, str]] = []

    def bootstrap_admin(name: str, password: str, server_name: str) -> str:
        created.append((name, password, server_name))
        return "created the administrator @admin:example.org"

    def postinst_lines() -> list[str]:
        return ["Element 1.2.3 is already installed"]

    monkeypatch.setattr("matrix_stack.hooks.configure", lambda debconf, **options: ["applied"])
    monkeypatch.setattr(answers, "read_stack", lambda: {"server_name": "example.org"})
    monkeypatch.setattr("matrix_stack.bootstrap.bootstrap_admin", bootstrap_admin)
    monkeypatch.setattr("matrix_stack.cli_element.postinst_lines", postinst_lines)
    debconf = Answers(SECRET_ANSWERS)

    assert run_configure(debconf) == 0

    assert created == [("admin", "admin-pw", "example.org")]
    assert debconf.values[ADMIN_PASSWORD_QUESTION] == ""
    assert debconf.values[DATABASE_PASSWORD_QUESTION] == ""
    assert capsys.readouterr().err == (
        "matrix-stack: applied\n"
        "matrix-stack: created the administrator @admin:example.org\n"
        "matrix-stack: Element 1.2.3 is already installed\n"
    )
