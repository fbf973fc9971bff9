"""as_user: PostgreSQL peer authentication needs the call made as the role's unix user."""

from __future__ import annotations

import os

import pytest

from matrix_stack.as_user import call_as_user, peer_user
from matrix_stack.errors import MatrixStackError

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")


@as_root
def test_peer_user_is_the_role_for_a_socket_connection() -> None:
    assert peer_user({"user": "root", "host": "/var/run/postgresql"}) == "root"
    assert peer_user({"user": "root"}) == "root"


def test_peer_user_is_none_over_tcp_or_for_an_unknown_unix_user() -> None:
    assert peer_user({"user": "root", "host": "db.example.org"}) is None
    assert peer_user({"user": "no-such-user-here", "host": "/var/run/postgresql"}) is None
    assert peer_user({"host": "/var/run/postgresql"}) is None


@as_root
def test_call_as_user_returns_the_result_computed_as_that_user() -> None:
    assert call_as_user("nobody", lambda: os.geteuid()) == 65534


@as_root
def test_call_as_user_passes_a_matrix_stack_error_back_as_one_line() -> None:
    def fail() -> int:
        raise MatrixStackError("cannot connect to Synapse's database matrix_synapse")

    with pytest.raises(MatrixStackError, match="^cannot connect to Synapse's database"):
        call_as_user("nobody", fail)
