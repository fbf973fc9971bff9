"""Maintainer-script hooks: postinst hands the debconf answers over to the apply pipeline.

Run by debian/matrix-stack.postinst after it sourced confmodule: the debconf protocol is
read on stdin and written on fd 3, and fd 1 already points at stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from matrix_stack import answers, postgres
from matrix_stack.apply import apply
from matrix_stack.errors import MatrixStackError
from matrix_stack.settings import Settings

PROGRAM = "matrix-stack"
ADMIN_PASSWORD_QUESTION = "matrix-stack/admin-password"


def configure(
    debconf: answers.DebconfLike,
    root: Path = Path("/"),
    set_synapse_answer: Callable[[str], None] | None = None,
) -> list[str]:
    """Validate the answers, keep them in stack.yaml, apply them; return the report lines."""
    stack_exists = (root / answers.STACK_PATH.relative_to("/")).exists()
    stack = answers.read_stack(root) if stack_exists else {}
    stack.update(answers.yaml_from_debconf(debconf))
    settings = answers.load_settings(stack, "debconf", root)
    store_database_password(debconf, settings, root)
    # Before stack.yaml is written: a missing PostgreSQL or a switch losing data changes nothing.
    prepared = postgres.prepare(settings, root) if root == Path("/") else []
    answers.write_stack(stack, root)
    report = apply(
        settings, root=root, debconf_ok=True, set_synapse_answer=set_synapse_answer,
        prepare_database=lambda _settings, _root: [],
    )
    return list(settings.warnings) + prepared + report.lines()


def store_database_password(
    debconf: answers.DebconfLike, settings: Settings, root: Path = Path("/")
) -> None:
    """Keep the remote PostgreSQL password in its root-only file; never in debconf."""
    from matrix_stack import secrets

    try:
        password = debconf.get(answers.DATABASE_PASSWORD_QUESTION)
    finally:
        debconf.set(answers.DATABASE_PASSWORD_QUESTION, "")
    if not settings.remote_database:
        return
    if password:
        secrets.store_database_password(password, root)
    elif not secrets.has_database_password(root):
        raise MatrixStackError(
            f"matrix-stack/database-password: a password for PostgreSQL role "
            f"{settings.database_user} is needed; run: dpkg-reconfigure matrix-stack"
        )


def bootstrap(debconf: answers.DebconfLike, server_name: str) -> list[str]:
    """Create the administrator asked for, then forget its password (always)."""
    from matrix_stack.bootstrap import bootstrap_admin

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
    if arguments[:1] != ["configure"]:
        print(f"usage: {PROGRAM} hook configure", file=sys.stderr)
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
        for line in configure(session, set_synapse_answer=set_synapse_answer):
            print(f"{PROGRAM}: {line}", file=sys.stderr)
        server_name = answers.load_settings(answers.read_stack(), "debconf").server_name
        for line in bootstrap(session, server_name):
            print(f"{PROGRAM}: {line}", file=sys.stderr)
        from matrix_stack.cli_element import postinst_lines

        for line in postinst_lines():  # never raises: Element is fetched best-effort
            print(f"{PROGRAM}: {line}", file=sys.stderr)
    except MatrixStackError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 1
    finally:
        session.set(ADMIN_PASSWORD_QUESTION, "")
        session.set(answers.DATABASE_PASSWORD_QUESTION, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
