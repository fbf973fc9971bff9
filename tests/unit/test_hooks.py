"""hooks: the maintainer-script entry point refuses anything but 'configure'."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_stack.base.errors import MatrixStackError, ValidationError
from matrix_stack.core import answers
from matrix_stack.core.answers import DATABASE_PASSWORD_QUESTION, debconf_from_yaml
from matrix_stack.core.settings import Settings, from_mapping
from matrix_stack.core.stack import read_stack, write_stack
from matrix_stack.hooks import (
    Configured,
    configure,
    main,
    run_configure,
    store_database_password,
    store_mail_password,
)
from tests.unit.helpers import BASE_STACK, Answers, FakeSystem, files_and_modes


@pytest.mark.parametrize("argv", [[], ["purge"], ["Configure"]])
def test_main_without_configure_or_remove_exits_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == "usage: matrix-stack hook configure|remove\n"


REMOTE = from_mapping({"server_name": "example.org", "database": "postgresql",
                       "database_host": "db.example.org"})
LOCAL = from_mapping({"server_name": "example.org"})


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

    monkeypatch.setattr("matrix_stack.hooks.configure",
                        lambda debconf, **options: Configured(LOCAL, []))
    monkeypatch.setattr("matrix_stack.features.bootstrap.bootstrap_admin", bootstrap_admin)
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

    element_settings: list[Settings] = []

    def postinst_lines(settings: Settings) -> list[str]:
        element_settings.append(settings)
        return ["Element 1.2.3 is already installed"]

    monkeypatch.setattr("matrix_stack.hooks.configure",
                        lambda debconf, **options: Configured(LOCAL, ["applied"]))
    monkeypatch.setattr("matrix_stack.features.bootstrap.bootstrap_admin", bootstrap_admin)
    monkeypatch.setattr("matrix_stack.features.element.install.postinst_lines", postinst_lines)
    debconf = Answers(SECRET_ANSWERS)

    assert run_configure(debconf) == 0

    assert created == [("admin", "admin-pw", "example.org")]
    assert element_settings == [LOCAL] and element_settings[0] is LOCAL  # not read again
    assert debconf.values[ADMIN_PASSWORD_QUESTION] == ""
    assert debconf.values[DATABASE_PASSWORD_QUESTION] == ""
    assert capsys.readouterr().err == (
        "matrix-stack: applied\n"
        "matrix-stack: created the administrator @admin:example.org\n"
        "matrix-stack: Element 1.2.3 is already installed\n"
    )


# --- a new remote PostgreSQL password: checked from a temporary file, swapped in on success ----

PASSFILE = "etc/matrix-stack/secrets/database.pgpass"
REMOTE_STACK = {**BASE_STACK, "database": "postgresql", "database_host": "db.example.org",
                "database_name": "synapse", "database_user": "synapse"}
REFUSAL = ("cannot use PostgreSQL database synapse on db.example.org:5432 as synapse: "
           'password authentication failed for user "synapse"')


class RemoteServer:
    """Checks a passfile as the remote server would: only 'right' gets in."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, settings: Settings, passfile: Path) -> str:
        self.seen.append((passfile.name, passfile.read_text(), passfile.stat().st_mode & 0o777))
        if passfile.read_text() != "*:*:*:*:right\n":
            raise MatrixStackError(REFUSAL)
        return "answers"


def remote_root(root: Path) -> Path:
    write_stack(REMOTE_STACK, root)
    passfile = root / PASSFILE
    passfile.parent.mkdir(parents=True)
    passfile.write_text("*:*:*:*:old\n")
    passfile.chmod(0o600)
    return root


def reconfigured(password: str) -> Answers:
    """The debconf answers of dpkg-reconfigure: registration changed, a new password."""
    return Answers({**debconf_from_yaml({**REMOTE_STACK, "registration": "token"}),
                    DATABASE_PASSWORD_QUESTION: password})


def test_configure_with_a_wrong_database_password_changes_nothing(tmp_path: Path) -> None:
    before = files_and_modes(remote_root(tmp_path))
    server = RemoteServer()
    debconf = reconfigured("wrong")

    with pytest.raises(MatrixStackError) as raised:
        configure(debconf, tmp_path, system=FakeSystem(), check_password=server)

    assert str(raised.value) == REFUSAL
    assert len(server.seen) == 1
    name, text, mode = server.seen[0]
    assert name.startswith(".database.pgpass.new-") and (text, mode) == ("*:*:*:*:wrong\n", 0o600)
    assert files_and_modes(tmp_path) == before
    assert debconf.values[DATABASE_PASSWORD_QUESTION] == ""


def test_configure_with_the_right_database_password_swaps_it_in(tmp_path: Path) -> None:
    remote_root(tmp_path)
    system = FakeSystem()

    configured = configure(reconfigured("right"), tmp_path, system=system,
                           check_password=RemoteServer())

    passfile = tmp_path / PASSFILE
    assert (passfile.read_text(), passfile.stat().st_mode & 0o777) == ("*:*:*:*:right\n", 0o600)
    assert sorted(path.name for path in passfile.parent.iterdir()) == [
        "database.pgpass", "registration_shared_secret", "turn_shared_secret",
    ]
    assert read_stack(tmp_path)["registration"] == "token"
    assert configured.settings.registration == "token"
    assert system.calls[0] == ("validate_synapse", "50-matrix-stack.yaml")


def test_configure_with_the_right_password_but_a_refused_apply_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    before = files_and_modes(remote_root(tmp_path))
    refusal = ValidationError("Synapse refuses the new configuration: bad")
    system = FakeSystem(refusals={"validate_synapse": refusal})

    with pytest.raises(ValidationError):
        configure(reconfigured("right"), tmp_path, system=system, check_password=RemoteServer())

    after = files_and_modes(tmp_path)
    assert after[PASSFILE] == (b"*:*:*:*:old\n", 0o600)
    assert after["etc/matrix-stack/stack.yaml"] == before["etc/matrix-stack/stack.yaml"]
    assert [name for name in after if ".database.pgpass.new-" in name] == []


RELAY = from_mapping({"server_name": "example.org", "mail": "relay",
                      "mail_relay_host": "smtp.example.org", "mail_relay_user": "matrix"})
MAIL_PASSWORD_FILE = "etc/matrix-stack/secrets/mail_relay_password"


def test_the_mail_password_is_stored_root_only_then_cleared_from_debconf(tmp_path: Path) -> None:
    debconf = Answers({answers.MAIL_PASSWORD_QUESTION: "relay pw"})
    store_mail_password(debconf, RELAY, tmp_path)

    assert debconf.values[answers.MAIL_PASSWORD_QUESTION] == ""
    stored = tmp_path / MAIL_PASSWORD_FILE
    assert (stored.read_text(), stored.stat().st_mode & 0o777) == ("relay pw\n", 0o600)
    # Reconfigured without a new password: the stored one is kept.
    store_mail_password(Answers({}), RELAY, tmp_path)
    assert stored.read_text() == "relay pw\n"


def test_a_relay_login_without_any_mail_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MatrixStackError, match="a password for the mail relay user matrix"):
        store_mail_password(Answers({}), RELAY, tmp_path)


def test_a_mail_password_answer_is_cleared_even_with_mail_off(tmp_path: Path) -> None:
    debconf = Answers({answers.MAIL_PASSWORD_QUESTION: "pw"})
    store_mail_password(debconf, LOCAL, tmp_path)

    assert debconf.values[answers.MAIL_PASSWORD_QUESTION] == ""
    assert not (tmp_path / MAIL_PASSWORD_FILE).exists()
