"""Maintainer-script hooks: postinst hands the debconf answers over to the apply pipeline.

Run by debian/matrix-stack.postinst after it sourced confmodule: the debconf protocol is
read on stdin and written on fd 3, and fd 1 already points at stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from matrix_stack.base import secrets
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import host_path
from matrix_stack.base.paths import STACK_PATH
from matrix_stack.base.phases import phase
from matrix_stack.core import answers
from matrix_stack.core.apply import apply
from matrix_stack.core.settings import MailMode, Settings
from matrix_stack.core.stack import change
from matrix_stack.core.system import System, system_for
from matrix_stack.features import adopt

PROGRAM = "matrix-stack"
ADMIN_PASSWORD_QUESTION = "matrix-stack/admin-password"

# Checks a new PostgreSQL password, given the settings and a passfile holding it.
PasswordCheck = Callable[[Settings, Path], object]


@dataclass(frozen=True)
class Configured:
    """The Settings the postinst applied (its later steps use them), and the report lines."""

    settings: Settings
    lines: list[str]


def configure(
    debconf: answers.DebconfLike,
    root: Path = Path("/"),
    set_synapse_answer: Callable[[str], None] | None = None,
    system: System | None = None,
    check_password: PasswordCheck | None = None,
) -> Configured:
    """Validate the answers, keep them in stack.yaml and apply them, as one transaction.

    A new database password is swapped in within it: any failure leaves the old one.
    """
    system = system or system_for(root)
    # The first configuration takes over what the server already has (a Synapse set up by
    # hand keeps its database, secrets and federation partners); a server that cannot be
    # taken over safely is refused here, before anything changed.
    adoption = None
    if not host_path(STACK_PATH, root).exists():
        adoption = adopt.take_over_plan(root, system=system)
    file_only = {
        key: value
        for key, value in (adoption.proposed if adoption else {}).items()
        if key in answers.FILE_ONLY_KEYS
    }

    def edit(stack: dict[str, object]) -> dict[str, object]:
        return {**stack, **file_only, **answers.yaml_from_debconf(debconf)}

    def apply_settings(settings: Settings) -> list[str]:
        store_database_password(debconf, settings, root,
                                check_password or system.database_password_check(),
                                taken=adoption.database_password if adoption else "")
        store_mail_password(debconf, settings, root)
        taken = adopt.carry_out(adoption, settings, root, system) if adoption else []
        return taken + apply(settings, root=root, debconf_ok=True,
                             set_synapse_answer=set_synapse_answer, system=system).lines()

    keeps = [secrets.DATABASE_PASSFILE, secrets.MAIL_PASSWORD_PATH]
    if adoption:
        keeps += adopt.undo_paths(adoption)
    changed = change(edit, root=root, source="debconf", apply_settings=apply_settings,
                     keeps=keeps, missing_ok=True)
    said = []
    if adoption and not adoption.empty:
        adopt.finish(adoption, root)
        said = [f"adopt: {line}" for line in adoption.lines]
        if set_synapse_answer is not None:
            # Debian's matrix-synapse postinst rewrites conf.d/server_name.yaml from its own
            # answer at every upgrade; the recipe says that answer does not matter.
            set_synapse_answer(changed.settings.server_name)
            said.append(
                f"adopt: matrix-synapse/server-name (debconf) is {changed.settings.server_name}, "
                "so that matrix-synapse's upgrades write the same server_name.yaml"
            )
    # apply itself first restarts, and reports, what an interrupted earlier run left pending.
    return Configured(changed.settings, [*said, *changed.settings.warnings, *changed.lines])


def store_database_password(
    debconf: answers.DebconfLike,
    settings: Settings,
    root: Path = Path("/"),
    check: PasswordCheck | None = None,
    taken: str = "",
) -> None:
    """Keep the remote PostgreSQL password in its root-only file, never in debconf.

    taken: the password a server taken over had inline (the answer, if any, wins). A new
    password replaces the file Synapse uses only once check (on this host,
    postgres.check_remote; none for a temporary root) accepted it from a temporary file.
    """
    try:
        password = debconf.get(answers.DATABASE_PASSWORD_QUESTION) or taken
    finally:
        debconf.set(answers.DATABASE_PASSWORD_QUESTION, "")
    if not settings.remote_database:
        return
    if password:
        secrets.store_database_password(
            password, root, None if check is None else lambda passfile: check(settings, passfile)
        )
    elif not secrets.has_database_password(root):
        raise MatrixStackError(
            f"matrix-stack/database-password: a password for PostgreSQL role "
            f"{settings.database_user} is needed; run: dpkg-reconfigure matrix-stack"
        )


def store_mail_password(
    debconf: answers.DebconfLike, settings: Settings, root: Path = Path("/")
) -> None:
    """Keep the mail relay's password in its root-only file, never in debconf.

    Empty keeps the one stored earlier; a relay login without any password is refused.
    """
    try:
        password = debconf.get(answers.MAIL_PASSWORD_QUESTION)
    finally:
        debconf.set(answers.MAIL_PASSWORD_QUESTION, "")
    if settings.mail is not MailMode.RELAY or not settings.mail_relay_user:
        return
    if password:
        secrets.store_mail_password(password, root)
    elif not secrets.read_mail_password(root):
        raise MatrixStackError(
            f"matrix-stack/mail-relay-password: a password for the mail relay user "
            f"{settings.mail_relay_user} is needed; run: dpkg-reconfigure matrix-stack"
        )


def leave_monolith(root: Path = Path("/"), system: System | None = None) -> list[str]:
    """Before the package goes (remove, not purge): put Synapse back to one process.

    The workers' units and their Valkey/Redis instance leave with the package, so the main
    process must again do what they did (media, federation sending, background tasks): apply
    renders the same choices with workers off, restarts it, then stops the workers. stack.yaml
    keeps the admin's answer, so installing again brings the workers back.
    """
    from matrix_stack.core.stack import current_settings
    from matrix_stack.core.workers import OFF

    if not host_path(STACK_PATH, root).exists():
        return []
    settings = current_settings(root)
    if settings.workers == OFF:
        return []
    report = apply(replace(settings, workers=OFF), root=root, database_ready=True,
                   system=system)
    return ["workers: Synapse runs as one process again (stack.yaml keeps workers: "
            f"{settings.workers} for a later install)", *report.lines()]


def bootstrap(debconf: answers.DebconfLike, server_name: str) -> list[str]:
    """Create the administrator asked for, then forget its password (always)."""
    from matrix_stack.features.bootstrap import bootstrap_admin

    try:
        name = debconf.get("matrix-stack/admin-user").strip()
        password = debconf.get(ADMIN_PASSWORD_QUESTION)
    finally:
        debconf.set(ADMIN_PASSWORD_QUESTION, "")
    if not name:
        return []
    return [bootstrap_admin(name, password, server_name)]


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["remove"]:
        return run_remove()
    if arguments[:1] != ["configure"]:
        print(f"usage: {PROGRAM} hook configure|remove", file=sys.stderr)
        return 2
    import debconf

    # No STOP at the end: the calling postinst keeps using the same debconf session.
    session = debconf.Debconf(read=sys.stdin, write=os.fdopen(3, "w", buffering=1))

    def set_synapse_answer(name: str) -> None:
        try:
            session.set("matrix-synapse/server-name", name)
        except debconf.DebconfError as error:  # not registered: matrix-synapse-py3 differs
            print(f"{PROGRAM}: matrix-synapse/server-name not set: {error}", file=sys.stderr)

    return run_configure(session, set_synapse_answer)


def run_configure(
    session: answers.DebconfLike, set_synapse_answer: Callable[[str], None] | None = None
) -> int:
    """Apply the answers, create the administrator, report on stderr; return the exit code.

    The passwords answered are forgotten by debconf however this ends: success, our error,
    a bug or an interrupt (debconf's database would keep them in clear text otherwise).
    """
    try:
        from matrix_stack.base.paths import TURNSERVER_CONF_PATH
        from matrix_stack.core.services import stop_open_coturn

        # Silent: apply starts it with our configuration, and says so.
        with phase("stop coturn on its stock configuration"):
            stop_open_coturn(TURNSERVER_CONF_PATH)
        with phase("configure (stack.yaml, apply)"):
            configured = configure(session, set_synapse_answer=set_synapse_answer)
        for line in configured.lines:
            print(f"{PROGRAM}: {line}", file=sys.stderr)
        with phase("administrator account"):
            made = bootstrap(session, configured.settings.server_name)
        for line in made:
            print(f"{PROGRAM}: {line}", file=sys.stderr)
        from matrix_stack.features.element.install import postinst_lines

        # Never raises: Element is fetched best-effort.
        with phase("Element"):
            fetched = postinst_lines(settings=configured.settings)
        for line in fetched:
            print(f"{PROGRAM}: {line}", file=sys.stderr)
    except MatrixStackError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 1
    finally:
        session.set(ADMIN_PASSWORD_QUESTION, "")
        session.set(answers.DATABASE_PASSWORD_QUESTION, "")
        session.set(answers.MAIL_PASSWORD_QUESTION, "")
    return 0


def run_remove(root: Path = Path("/"), system: System | None = None) -> int:
    """Leave a monolith-valid configuration, report on stderr; return the exit code."""
    try:
        lines = leave_monolith(root, system)
    except MatrixStackError as error:
        print(f"{PROGRAM}: {error}; Synapse's main process may still leave media and "
              "federation sending to the workers: install matrix-stack again, answer off to "
              "matrix-stack/workers (dpkg-reconfigure matrix-stack), then remove it",
              file=sys.stderr)
        return 1
    for line in lines:
        print(f"{PROGRAM}: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
