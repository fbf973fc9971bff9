"""apply: render, validate, write with ucf, into a temporary root.

With root != "/" apply enables no Apache part and restarts nothing; it still writes
server_name.yaml, the secrets, the self-signed certificate (real openssl) and registers
every file with the real ucf (state under the root). Synapse's check is passed in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matrix_stack.apply import Report, apply, diff
from matrix_stack.errors import MatrixStackError, ValidationError
from matrix_stack.files import Outcome, UcfState, md5_text
from matrix_stack.host import Facts
from matrix_stack.render import (
    APACHE_SITE_PATH,
    ELEMENT_CONFIG_PATH,
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    WELL_KNOWN_DIR,
    render_all,
)
from matrix_stack.secrets import read_secrets
from matrix_stack.servername import SERVER_NAME_PATH, ensure_server_name
from matrix_stack.settings import Settings
from matrix_stack.tls import certificate_names
from tests.unit.helpers import (
    LISTENING_IP,
    SERVER_NAME,
    AppliedRoot,
    SynapseCheck,
    make_settings,
    needs_root_for_ucf,
    snapshot,
)

GENERATED = [
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    APACHE_SITE_PATH,
    ELEMENT_CONFIG_PATH,
    WELL_KNOWN_DIR / "matrix" / "server",
    WELL_KNOWN_DIR / "matrix" / "client",
]
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
    def refuse(_settings: Settings, _root: Path) -> list[str]:
        raise MatrixStackError("no PostgreSQL server runs on this host")

    settings = make_settings(tmp_path)
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(MatrixStackError, match="no PostgreSQL"):
        apply(settings, root=tmp_path, validate_synapse=synapse_check, prepare_database=refuse)

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
