"""apply: render, validate, write with ucf, into a temporary root.

With root != "/" apply enables no Apache part and restarts nothing; it still writes
server_name.yaml, the secrets, the self-signed certificate (real openssl) and registers
every file with the real ucf (state under the root). Synapse's check is passed in.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from matrix_stack.base.errors import MatrixStackError, ValidationError
from matrix_stack.base.files import Outcome, Plan, UcfState, apply_plan, md5_text
from matrix_stack.base.paths import (
    APACHE_SITE_PATH,
    ELEMENT_CONFIG_PATH,
    GENERATED_FILES,
    PENDING_RESTARTS_PATH,
    SERVER_NAME_PATH,
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    WELL_KNOWN_DIR,
)
from matrix_stack.base.secrets import read_secrets, store_mail_password
from matrix_stack.core.apply import Report, apply, check_mail_password, diff
from matrix_stack.core.host import Facts
from matrix_stack.core.render import (
    render_all,
)
from matrix_stack.core.servername import ensure_server_name
from matrix_stack.core.tls import SELF_SIGNED_CERT_PATH, SELF_SIGNED_KEY_PATH, certificate_names
from tests.unit.helpers import (
    LISTENING_IP,
    SERVER_NAME,
    AppliedRoot,
    FakeSystem,
    SynapseCheck,
    files_and_modes,
    make_settings,
    needs_root_for_ucf,
    snapshot,
)

GENERATED = list(GENERATED_FILES)
UCF_STATE = "var/lib/ucf"


def on_disk(root: Path, path: Path) -> Path:
    return root / str(path).lstrip("/")


def outcomes(report: Report) -> dict[Path, Outcome]:
    return {plan.spec.path: plan.outcome for plan in report.plans}


def generated_files(root: Path) -> dict[str, bytes]:
    return {str(path): on_disk(root, path).read_bytes() for path in GENERATED}


# --- first and second run -----------------------------------------------------------------


def test_apply_first_run_creates_every_file_and_reports_each(
    applied_root_template: AppliedRoot,
) -> None:
    report = applied_root_template.report

    assert outcomes(report) == {path: Outcome.CREATED for path in GENERATED}
    assert report.lines() == [f"created {path}" for path in GENERATED]
    assert report.actions == []


def test_apply_first_run_writes_the_rendered_text_with_each_mode(
    applied_root_template: AppliedRoot,
) -> None:
    root = applied_root_template.root
    settings = make_settings(root)
    facts = Facts(listening_ip=LISTENING_IP, external_ip=LISTENING_IP)

    for spec in render_all(settings, read_secrets(root), facts):
        path = on_disk(root, spec.path)
        assert path.read_text() == spec.text
        assert path.stat().st_mode & 0o777 == spec.mode


def test_apply_first_run_validates_synapse_once_with_the_new_text(
    applied_root_template: AppliedRoot,
) -> None:
    root = applied_root_template.root

    assert applied_root_template.synapse_calls == (
        (on_disk(root, SYNAPSE_CONF_PATH).read_text(), "50-matrix-stack.yaml"),
    )


def test_apply_first_run_makes_name_secrets_certificate_and_element_placeholder(
    applied_root_template: AppliedRoot,
) -> None:
    root = applied_root_template.root

    assert on_disk(root, SERVER_NAME_PATH).read_text() == f"server_name: {SERVER_NAME}\n"
    assert (root / "etc/matrix-stack/secrets/registration_shared_secret").stat().st_size > 0
    assert certificate_names(root / "etc/matrix-stack/tls/self-signed.crt") == {
        SERVER_NAME,
        f"element.{SERVER_NAME}",
    }
    assert (root / "etc/matrix-stack/tls/self-signed.key").stat().st_mode & 0o777 == 0o640
    assert (root / "var/lib/matrix-stack/element/current").readlink() == Path(
        "/usr/share/matrix-stack/element-placeholder"
    )


@needs_root_for_ucf
def test_apply_first_run_registers_every_file_with_ucf(
    applied_root_template: AppliedRoot,
) -> None:
    root = applied_root_template.root
    state = UcfState(root)

    for path in GENERATED:
        assert state.registered_md5(path) == md5_text(on_disk(root, path).read_text())
    registry = (root / UCF_STATE / "registry").read_text().splitlines()
    assert sorted(registry) == sorted(
        f"matrix-stack \t {on_disk(root, path)}" for path in GENERATED
    )


def test_apply_second_run_changes_nothing_and_validates_nothing(
    applied_root: Path, synapse_check: SynapseCheck
) -> None:
    before = snapshot(applied_root)

    report = apply(make_settings(applied_root), root=applied_root, validate_synapse=synapse_check)

    assert outcomes(report) == {path: Outcome.UNCHANGED for path in GENERATED}
    assert report.lines() == []
    assert synapse_check.calls == []
    assert snapshot(applied_root) == before


# --- changes ------------------------------------------------------------------------------


@needs_root_for_ucf
def test_apply_with_changed_registration_updates_only_synapse_and_element_config(
    applied_root: Path, synapse_check: SynapseCheck
) -> None:
    before = generated_files(applied_root)
    settings = make_settings(applied_root, registration="token")

    report = apply(settings, root=applied_root, validate_synapse=synapse_check)

    changed = {SYNAPSE_CONF_PATH, ELEMENT_CONFIG_PATH}
    assert outcomes(report) == {
        path: Outcome.UPDATED if path in changed else Outcome.UNCHANGED for path in GENERATED
    }
    assert report.lines() == [f"updated {SYNAPSE_CONF_PATH}", f"updated {ELEMENT_CONFIG_PATH}"]
    new_synapse = on_disk(applied_root, SYNAPSE_CONF_PATH).read_text()
    assert yaml.safe_load(new_synapse)["registration_requires_token"] is True
    assert synapse_check.calls == [(new_synapse, "50-matrix-stack.yaml")]
    after = generated_files(applied_root)
    assert {path for path in after if after[path] != before[path]} == {str(p) for p in changed}
    assert UcfState(applied_root).registered_md5(SYNAPSE_CONF_PATH) == md5_text(new_synapse)


def test_apply_without_synapse_change_does_not_validate_synapse(
    applied_root: Path, synapse_check: SynapseCheck
) -> None:
    settings = make_settings(applied_root, turn_external_ip="198.51.100.7/203.0.113.10")

    report = apply(settings, root=applied_root, validate_synapse=synapse_check)

    assert report.lines() == [f"updated {TURNSERVER_CONF_PATH}"]
    assert synapse_check.calls == []


def test_apply_when_synapse_refuses_keeps_every_previous_file_and_raises(
    applied_root: Path, synapse_check: SynapseCheck
) -> None:
    before = snapshot(applied_root / "etc")
    ucf_before = snapshot(applied_root / UCF_STATE)
    synapse_check.refusal = ValidationError("Synapse refuses the new configuration: bad")

    with pytest.raises(ValidationError, match="Synapse refuses the new configuration: bad"):
        apply(
            make_settings(applied_root, federation="open"),
            root=applied_root,
            validate_synapse=synapse_check,
        )

    assert len(synapse_check.calls) == 1
    assert snapshot(applied_root / "etc") == before
    assert snapshot(applied_root / UCF_STATE) == ucf_before


def test_apply_first_run_when_synapse_refuses_writes_no_generated_file(
    tmp_path: Path, synapse_check: SynapseCheck
) -> None:
    synapse_check.refusal = ValidationError("Synapse refuses the new configuration: bad")

    with pytest.raises(ValidationError):
        apply(make_settings(tmp_path), root=tmp_path, validate_synapse=synapse_check)

    assert [path for path in GENERATED if on_disk(tmp_path, path).exists()] == []
    assert not (tmp_path / UCF_STATE).exists()


def test_apply_when_the_database_check_refuses_writes_nothing_at_all(
    tmp_path: Path, synapse_check: SynapseCheck
) -> None:
    system = FakeSystem(
        refusals={"prepare_database": MatrixStackError("no PostgreSQL server runs on this host")})
    settings = make_settings(tmp_path)
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(MatrixStackError, match="no PostgreSQL"):
        apply(settings, root=tmp_path, validate_synapse=synapse_check, system=system)

    assert system.calls == [("prepare_database",)]

    assert sorted(tmp_path.rglob("*")) == before


# --- dry run ------------------------------------------------------------------------------


def test_apply_dry_run_creates_nothing_and_plans_every_file(
    tmp_path: Path, synapse_check: SynapseCheck
) -> None:
    report = apply(
        make_settings(tmp_path), root=tmp_path, dry_run=True, validate_synapse=synapse_check
    )

    assert list(tmp_path.iterdir()) == []
    assert outcomes(report) == {path: Outcome.CREATED for path in GENERATED}
    assert synapse_check.calls == []


def test_diff_of_first_dry_run_shows_new_files_with_secret_masked(tmp_path: Path) -> None:
    report = apply(make_settings(tmp_path), root=tmp_path, dry_run=True)

    text = diff(report.plans)

    assert f"--- /dev/null\n+++ {TURNSERVER_CONF_PATH}\n" in text
    assert "+static-auth-secret=***\n" in text
    assert "(generated by the first apply)" not in text


def test_diff_of_dry_run_masks_the_real_turn_secret(applied_root: Path) -> None:
    secret = read_secrets(applied_root).turn_shared_secret
    before = snapshot(applied_root)

    report = apply(
        make_settings(applied_root, turn_domain="turn.example.org"),
        root=applied_root,
        dry_run=True,
    )
    text = diff(report.plans)

    assert snapshot(applied_root) == before
    assert secret not in text
    assert f"--- {TURNSERVER_CONF_PATH}\n+++ {TURNSERVER_CONF_PATH}\n" in text
    assert (
        " static-auth-secret=***\n"
        "-realm=matrix.example.org\n"
        "-server-name=matrix.example.org\n"
        "+realm=turn.example.org\n"
        "+server-name=turn.example.org\n"
    ) in text


def test_diff_of_unchanged_files_is_empty(applied_root: Path) -> None:
    report = apply(make_settings(applied_root), root=applied_root, dry_run=True)

    assert diff(report.plans) == ""


# --- the admin's edits --------------------------------------------------------------------


@needs_root_for_ucf
def test_apply_keeps_admin_edited_file_and_reports_the_ucf_dist(
    applied_root: Path, synapse_check: SynapseCheck
) -> None:
    element_config = on_disk(applied_root, ELEMENT_CONFIG_PATH)
    element_config.write_text('{"mine": true}\n')

    report = apply(
        make_settings(applied_root, registration="token"),
        root=applied_root,
        validate_synapse=synapse_check,
    )

    assert outcomes(report)[ELEMENT_CONFIG_PATH] is Outcome.KEPT_LOCAL
    assert element_config.read_text() == '{"mine": true}\n'
    dist = element_config.with_name("config.json.ucf-dist")
    assert '"UIFeature.registration": true' in dist.read_text()
    assert report.lines() == [
        f"updated {SYNAPSE_CONF_PATH}",
        f"kept your edited {ELEMENT_CONFIG_PATH}; the new version is in "
        f"{ELEMENT_CONFIG_PATH}.ucf-dist (compare, merge, then delete it)",
    ]


@needs_root_for_ucf
def test_diff_of_admin_edited_file_compares_with_the_ucf_dist(applied_root: Path) -> None:
    on_disk(applied_root, ELEMENT_CONFIG_PATH).write_text('{"mine": true}\n')

    report = apply(make_settings(applied_root), root=applied_root, dry_run=True)

    assert diff(report.plans).startswith(
        f"--- {ELEMENT_CONFIG_PATH}\n+++ {ELEMENT_CONFIG_PATH}.ucf-dist\n"
    )


@needs_root_for_ucf
def test_apply_does_not_recreate_a_file_the_admin_deleted(
    applied_root: Path, synapse_check: SynapseCheck
) -> None:
    client = WELL_KNOWN_DIR / "matrix" / "client"
    on_disk(applied_root, client).unlink()

    report = apply(make_settings(applied_root), root=applied_root, validate_synapse=synapse_check)

    assert outcomes(report)[client] is Outcome.KEPT_DELETED
    assert not on_disk(applied_root, client).exists()
    assert report.lines() == [f"{client} was deleted by you: not recreated"]
    dry_run = apply(make_settings(applied_root), root=applied_root, dry_run=True)
    assert diff(dry_run.plans) == ""


# --- the server name ----------------------------------------------------------------------


def write_synapse_state(root: Path, name: str, database: bytes) -> None:
    server_name = on_disk(root, SERVER_NAME_PATH)
    server_name.parent.mkdir(parents=True, exist_ok=True)
    server_name.write_text(f"server_name: {name}\n")
    database_path = root / "var/lib/matrix-synapse/homeserver.db"
    database_path.parent.mkdir(parents=True, exist_ok=True)
    database_path.write_bytes(database)


def test_ensure_server_name_refuses_a_new_name_once_synapse_has_a_database(
    tmp_path: Path,
) -> None:
    write_synapse_state(tmp_path, "old.example.org", b"SQLite format 3\x00")

    with pytest.raises(MatrixStackError) as caught:
        ensure_server_name(make_settings(tmp_path), tmp_path)

    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "the server name cannot change from old.example.org to matrix.example.org: Synapse's "
        "database /var/lib/matrix-synapse/homeserver.db holds users and rooms of "
        "old.example.org; keep old.example.org, or start afresh by moving that database away"
    )
    assert on_disk(tmp_path, SERVER_NAME_PATH).read_text() == "server_name: old.example.org\n"


def test_apply_with_a_new_name_and_a_database_writes_nothing(
    tmp_path: Path, synapse_check: SynapseCheck
) -> None:
    write_synapse_state(tmp_path, "old.example.org", b"SQLite format 3\x00")
    before = snapshot(tmp_path)

    with pytest.raises(MatrixStackError, match="database"):
        apply(make_settings(tmp_path), root=tmp_path, validate_synapse=synapse_check)

    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("database", [None, b""], ids=["no-database", "empty-database"])
def test_ensure_server_name_without_data_writes_the_new_name_and_sets_synapse_answer(
    tmp_path: Path, database: bytes | None
) -> None:
    write_synapse_state(tmp_path, "old.example.org", database or b"")
    if database is None:
        (tmp_path / "var/lib/matrix-synapse/homeserver.db").unlink()
    answers: list[str] = []

    written = ensure_server_name(make_settings(tmp_path), tmp_path, answers.append)

    assert written is True
    assert answers == [SERVER_NAME]
    assert on_disk(tmp_path, SERVER_NAME_PATH).read_text() == f"server_name: {SERVER_NAME}\n"


def test_ensure_server_name_with_the_same_name_writes_nothing(tmp_path: Path) -> None:
    write_synapse_state(tmp_path, "Matrix.Example.Org", b"SQLite format 3\x00")
    before = snapshot(tmp_path)
    answers: list[str] = []

    assert ensure_server_name(make_settings(tmp_path), tmp_path, answers.append) is False
    assert answers == []
    assert snapshot(tmp_path) == before


# --- one transaction: every failure puts every file back --------------------------------------

# Changes Synapse's, coturn's and Apache's files, and the certificate (it names the TURN domain).
NEW_TURN_DOMAIN = {"turn_domain": "turn.example.org"}
CHANGED = [
    SYNAPSE_CONF_PATH, TURNSERVER_CONF_PATH, APACHE_SITE_PATH, SELF_SIGNED_CERT_PATH,
    SELF_SIGNED_KEY_PATH,
]
PENDING = PENDING_RESTARTS_PATH
RESTART_ALL = ("restart", "matrix-synapse", "coturn", "apache2")
VALIDATE_SYNAPSE = ("validate_synapse", "50-matrix-stack.yaml")
BACK_AND_RESTARTED = (
    "every file is back as it was and matrix-synapse, coturn, apache2 were restarted on them"
)
# Failing before any restart: every unit still runs the old files; none is restarted (an
# Apache whose configuration broke meanwhile would not come back).
BACK = "every file is back as it was"


def apply_new_turn_domain(
    root: Path, system: FakeSystem, write_plan: Callable[[Plan, Path], None] = apply_plan
) -> Report:
    return apply(make_settings(root, **NEW_TURN_DOMAIN), root=root, system=system,
                 write_plan=write_plan)


def full_disk_at(
    path: Path, then: Callable[[Path], object] = lambda _root: None
) -> Callable[[Plan, Path], None]:
    """Return a write_plan that writes each file until path, where (after then) the disk is full."""

    def write_plan(plan: Plan, root: Path) -> None:
        if plan.spec.path == path:
            then(root)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        apply_plan(plan, root)

    return write_plan


def test_apply_records_the_units_before_writing_and_forgets_them_once_restarted(
    applied_root: Path,
) -> None:
    before = files_and_modes(applied_root)
    system = FakeSystem()
    pending_at_writes: list[tuple[str, int]] = []

    def write_plan(plan: Plan, root: Path) -> None:
        pending = on_disk(root, PENDING)
        pending_at_writes.append((pending.read_text(), pending.stat().st_mode & 0o777))
        apply_plan(plan, root)

    report = apply_new_turn_domain(applied_root, system, write_plan)

    assert set(pending_at_writes) == {("matrix-synapse\ncoturn\napache2\n", 0o600)}
    assert system.calls == [
        VALIDATE_SYNAPSE, ("enable_apache",), ("validate_apache",), RESTART_ALL,
        ("set_turn_service", "True"), ("set_backup_timer", "False"),
    ]
    assert report.actions == ["restart matrix-synapse", "restart coturn", "restart apache2"]
    after = files_and_modes(applied_root)
    changed = {name for name in after if after[name] != before.get(name)}
    assert {name for name in changed if not name.startswith(UCF_STATE)} == {
        str(path).lstrip("/") for path in CHANGED
    }
    assert not on_disk(applied_root, PENDING).exists()


def test_apply_refused_by_synapse_writes_nothing_and_restarts_nothing(applied_root: Path) -> None:
    before = snapshot(applied_root)
    refusal = ValidationError("Synapse refuses the new configuration: bad")
    system = FakeSystem(refusals={"validate_synapse": refusal})

    with pytest.raises(ValidationError) as raised:
        apply_new_turn_domain(applied_root, system)

    assert str(raised.value) == "Synapse refuses the new configuration: bad"
    assert system.calls == [VALIDATE_SYNAPSE]
    assert snapshot(applied_root) == before


def test_apply_refused_by_apache_puts_every_file_back_and_restarts_nothing(
    applied_root: Path,
) -> None:
    before = files_and_modes(applied_root)
    refusal = ValidationError("Apache refuses the configuration: Syntax error on line 3")
    system = FakeSystem(refusals={"validate_apache": refusal})

    with pytest.raises(ValidationError) as raised:
        apply_new_turn_domain(applied_root, system)

    assert str(raised.value) == (
        f"Apache refuses the configuration: Syntax error on line 3: {BACK}"
    )
    assert system.calls == [VALIDATE_SYNAPSE, ("enable_apache",), ("validate_apache",)]
    assert files_and_modes(applied_root) == before


def test_apply_with_a_full_disk_half_way_puts_every_written_file_back(applied_root: Path) -> None:
    before = files_and_modes(applied_root)
    system = FakeSystem()
    half_way: list[dict[str, tuple[bytes | str, int]]] = []
    write_plan = full_disk_at(APACHE_SITE_PATH, lambda root: half_way.append(files_and_modes(root)))

    with pytest.raises(MatrixStackError) as raised:
        apply_new_turn_domain(applied_root, system, write_plan)

    assert str(raised.value) == (
        f"cannot write {APACHE_SITE_PATH} (No space left on device): {BACK}"
    )
    written = {name for name in half_way[0] if half_way[0][name] != before.get(name)}
    assert written == {str(path).lstrip("/") for path in CHANGED if path != APACHE_SITE_PATH} | {
        str(PENDING).lstrip("/")
    }
    assert system.calls == [VALIDATE_SYNAPSE]
    assert files_and_modes(applied_root) == before


def test_apply_whose_restart_fails_puts_every_file_back_and_restarts_on_them(
    applied_root: Path,
) -> None:
    before = files_and_modes(applied_root)
    system = FakeSystem(failing=[{"coturn"}])

    with pytest.raises(MatrixStackError) as raised:
        apply_new_turn_domain(applied_root, system)

    assert str(raised.value) == (
        "coturn failed to start with the new configuration (see: journalctl -u coturn): "
        f"{BACK_AND_RESTARTED}"
    )
    assert system.calls == [
        VALIDATE_SYNAPSE, ("enable_apache",), ("validate_apache",), RESTART_ALL,
        ("set_turn_service", "True"), ("set_backup_timer", "False"), RESTART_ALL,
    ]
    assert files_and_modes(applied_root) == before


def test_apply_whose_unit_fails_on_the_old_files_too_says_so_and_keeps_it_pending(
    applied_root: Path,
) -> None:
    before = files_and_modes(applied_root)
    system = FakeSystem(failing=[{"coturn"}, {"coturn"}])

    with pytest.raises(MatrixStackError) as raised:
        apply_new_turn_domain(applied_root, system)

    assert str(raised.value) == (
        "coturn failed to start with the new configuration (see: journalctl -u coturn): "
        "every file is back as it was and matrix-synapse, apache2 were restarted on them; "
        "coturn did not start again (see: journalctl -u coturn)"
    )
    assert files_and_modes(applied_root) == {
        **before, str(PENDING).lstrip("/"): (b"coturn\n", 0o600)
    }


def test_apply_interrupted_between_write_and_restart_puts_every_file_back(
    applied_root: Path,
) -> None:
    before = files_and_modes(applied_root)
    system = FakeSystem(interrupt="enable_apache")

    with pytest.raises(MatrixStackError) as raised:
        apply_new_turn_domain(applied_root, system)

    assert str(raised.value) == f"apply interrupted: {BACK}"
    assert system.calls == [VALIDATE_SYNAPSE, ("enable_apache",)]
    assert files_and_modes(applied_root) == before


def test_apply_that_cannot_put_a_file_back_names_it_and_keeps_its_unit_pending(
    applied_root: Path,
) -> None:
    before = files_and_modes(applied_root)
    system = FakeSystem()

    def block_turnserver(root: Path) -> None:
        turnserver = on_disk(root, TURNSERVER_CONF_PATH)
        turnserver.unlink()
        turnserver.mkdir()  # what cannot be put back
        (turnserver / "x").touch()

    write_plan = full_disk_at(APACHE_SITE_PATH, block_turnserver)

    with pytest.raises(MatrixStackError) as raised:
        apply_new_turn_domain(applied_root, system, write_plan)

    assert str(raised.value) == (
        f"cannot write {APACHE_SITE_PATH} (No space left on device): could not put back "
        f"{TURNSERVER_CONF_PATH} (Is a directory); every other file is back as it was"
    )
    after = files_and_modes(applied_root)
    turnserver = str(TURNSERVER_CONF_PATH).lstrip("/")
    assert after.pop(str(PENDING).lstrip("/")) == (b"coturn\n", 0o600)
    after.pop(f"{turnserver}/x")
    assert after == {name: state for name, state in before.items() if name != turnserver}


def test_apply_in_a_maintainer_script_keeps_a_failed_unit_pending_for_the_next_apply(
    applied_root: Path,
) -> None:
    system = FakeSystem(failing=[{"coturn"}], maintainer_script=True)

    report = apply_new_turn_domain(applied_root, system)

    assert report.actions[-1] == "warning: coturn failed to start (see: journalctl -u coturn)"
    assert on_disk(applied_root, PENDING).read_text() == "coturn\n"
    system = FakeSystem()
    report = apply_new_turn_domain(applied_root, system)
    assert system.calls == [("restart", "coturn"), ("enable_apache",),
                            ("set_turn_service", "True"), ("set_backup_timer", "False")]
    assert report.actions == ["restart coturn (left pending by an interrupted apply)"]
    assert not on_disk(applied_root, PENDING).exists()


def test_apply_after_a_crash_first_restarts_what_the_crashed_apply_left_pending(
    applied_root: Path,
) -> None:
    def crash(plan: Plan, root: Path) -> None:
        if plan.spec.path == APACHE_SITE_PATH:
            os._exit(0)  # killed: no undo runs
        apply_plan(plan, root)

    child = os.fork()
    if child == 0:
        try:
            apply_new_turn_domain(applied_root, FakeSystem(), crash)
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    assert on_disk(applied_root, PENDING).read_text() == "matrix-synapse\ncoturn\napache2\n"
    system = FakeSystem()

    report = apply_new_turn_domain(applied_root, system)

    assert system.calls == [
        RESTART_ALL, ("enable_apache",), ("validate_apache",), ("restart", "apache2"),
        ("set_turn_service", "True"), ("set_backup_timer", "False"),
    ]
    assert report.actions == [
        "restart matrix-synapse (left pending by an interrupted apply)",
        "restart coturn (left pending by an interrupted apply)",
        "restart apache2 (left pending by an interrupted apply)",
        "restart apache2",
    ]
    assert outcomes(report)[APACHE_SITE_PATH] is Outcome.UPDATED
    assert outcomes(report)[SYNAPSE_CONF_PATH] is Outcome.UNCHANGED
    assert not on_disk(applied_root, PENDING).exists()


def test_apply_with_database_ready_skips_the_database_check(
    tmp_path: Path, synapse_check: SynapseCheck
) -> None:
    system = FakeSystem(refusals={"prepare_database": AssertionError("the database was checked")})

    apply(make_settings(tmp_path), root=tmp_path, validate_synapse=synapse_check,
          system=system, database_ready=True)

    assert ("prepare_database",) not in system.calls

    assert on_disk(tmp_path, SYNAPSE_CONF_PATH).exists()


def test_diff_of_dry_run_masks_the_mail_relay_password(tmp_path: Path) -> None:
    store_mail_password("relay-secret-123", tmp_path)
    settings = make_settings(tmp_path, mail="relay", mail_relay_host="smtp.example.org",
                             mail_relay_user="matrix")

    text = diff(apply(settings, root=tmp_path, dry_run=True).plans)

    assert "relay-secret-123" not in text
    assert "+  smtp_pass: '***'\n" in text


def test_apply_with_a_relay_login_but_no_stored_password_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mail="relay", mail_relay_host="smtp.example.org",
                             mail_relay_user="matrix")

    with pytest.raises(MatrixStackError, match="no password is stored for the mail relay user"):
        check_mail_password(settings, read_secrets(tmp_path))
