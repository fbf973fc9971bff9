"""The one way this package runs other programs: argv lists, no shell, secrets masked."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from matrix_stack.base.errors import CommandError
from matrix_stack.base.phases import phase

# pg_dump and pg_restore of a large database: generous, but never forever.
STREAM_TIMEOUT = 6 * 3600
NEWLINE = "\n"


def mask_argv(argv: Sequence[str], secrets: Sequence[str] = ()) -> str:
    """Return argv as one printable line with every secret replaced by ***."""
    shown = []
    for arg in argv:
        for secret in secrets:
            if secret:
                arg = arg.replace(secret, "***")
        shown.append(arg)
    return " ".join(shown)


def run(
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    secrets: Sequence[str] = (),
    timeout: float | None = 300,
    user: str | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[str]:
    """Run argv and capture its output; raise CommandError with its last error line on failure.

    user: run as that account (its group, no supplementary groups, its HOME, USER, LOGNAME),
    as runuser -u does: the one way this package runs a program as another user.
    """
    identity = _identity(argv, user, env)
    try:
        # Timed when MATRIX_STACK_PHASES asks (make bench): the program and its first arguments.
        with phase(f"run {mask_argv(argv[:3], secrets).partition(NEWLINE)[0][:80]}"):
            result = subprocess.run(
                list(argv),
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                pass_fds=tuple(pass_fds),
                **identity,
            )
    except FileNotFoundError as error:
        raise CommandError(f"{argv[0]} is not installed ({error.strerror})") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{mask_argv(argv, secrets)} did not finish in {timeout} s") from None
    if check and result.returncode != 0:
        raise CommandError(
            f"{mask_argv(argv, secrets)} failed (exit {result.returncode}): "
            f"{last_line(result.stderr or result.stdout, secrets)}"
        )
    return result


def run_streaming(
    argv: Sequence[str],
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    timeout: float | None = STREAM_TIMEOUT,
    user: str | None = None,
    secrets: Sequence[str] = (),
) -> None:
    """Run argv with its standard input and/or output connected to binary files (pg_dump into
    an archive member, pg_restore from one), its errors captured; raise CommandError with the
    last error line when it fails or outlives timeout (the process is killed then)."""
    identity = _identity(argv, user, None)
    try:
        result = subprocess.run(
            list(argv),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
            **identity,
        )
    except FileNotFoundError as error:
        raise CommandError(f"{argv[0]} is not installed ({error.strerror})") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{mask_argv(argv, secrets)} did not finish in {timeout} s") from None
    if result.returncode != 0:
        errors = result.stderr.decode("utf-8", "replace")
        raise CommandError(
            f"{argv[0]} failed (exit {result.returncode}): {last_line(errors, secrets)}"
        )


def _identity(
    argv: Sequence[str], user: str | None, env: Mapping[str, str] | None
) -> dict[str, Any]:
    """Return subprocess.run's arguments that make the child run as user (None: as we are);
    an account that does not exist is a CommandError, as runuser's refusal was."""
    if user is None:
        return {"env": dict(env) if env is not None else None}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise CommandError(
            f"{argv[0]} not run: the user {user} does not exist (is its package installed?)"
        ) from None
    environment = dict(os.environ if env is None else env)
    environment.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": environment}


def last_line(text: str, secrets: Sequence[str] = ()) -> str:
    """Return the last non-empty line of text, secrets masked, or a placeholder."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output"
    return mask_argv([lines[-1]], secrets)
