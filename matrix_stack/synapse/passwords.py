"""Read a new password and hash it exactly as Synapse does, for the offline password reset.

The algorithm is Synapse's ``AuthHandler.hash`` and ``validate_hash`` (synapse/handlers/auth.py):
NFKC normalisation, the pepper appended, UTF-8, cut to bcrypt's 72 bytes (bcrypt 5 raises
instead of cutting), bcrypt with ``bcrypt_rounds``. Passwords never appear in messages or reprs.
"""

from __future__ import annotations

import getpass
import sys
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from matrix_stack.base.errors import MatrixStackError, UsageError

DEFAULT_BCRYPT_ROUNDS = 12  # synapse/config/registration.py
BCRYPT_MAX_BYTES = 72
# bcrypt.gensalt accepts 4 to 31 rounds and raises ValueError outside.
MIN_BCRYPT_ROUNDS = 4
MAX_BCRYPT_ROUNDS = 31
# Synapse refuses longer passwords in every API that sets one (synapse/rest/admin/users.py).
MAX_PASSWORD_LENGTH = 512


@dataclass(frozen=True)
class PasswordSettings:
    """Synapse's bcrypt cost and pepper; the pepper is a secret, so it is left out of repr."""

    rounds: int = DEFAULT_BCRYPT_ROUNDS
    pepper: str = field(default="", repr=False)


def password_settings(config: Mapping[str, Any]) -> PasswordSettings:
    """Return the hashing settings of a merged Synapse config; refuse if it ignores local passwords.

    Mirrors synapse/config/auth.py and SetPasswordHandler, which refuses a new password unless
    password login is enabled and checked against Synapse's own database.
    """
    password_config = config.get("password_config") or {}
    if not isinstance(password_config, Mapping):
        raise MatrixStackError("password_config in Synapse's configuration is not a mapping")
    service = config.get("matrix_authentication_service") or {}
    delegated = isinstance(service, Mapping) and bool(service.get("enabled", False))
    if delegated:
        raise MatrixStackError(
            "Synapse delegates logins to the Matrix Authentication Service; "
            "set the password there instead"
        )
    enabled = password_config.get("enabled", True)
    if not enabled or enabled == "only_for_reauth":
        raise MatrixStackError(
            "password login is disabled in Synapse's configuration (password_config.enabled); "
            "a password set offline could not be used"
        )
    if not password_config.get("localdb_enabled", True):
        raise MatrixStackError(
            "Synapse does not check passwords against its database "
            "(password_config.localdb_enabled is false); a password set offline would be unused"
        )
    pepper = password_config.get("pepper", "")
    if not isinstance(pepper, str):
        raise MatrixStackError("password_config.pepper in Synapse's configuration is not a string")
    rounds = config.get("bcrypt_rounds", DEFAULT_BCRYPT_ROUNDS)
    if (
        not isinstance(rounds, int)
        or isinstance(rounds, bool)
        or not MIN_BCRYPT_ROUNDS <= rounds <= MAX_BCRYPT_ROUNDS
    ):
        raise MatrixStackError(
            f"bcrypt_rounds in Synapse's configuration is {rounds!r}; "
            f"it must be a whole number from {MIN_BCRYPT_ROUNDS} to {MAX_BCRYPT_ROUNDS}"
        )
    return PasswordSettings(rounds=rounds, pepper=pepper)


def bytes_to_hash(password: str, pepper: str) -> bytes:
    """Return what Synapse feeds to bcrypt: NFKC password, then pepper, UTF-8, first 72 bytes."""
    normalised = unicodedata.normalize("NFKC", password)
    return (normalised.encode("utf8") + pepper.encode("utf8"))[:BCRYPT_MAX_BYTES]


def hash_password(password: str, settings: PasswordSettings) -> str:
    """Return the bcrypt hash Synapse would store for password ("$2b$<rounds>$...")."""
    import bcrypt

    salt = bcrypt.gensalt(settings.rounds)
    return bcrypt.hashpw(bytes_to_hash(password, settings.pepper), salt).decode("ascii")


def check_password(
    password: str, stored_hash: str | bytes | None, settings: PasswordSettings
) -> bool:
    """Return whether Synapse would accept password for stored_hash; no hash never matches."""
    import bcrypt

    if not stored_hash:
        return False
    if isinstance(stored_hash, str):
        stored_hash = stored_hash.encode("ascii")
    try:
        return bcrypt.checkpw(bytes_to_hash(password, settings.pepper), stored_hash)
    except ValueError:
        # Synapse would fail the login with an internal error; say why instead.
        raise MatrixStackError("the stored password hash is not a bcrypt hash") from None


def check_new_password(password: str, source: str) -> str:
    """Return password if Synapse would take it as a new one, else raise naming only its source."""
    if not password:
        raise UsageError(f"{source} is empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsageError(
            f"{source} is longer than {MAX_PASSWORD_LENGTH} characters, Synapse's limit"
        )
    if "\0" in password:
        raise UsageError(f"{source} contains a NUL character, which Synapse refuses")
    if "\n" in password or "\r" in password:
        raise UsageError(f"{source} must hold the password on one line")
    return password


def read_password_file(password_file: str, stdin: TextIO) -> str:
    """Return the content of password_file ("-": stdin) less one trailing newline."""
    source = "standard input" if password_file == "-" else f"the password file {password_file}"
    try:
        if password_file == "-":
            text = stdin.read()
        else:
            with open(password_file, encoding="utf-8") as stream:
                text = stream.read()
    except OSError as error:
        raise UsageError(f"cannot read {source}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not UTF-8 text") from None
    return check_new_password(text.removesuffix("\n"), source)


def read_new_password(
    password_file: str | None,
    *,
    prompt: Callable[[str], str] = getpass.getpass,
    stdin: TextIO | None = None,
) -> str:
    """Return a new password from password_file ("-": stdin), else prompt twice and compare."""
    if password_file is not None:
        return read_password_file(password_file, sys.stdin if stdin is None else stdin)
    try:
        password = prompt("New password: ")
        again = prompt("Again: ")
    except EOFError:
        raise UsageError("no password typed; give one with --password-file") from None
    if password != again:
        raise UsageError("the two passwords differ")
    return check_new_password(password, "the password")
