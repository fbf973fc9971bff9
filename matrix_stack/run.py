"""The one way this package runs other programs: argv lists, no shell, secrets masked."""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Mapping, Sequence

from matrix_stack.errors import CommandError


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
    """Run argv and capture its output; raise CommandError with its last error line on failure."""
    group = pwd.getpwnam(user).pw_gid if user else None
    try:
        result = subprocess.run(
            list(argv),
            input=input_text,
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=user,
            group=group,
            pass_fds=tuple(pass_fds),
            extra_groups=[] if user else None,
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


def last_line(text: str, secrets: Sequence[str] = ()) -> str:
    """Return the last non-empty line of text, secrets masked, or a placeholder."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output"
    return mask_argv([lines[-1]], secrets)
