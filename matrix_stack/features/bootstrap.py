"""Create the first administrator from the debconf answers, once Synapse answers."""

from __future__ import annotations

import time
from collections.abc import Callable

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.secrets import REGISTRATION_SECRET_PATH
from matrix_stack.synapse.api import Synapse, SynapseError, parse_user, read_root_secret

WAIT_SECONDS = 90


def wait_until_answering(synapse: Synapse, seconds: float, sleep: Callable[[float], None]) -> bool:
    """Return whether Synapse answered within the given time (it was just restarted)."""
    deadline = time.monotonic() + seconds
    while True:
        if synapse.answers():
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(1)


def bootstrap_admin(
    name: str,
    password: str,
    server_name: str,
    *,
    synapse: Synapse | None = None,
    wait_seconds: float = WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Create the administrator NAME unless it exists; return one line saying what happened.

    Never raises for a Synapse that does not answer (or not as Synapse): the line then gives
    the command to run.
    """
    later = f"create it later with: matrix-stack-admin user add {name} --admin"
    try:
        user = parse_user(name, server_name)
    except MatrixStackError as error:
        return f"administrator not created: {error}"
    if not password:
        return f"no password was given for the administrator {user}; {later}"
    synapse = synapse or Synapse()
    if not wait_until_answering(synapse, wait_seconds, sleep):
        waited = int(wait_seconds)
        return f"Synapse did not answer within {waited} s, so {user} was not created; {later}"
    try:
        synapse.register(
            user, password, admin=True, shared_secret=read_root_secret(REGISTRATION_SECRET_PATH)
        )
    except SynapseError as error:
        if error.errcode == "M_USER_IN_USE":
            return f"{user} already exists: left unchanged"
        return f"{user} was not created ({error}); {later}"
    except MatrixStackError as error:  # no answer, not Synapse answering, no shared secret
        return f"{user} was not created ({error}); {later}"
    return f"created the administrator {user}"
