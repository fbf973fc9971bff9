"""Run one call as another unix user, for PostgreSQL's peer authentication (role = unix user)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from matrix_stack.errors import MatrixStackError


def peer_user(connect_args: dict[str, object]) -> str | None:
    """Return the unix user to become for a peer-authenticated socket connection, if any."""
    host = str(connect_args.get("host") or "")
    user = connect_args.get("user")
    if os.geteuid() != 0 or not isinstance(user, str) or (host and not host.startswith("/")):
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    return user


def call_as_user(user: str, call: Callable[[], int]) -> int:
    """Return call() run in a child process as user; its MatrixStackError comes back as one."""
    entry = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child leaves through os._exit
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            message = f"ok {call()}"
        except MatrixStackError as error:
            message = f"error {error}"
        except BaseException as error:  # the parent must hear of it, whatever it is
            message = f"error {type(error).__name__}: {error}"
        os.write(write_end, message.encode("utf-8"))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode("utf-8", "replace")
    os.waitpid(child, 0)
    status, _, detail = answer.partition(" ")
    if status != "ok":
        raise MatrixStackError(detail or f"the process running as {user} died")
    return int(detail)
