"""Secrets generated once with the secrets module and never changed afterwards."""

from __future__ import annotations

import os
import secrets as random_source
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import (
    create_exclusive,
    host_path,
    lookup_ids,
    opened_directory,
    replace_file,
    sets_ownership,
)
from matrix_stack.base.paths import SECRETS_DIR

REGISTRATION_SECRET_PATH = SECRETS_DIR / "registration_shared_secret"
TURN_SECRET_PATH = SECRETS_DIR / "turn_shared_secret"
# Only on a server taken over by matrix-stack-admin adopt: the values homeserver.yaml had
# inline, kept (a new macaroon key or form secret would end what they sign).
MACAROON_SECRET_PATH = SECRETS_DIR / "macaroon_secret_key"
FORM_SECRET_PATH = SECRETS_DIR / "form_secret"
# Synapse's inline secret settings and the file each one's *_path names instead.
SECRET_FILES = {
    "registration_shared_secret": REGISTRATION_SECRET_PATH,
    "macaroon_secret_key": MACAROON_SECRET_PATH,
    "form_secret": FORM_SECRET_PATH,
    "turn_shared_secret": TURN_SECRET_PATH,
}
# Those that exist only when adopted; the others are generated when missing.
ADOPTED_ONLY = ("macaroon_secret_key", "form_secret")
# Only while Synapse runs workers: the replication secret (worker_replication_secret_path)
# and the password of the Valkey/Redis instance (redis.password_path; also rendered into that
# instance's own configuration, readable by its account alone).
WORKER_REPLICATION_SECRET_PATH = SECRETS_DIR / "worker_replication_secret"
REDIS_PASSWORD_PATH = SECRETS_DIR / "redis_password"
# libpq's password file for a remote PostgreSQL (Synapse names it as passfile).
DATABASE_PASSFILE = SECRETS_DIR / "database.pgpass"
# The mail relay's password, root's alone: render copies it into Synapse's own 0600 file,
# since Synapse reads it only inline (email.smtp_pass; there is no smtp_pass_path).
MAIL_PASSWORD_PATH = SECRETS_DIR / "mail_relay_password"
# Synapse reads both through *_path settings; Debian's matrix-synapse user has no group.
SECRET_OWNER = "matrix-synapse"


@dataclass(frozen=True)
class Secrets:
    """The secrets the rendered files need (the TURN secret goes into turnserver.conf)."""

    turn_shared_secret: str
    # (Synapse setting, file) of the adopted-only secrets present.
    moved: tuple[tuple[str, str], ...] = ()
    mail_relay_password: str = ""
    # Only with workers: the Valkey/Redis instance's requirepass.
    redis_password: str = ""


def ensure_secret(
    path: Path, root: Path, owner: str = SECRET_OWNER, value: str | None = None
) -> str:
    """Return the secret stored at path, creating it (0600, owner) if it does not exist yet:
    with value when given (a secret taken over), else a new random one."""
    target = host_path(path, root)
    try:
        stored = target.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    else:
        if not stored:
            raise MatrixStackError(f"{path} is empty; remove it to have a new secret generated")
        if value is not None and stored != value:
            raise MatrixStackError(
                f"{path} already holds another secret than the one to take over; move it away "
                "and try again"
            )
        return stored
    if value is None:
        value = random_source.token_urlsafe(48)
    if not value or "\n" in value:
        raise MatrixStackError(f"the secret for {path} is empty or not one line")
    ids = lookup_ids(owner, "root") if sets_ownership(root) else (-1, -1)
    with opened_directory(target.parent, create=True) as directory:
        descriptor = create_exclusive(target.name, *ids, 0o600, dir_fd=directory)
        try:
            os.write(descriptor, (value + "\n").encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return value


def ensure_secrets(root: Path = Path("/"), *, workers: bool = False) -> Secrets:
    """Create any missing secret and return those the renderer needs (with workers, also
    the replication secret and the Valkey/Redis password)."""
    ensure_secret(REGISTRATION_SECRET_PATH, root)
    redis_password = ""
    if workers:
        ensure_secret(WORKER_REPLICATION_SECRET_PATH, root)
        redis_password = ensure_secret(REDIS_PASSWORD_PATH, root)
    return Secrets(
        turn_shared_secret=ensure_secret(TURN_SECRET_PATH, root),
        moved=moved_secrets(root),
        mail_relay_password=read_mail_password(root),
        redis_password=redis_password,
    )


def moved_secrets(root: Path = Path("/")) -> tuple[tuple[str, str], ...]:
    """Return (Synapse setting, file) of each adopted-only secret file present."""
    return tuple(
        (key, str(SECRET_FILES[key]))
        for key in ADOPTED_ONLY
        if host_path(SECRET_FILES[key], root).exists()
    )


def read_secrets(root: Path = Path("/")) -> Secrets:
    """Return the secrets without creating any (for --dry-run); a missing one shows as such."""
    try:
        turn = host_path(TURN_SECRET_PATH, root).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        turn = "(generated by the first apply)"
    try:
        redis = host_path(REDIS_PASSWORD_PATH, root).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        redis = ""
    return Secrets(turn_shared_secret=turn, moved=moved_secrets(root),
                   mail_relay_password=read_mail_password(root), redis_password=redis)


def pgpass_line(password: str) -> str:
    """Return a password-file line matching any host, port, database and role.

    libpq reads ':' and '\\' escaped with a backslash; a line break cannot be stored.
    """
    if "\n" in password or "\r" in password or not password:
        raise MatrixStackError("the PostgreSQL password must be one non-empty line")
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


def store_database_password(
    password: str, root: Path = Path("/"), check: Callable[[Path], object] | None = None
) -> None:
    """Write the remote PostgreSQL password for Synapse alone (owner matrix-synapse, 0600).

    The new file is made beside the one Synapse uses (in a directory root alone writes) and
    renamed over it only once check, given the new file, accepted it; it is removed in any
    other case, so a refused password leaves the old file as it was.
    """
    data = pgpass_line(password).encode("utf-8")
    target = host_path(DATABASE_PASSFILE, root)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    ids = lookup_ids(SECRET_OWNER, "root") if sets_ownership(root) else None
    replace_file(target, data, 0o600, ids, check)


def has_database_password(root: Path = Path("/")) -> bool:
    return host_path(DATABASE_PASSFILE, root).is_file()


def read_mail_password(root: Path = Path("/")) -> str:
    """Return the mail relay's password, '' when none is stored."""
    try:
        return host_path(MAIL_PASSWORD_PATH, root).read_text(encoding="utf-8").rstrip("\n")
    except FileNotFoundError:
        return ""


def store_mail_password(password: str, root: Path = Path("/")) -> None:
    """Keep the mail relay's password in a file root alone reads (0600)."""
    if "\n" in password or "\r" in password or not password:
        raise MatrixStackError("the mail relay password must be one non-empty line")
    target = host_path(MAIL_PASSWORD_PATH, root)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    ids = lookup_ids("root", "root") if sets_ownership(root) else None
    replace_file(target, (password + "\n").encode("utf-8"), 0o600, ids)
