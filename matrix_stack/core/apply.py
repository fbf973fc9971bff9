"""From Settings to a running stack: render, validate, write, restart only what changed.

One apply is one transaction. Every file it may write is saved before it is written, and the
units to restart are recorded (PENDING_RESTARTS_PATH) before the first write. On any
failure every file is put back, every unit whose files were put back or that was restarted
meanwhile is restarted on the old files, and one line says what state that leaves.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matrix_stack.base import files
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import Outcome, Plan, UcfState
from matrix_stack.base.paths import (
    APACHE_SITE_PATH,
    ELEMENT_ROOT,
    PENDING_RESTARTS_PATH,
    PLACEHOLDER_DIR,
    SERVER_NAME_PATH,
    SYNAPSE_CONF_PATH,
    UCF_STATE_PATH,
)
from matrix_stack.base.phases import phase
from matrix_stack.base.secrets import MAIL_PASSWORD_PATH, Secrets, ensure_secrets, read_secrets
from matrix_stack.base.undo import Undo
from matrix_stack.core.host import gather_facts
from matrix_stack.core.render import render_all
from matrix_stack.core.servername import server_name_changes, write_server_name
from matrix_stack.core.services import APACHE_SITE
from matrix_stack.core.settings import BackupSchedule, MailMode, Settings
from matrix_stack.core.system import (
    KEY_VALUE_UNITS,
    NOTHING_CHANGED,
    System,
    describe_failure,
    describe_state,
    in_order,
    restart_pending,
    system_for,
    units_of,
    worker_side,
    write_pending,
)
from matrix_stack.core.tls import (
    SELF_SIGNED_CERT_PATH,
    SELF_SIGNED_KEY_PATH,
    check_certificate_files,
    make_self_signed,
    self_signed_needed,
)
from matrix_stack.core.workers import KEY_VALUE_SERVERS, WORKERS_DIR
from matrix_stack.core.workers import OFF as WORKERS_OFF

UCF_RECORDS = (UCF_STATE_PATH / "hashfile", UCF_STATE_PATH / "registry")


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


def mask_secret_lines(text: str) -> str:
    """Return text with the secrets rendered inline (coturn's, the mail relay's, Valkey's)
    masked."""
    lines = []
    for line in text.splitlines(keepends=True):
        if "static-auth-secret=" in line:
            line = line.split("static-auth-secret=")[0] + "static-auth-secret=***\n"
        elif line.lstrip("+- ").startswith("smtp_pass:"):
            line = line.split("smtp_pass:")[0] + "smtp_pass: '***'\n"
        elif line.lstrip("+- ").startswith("requirepass "):
            line = line.split("requirepass ")[0] + "requirepass ***\n"
        lines.append(line)
    return "".join(lines)


def check_mail_password(settings: Settings, secrets: Secrets) -> None:
    """Refuse a relay login without a stored password (Synapse would fail every mail)."""
    relay_login = settings.mail is MailMode.RELAY and settings.mail_relay_user
    if relay_login and not secrets.mail_relay_password:
        raise MatrixStackError(
            f"no password is stored for the mail relay user {settings.mail_relay_user} "
            f"({MAIL_PASSWORD_PATH}); run: dpkg-reconfigure matrix-stack"
        )


def ensure_element_root(root: Path) -> None:
    """Serve a page saying how to install Element until a release is installed."""
    current = files.host_path(ELEMENT_ROOT, root)
    if current.exists() or current.is_symlink():
        return
    current.parent.mkdir(parents=True, exist_ok=True)
    current.symlink_to(PLACEHOLDER_DIR)


def plan_files(settings: Settings, root: Path, secrets: Secrets, ucf: UcfState) -> list[Plan]:
    """Return what writing each rendered file would do."""
    specs = render_all(settings, secrets, gather_facts(settings, root))
    return [files.plan_file(spec, root, ucf) for spec in specs]


def written_paths(plans: Iterable[Plan]) -> list[Path]:
    """Return every path writing plans changes: live files, and the .ucf-dist beside kept ones."""
    paths = []
    for plan in plans:
        if plan.outcome.changes_live_file:
            paths.append(plan.spec.path)
        elif plan.outcome is Outcome.KEPT_LOCAL:
            paths.append(plan.spec.path.with_name(plan.spec.path.name + files.DIST_SUFFIX))
    return paths


def apply(
    settings: Settings,
    *,
    root: Path = Path("/"),
    dry_run: bool = False,
    debconf_ok: bool = False,
    validate_synapse: Callable[[str, str], None] | None = None,
    set_synapse_answer: Callable[[str], None] | None = None,
    database_ready: bool = False,
    system: System | None = None,
    write_plan: Callable[[Plan, Path], None] = files.apply_plan,
) -> Report:
    """Bring the generated files and services in line with settings.

    First restart what an interrupted apply left pending, then check the database switch
    (system.prepare_database; skipped when database_ready: the caller checked it). A configuration
    that Synapse or Apache refuses, or any other failure, leaves the previous files live.
    """
    if dry_run:
        return Report(plans=plan_files(settings, root, read_secrets(root), UcfState(root)))
    system = system or system_for(root)
    report = Report()
    report.actions, left_pending = restart_pending(system, root)
    if not database_ready:
        # Before anything is written: a missing PostgreSQL or a switch losing data changes nothing.
        with phase("database check"):
            report.actions += system.prepare_database(settings, root)
    attempt = Attempt(settings, root, system, left_pending)
    try:
        attempt.run(report, validate_synapse or system.validate_synapse, set_synapse_answer,
                    debconf_ok, write_plan)
    except BaseException as error:
        outcome = attempt.roll_back(error)
        if outcome is error:
            raise
        raise outcome from None
    return report


class Attempt:
    """One apply's writes and restarts, and what it takes to undo them."""

    def __init__(self, settings: Settings, root: Path, system: System, pending: list[str]):
        self.settings = settings
        self.root = root
        self.system = system
        self.undo = Undo(root)
        self.pending = pending  # recorded before the first write; an earlier run's come first
        self.restarted: list[str] = []  # restarted (or tried) on the new files
        self.site_enabled = False
        # The Valkey/Redis instance and worker units of the new layout (set once rendered).
        self.worker_units: list[str] = []

    def restartable(self, units: Iterable[str]) -> list[str]:
        """Return units in restart order; coturn only while TURN is on (else it stays stopped),
        the workers and Valkey/Redis instance only while in the layout (else they are stopped)."""
        return in_order(
            unit for unit in units
            if (unit != "coturn" or self.settings.turn_enable)
            and (not worker_side(unit) or unit in self.worker_units)
        )

    def expect(self, paths: Iterable[Path], units: Iterable[str] = ()) -> None:
        """Before writing paths: save them, and record their units (and units) as pending."""
        paths = list(paths)
        self.undo.save(*paths)
        workers = [unit for unit in self.worker_units if unit not in KEY_VALUE_UNITS]
        wanted = self.restartable([*self.pending, *units, *units_of(paths, workers)])
        if wanted != self.pending:
            write_pending(wanted, self.root)
            self.pending = wanted

    def run(
        self,
        report: Report,
        validate_synapse: Callable[[str, str], None],
        set_synapse_answer: Callable[[str], None] | None,
        debconf_ok: bool,
        write_plan: Callable[[Plan, Path], None],
    ) -> None:
        settings, root, system = self.settings, self.root, self.system
        if settings.workers != WORKERS_OFF:
            # Before anything is written: no Valkey, or a Synapse without txredisapi.
            system.check_workers(settings)
        if server_name_changes(settings, root):
            self.expect([SERVER_NAME_PATH])
            write_server_name(settings, root, set_synapse_answer)
        secrets = ensure_secrets(root, workers=settings.workers != WORKERS_OFF)
        check_mail_password(settings, secrets)
        ucf = UcfState(root, debconf_ok=debconf_ok)
        with phase("render"):
            report.plans = plans = plan_files(settings, root, secrets, ucf)
        rendered = [plan.spec.path for plan in plans]
        self.worker_units = in_order(unit for unit in units_of(rendered) if worker_side(unit))
        stale = stale_worker_files(root, ucf, rendered)
        check_certificate_files(settings, root)
        synapse_plan = next((plan for plan in plans if plan.spec.path == SYNAPSE_CONF_PATH), None)
        if synapse_plan is not None and synapse_plan.outcome.changes_live_file:
            with phase("Synapse's check of its new configuration"):
                validate_synapse(synapse_plan.spec.text, SYNAPSE_CONF_PATH.name)

        new_certificate = self_signed_needed(settings, root)
        if new_certificate:
            self.expect([SELF_SIGNED_KEY_PATH, SELF_SIGNED_CERT_PATH])
            with phase("self-signed certificate"):
                make_self_signed(settings, root)
        ensure_element_root(root)
        self.expect(written_paths(plans))
        for plan in plans:
            try:
                write_plan(plan, root)
            except OSError as error:
                raise MatrixStackError(
                    f"cannot write {plan.spec.path} ({error.strerror or error})"
                ) from error
        with phase("Apache modules and site"):
            newly_enabled = system.enable_apache(settings, root)
        self.site_enabled = f"site:{APACHE_SITE}" in newly_enabled
        if newly_enabled:
            self.expect([], ["apache2"])
        site_written = APACHE_SITE_PATH in written_paths(plans)
        if new_certificate or newly_enabled or site_written:
            with phase("apache2ctl configtest"):
                system.validate_apache()

        self.restarted = list(self.pending)
        restarted, failed = system.restart(self.pending) if self.pending else ([], [])
        report.actions += restarted
        # Workers out of the layout stop only now, their files removed once stopped: the
        # main process restarted on its new configuration first (one restart window).
        report.actions += system.stop_workers(self.worker_units)
        self.undo.save(*stale)
        for path in stale:
            files.remove_file(files.host_path(path, root))
            report.actions.append(f"removed {path}")
        report.actions += system.start_workers(
            [unit for unit in self.worker_units if unit not in failed])
        report.actions += system.set_turn_service(settings.turn_enable, root)
        report.actions += system.set_backup_timer(
            settings.backup_schedule is BackupSchedule.DAILY
        )
        if failed:
            hint = "; ".join(f"see: journalctl -u {unit}" for unit in failed)
            if not system.in_maintainer_script():
                raise MatrixStackError(
                    f"{', '.join(failed)} failed to start with the new configuration ({hint})"
                )
            # As debhelper's own snippets do: say so, but do not fail the package configuration.
            report.actions.append(f"warning: {', '.join(failed)} failed to start ({hint})")
        # ucf records a file as ours, as written, only once it is live.
        self.undo.save(*UCF_RECORDS)
        for plan in plans:
            if plan.outcome.changes_live_file or (
                plan.outcome is Outcome.UNCHANGED
                and ucf.registered_md5(plan.spec.path) != files.md5_text(plan.spec.text)
            ):
                ucf.register(plan.spec)
        for path in stale:
            ucf.forget(path)
        write_pending(failed, root)
        self.pending = failed

    def roll_back(self, error: BaseException) -> BaseException:
        """Put every file back, restart the units of those put back and those restarted since;
        return what to raise: the same error saying what it left, one line for an interrupt
        or an OSError, a bug's own exception with a note."""
        reverted, problems = self.undo.put_back()
        if self.site_enabled:
            try:
                self.system.disable_apache_site()
            except MatrixStackError as disable_error:
                problems[APACHE_SITE_PATH] = f"still enabled: {disable_error}"
        # Only units restarted on the new files run them: restart those on the old ones. A unit
        # never restarted still runs the old files (restarting it could only hurt: an Apache
        # whose configuration broke meanwhile would not come back).
        units = self.restartable(self.restarted)
        _lines, failed = self.system.restart(units) if units else ([], [])
        try:
            write_pending(self.restartable([*failed, *units_of(problems)]), self.root)
        except OSError as pending_error:
            problems[PENDING_RESTARTS_PATH] = str(pending_error.strerror or pending_error)
        restarted = [unit for unit in units if unit not in failed]
        state = describe_state(reverted, problems, restarted, failed)
        if isinstance(error, MatrixStackError):
            if state != NOTHING_CHANGED:
                # The same error (its type sets the exit code), saying what it left.
                error.args = (f"{error}: {state}",)
            return error
        failure = describe_failure(error)
        if failure is None:  # a bug: its traceback, and what it left
            error.add_note(f"matrix-stack: {state}")
            return error
        return MatrixStackError(f"apply {failure}: {state}")


def stale_worker_files(root: Path, ucf: UcfState, rendered: list[Path]) -> list[Path]:
    """Return the worker and Valkey/Redis configurations matrix-stack wrote that the layout
    no longer has (an admin's own file there is never one of them)."""
    candidates = [Path(server.config_path) for server in KEY_VALUE_SERVERS]
    directory = files.host_path(Path(WORKERS_DIR), root)
    if directory.is_dir():
        candidates += [Path(WORKERS_DIR) / path.name for path in sorted(directory.glob("*.yaml"))]
    return [path for path in candidates if path not in rendered
            and files.host_path(path, root).exists() and ucf.registered_md5(path) is not None]

