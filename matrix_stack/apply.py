"""From Settings to a running stack: render, validate, write, restart only what changed."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matrix_stack import files, postgres, services, tls
from matrix_stack.errors import MatrixStackError
from matrix_stack.files import Outcome, Plan, UcfState
from matrix_stack.host import gather_facts
from matrix_stack.render import (
    APACHE_SITE_PATH,
    ELEMENT_ROOT,
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    render_all,
)
from matrix_stack.secrets import ensure_secrets, read_secrets
from matrix_stack.servername import ensure_server_name
from matrix_stack.settings import BackupSchedule, Settings
from matrix_stack.tls import check_certificate_files, ensure_self_signed

# Which unit reads each generated file; files served as they are need no reload.
UNIT_OF_PATH = {
    SYNAPSE_CONF_PATH: "matrix-synapse",
    TURNSERVER_CONF_PATH: "coturn",
    APACHE_SITE_PATH: "apache2",
}
PLACEHOLDER_DIR = Path("/usr/share/matrix-stack/element-placeholder")


@dataclass
class Report:
    """What an apply did, for one line each on the terminal."""

    plans: list[Plan] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        shown = []
        for plan in self.plans:
            if plan.outcome is Outcome.KEPT_LOCAL:
                shown.append(
                    f"kept your edited {plan.spec.path}; the new version is in "
                    f"{plan.spec.path}{files.DIST_SUFFIX} (compare, merge, then delete it)"
                )
            elif plan.outcome is Outcome.KEPT_DELETED:
                shown.append(f"{plan.spec.path} was deleted by you: not recreated")
            elif plan.outcome.changes_live_file:
                shown.append(f"{plan.outcome} {plan.spec.path}")
        return shown + self.actions


def diff(plans: list[Plan]) -> str:
    """Return a unified diff of every file an apply would change (secrets masked)."""
    chunks: list[str] = []
    for plan in plans:
        # A file the admin deleted stays deleted (apply_plan writes nothing for it).
        if plan.outcome in (Outcome.UNCHANGED, Outcome.KEPT_DELETED):
            continue
        new_path = plan.spec.path
        if plan.outcome is Outcome.KEPT_LOCAL:
            new_path = new_path.with_name(new_path.name + files.DIST_SUFFIX)
        chunks.extend(
            difflib.unified_diff(
                (plan.current or "").splitlines(keepends=True),
                plan.spec.text.splitlines(keepends=True),
                fromfile=str(plan.spec.path) if plan.current is not None else "/dev/null",
                tofile=str(new_path),
            )
        )
    return "".join(mask_secret_lines(chunk) for chunk in chunks)


def mask_secret_lines(line: str) -> str:
    if "static-auth-secret=" in line:
        return line.split("static-auth-secret=")[0] + "static-auth-secret=***\n"
    return line


def ensure_element_root(root: Path) -> None:
    """Serve a page saying how to install Element until a release is installed."""
    current = files.host_path(ELEMENT_ROOT, root)
    if current.exists() or current.is_symlink():
        return
    current.parent.mkdir(parents=True, exist_ok=True)
    current.symlink_to(PLACEHOLDER_DIR)


def apply(
    settings: Settings,
    *,
    root: Path = Path("/"),
    dry_run: bool = False,
    debconf_ok: bool = False,
    validate_synapse: Callable[[str, str], None] | None = None,
    set_synapse_answer: Callable[[str], None] | None = None,
    prepare_database: Callable[[Settings, Path], list[str]] | None = None,
) -> Report:
    """Bring the generated files and services in line with settings.

    A configuration that Synapse or Apache refuses leaves the previous files live.
    """
    report = Report()
    if not dry_run and (prepare_database is not None or root == Path("/")):
        # Before anything is written: a missing PostgreSQL or a switch losing data changes nothing.
        report.actions += (prepare_database or postgres.prepare)(settings, root)
    name_written = False if dry_run else ensure_server_name(settings, root, set_synapse_answer)
    secrets = read_secrets(root) if dry_run else ensure_secrets(root)
    certificate_changed = False if dry_run else ensure_self_signed(settings, root)
    specs = render_all(settings, secrets, gather_facts(settings, root))
    ucf = UcfState(root, debconf_ok=debconf_ok)
    plans = [files.plan_file(spec, root, ucf) for spec in specs]
    report.plans = plans
    if dry_run:
        return report

    check_certificate_files(settings, root)
    changed = [plan for plan in plans if plan.outcome.changes_live_file]
    synapse_plan = next((p for p in changed if p.spec.path == SYNAPSE_CONF_PATH), None)
    if synapse_plan is not None:
        check = validate_synapse or services.validate_synapse
        check(synapse_plan.spec.text, SYNAPSE_CONF_PATH.name)

    ensure_element_root(root)
    written: list[Plan] = []
    newly_enabled: tuple[str, ...] = ()
    try:
        for plan in plans:
            files.apply_plan(plan, root)
            if plan.outcome.changes_live_file:
                written.append(plan)
        if root == Path("/"):
            newly_enabled = services.ensure_apache_enabled(settings, root)
            apache_touched = certificate_changed or newly_enabled or any(
                p.spec.path == APACHE_SITE_PATH for p in written
            )
            if apache_touched:
                services.validate_apache()
    except MatrixStackError:
        for plan in written:
            files.restore(plan, root)
        tls.restore_self_signed(root)
        if f"site:{services.APACHE_SITE}" in newly_enabled:
            services.disable_apache_site()
        raise

    units = {UNIT_OF_PATH[p.spec.path] for p in written if p.spec.path in UNIT_OF_PATH}
    if certificate_changed:
        units |= {"apache2", "coturn"}
    if name_written:
        units.add("matrix-synapse")
    if newly_enabled:
        units.add("apache2")
    if not settings.turn_enable:
        units.discard("coturn")
    order = [unit for unit in ("matrix-synapse", "coturn", "apache2") if unit in units]
    failed: list[str] = []
    if root == Path("/"):
        restarted, failed = services.restart(order)
        report.actions += restarted
        report.actions += services.set_turn_service(settings.turn_enable, root)
        report.actions += services.set_backup_timer(
            settings.backup_schedule is BackupSchedule.DAILY
        )
    if failed:
        hint = "; ".join(f"see: journalctl -u {unit}" for unit in failed)
        if not services.in_maintainer_script():
            for plan in written:
                files.restore(plan, root)
            tls.restore_self_signed(root)
            services.restart(failed)
            raise MatrixStackError(
                f"{', '.join(failed)} failed to start with the new configuration; the previous "
                f"files are back in place ({hint})"
            )
        # As debhelper's own snippets do: say so, but do not fail the package configuration.
        report.actions.append(f"warning: {', '.join(failed)} failed to start ({hint})")

    tls.forget_previous_self_signed(root)
    # ucf records a file as ours, as written, only once it is live.
    for plan in plans:
        if plan.outcome.changes_live_file or (
            plan.outcome is Outcome.UNCHANGED
            and ucf.registered_md5(plan.spec.path) != files.md5_text(plan.spec.text)
        ):
            ucf.register(plan.spec)
    return report


def ensure_root() -> None:
    """Refuse to run as anyone but root (the files and services are root's)."""
    if os.geteuid() != 0:
        raise MatrixStackError("this needs root: run it as root")
