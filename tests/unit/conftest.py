"""Fixtures for the unit tests: fake roots in tmp_path, the real ucf and openssl.

An apply into a fresh root registers six files with ucf, and ucf run as root starts a
debconf frontend for each (about 0.2 s a call). Tests that need an applied root therefore
start from a copy of one root applied once per session, with ucf's records moved to the
copy's paths: the state a fresh apply would have left there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from matrix_stack.core.apply import apply
from tests.unit.helpers import AppliedRoot, SynapseCheck, copy_root, make_settings


@pytest.fixture(scope="session", autouse=True)
def private_debconf_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Give ucf's debconf frontend a database of its own, never the host's: the host's is
    locked while anything else on it (apt, another test run) uses it."""
    database = tmp_path_factory.mktemp("debconf") / "config.dat"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEBCONF_DB_REPLACE", f"File{{{database}}}")
        yield


@pytest.fixture(autouse=True)
def private_help_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep matrix-stack-admin --help's cache in the test's directory, never the host's."""
    monkeypatch.setattr("matrix_stack.cli.help_cache.HELP_PATH", f"{tmp_path}/help-{{columns}}")
    return tmp_path


@pytest.fixture(scope="session")
def applied_root_template(tmp_path_factory: pytest.TempPathFactory) -> AppliedRoot:
    """Apply make_settings() once per session; tests copy it and never change it."""
    root = tmp_path_factory.mktemp("applied")
    check = SynapseCheck()
    report = apply(make_settings(root), root=root, validate_synapse=check)
    return AppliedRoot(root, report, tuple(check.calls))


@pytest.fixture
def applied_root(applied_root_template: AppliedRoot, tmp_path: Path) -> Path:
    """Return this test's own copy of the applied root."""
    return copy_root(applied_root_template.root, tmp_path / "root")


@pytest.fixture
def synapse_check() -> SynapseCheck:
    return SynapseCheck()


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run the test with umask 0, so that only explicit modes keep files private."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)
