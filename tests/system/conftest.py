"""pytest wiring for the booted-system tests (marker ``system``).

Policy:
* ``MATRIX_STACK_SYSTEM_TESTS=1`` (set by ``make check``): system tests run; a missing
  prerequisite (not root, no systemd-nspawn, no mmdebstrap, no built .deb) is a FAILURE.
* otherwise: system tests are skipped.
* ``MATRIX_STACK_TARGET`` picks the booted root: ``trixie-py3`` (Debian 13 with the Synapse
  project's matrix-synapse-py3, the default) or ``sid`` (Debian's own matrix-synapse).
  ``make check`` runs every test on trixie-py3 and those marked ``every_target`` (what
  Debian's packaging of Synapse changes) on sid as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.testbed import (
    CACHE_DIR,
    Container,
    Target,
    cleanup_stale,
    current_target,
    ensure_base_tarball,
    missing_prerequisites,
)

ENABLE_VAR = "MATRIX_STACK_SYSTEM_TESTS"
DEB_VAR = "MATRIX_STACK_DEB"
SKIP_REASON = "set MATRIX_STACK_SYSTEM_TESTS=1 (make check, as root) to run booted-system tests"

ContainerFactory = Callable[..., Container]


def system_tests_enabled() -> bool:
    return os.environ.get(ENABLE_VAR, "") == "1"


def require_system() -> None:
    """Skip (not enabled) or fail (enabled but the host cannot run them)."""
    if not system_tests_enabled():
        pytest.skip(SKIP_REASON)
    problems = missing_prerequisites()
    if problems:
        pytest.fail(
            f"{ENABLE_VAR}=1 but this host cannot run booted-system tests: " + "; ".join(problems),
            pytrace=False,
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"system: booted-system test (systemd-nspawn container; needs root and {ENABLE_VAR}=1)",
    )
    config.addinivalue_line(
        "markers",
        "every_target: exercises what differs between Synapse packagings; runs on sid too",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("system") is not None:
        require_system()


_stale_cleaned = False


@pytest.fixture(scope="session")
def target() -> Target:
    """The Debian release and Synapse package of this run ($MATRIX_STACK_TARGET)."""
    return current_target()


@pytest.fixture(scope="session")
def base_tarball(target: Target) -> Path:
    """The target's cached mmdebstrap root (built on first use; BaseImageError if the archive
    is broken)."""
    global _stale_cleaned
    require_system()
    if not _stale_cleaned:
        cleanup_stale()
        _stale_cleaned = True
    cache = Path(os.environ.get("MATRIX_STACK_TEST_CACHE", str(CACHE_DIR)))
    return ensure_base_tarball(cache, target=target)


@pytest.fixture(scope="session")
def deb_path() -> Path:
    """The freshly built matrix-stack .deb, from $MATRIX_STACK_DEB (set by the Makefile)."""
    require_system()
    value = os.environ.get(DEB_VAR, "")
    if not value:
        pytest.fail(
            f"{ENABLE_VAR}=1 but {DEB_VAR} is not set: it must name the built .deb "
            "(make check sets it)",
            pytrace=False,
        )
    path = Path(value).resolve()
    if not path.is_file():
        pytest.fail(f"{DEB_VAR}={value}: no such file (build the package first)", pytrace=False)
    return path


@pytest.fixture
def container_factory(base_tarball: Path) -> Iterator[ContainerFactory]:
    """``make(**kwargs) -> Container`` (kwargs as for Container, minus the tarball).

    Every container made is closed (stopped, unmounted, removed) when the test ends, pass or
    fail; a cleanup failure is reported as a test error.
    """
    made: list[Container] = []

    def make(**kwargs: Any) -> Container:
        container = Container(base_tarball, **kwargs)
        made.append(container)
        return container

    yield make

    errors: list[str] = []
    for container in reversed(made):
        try:
            container.close()
        except Exception as exc:  # noqa: BLE001 - close the others too, then report
            errors.append(f"{container.machine}: {exc}")
    if errors:
        pytest.fail("container cleanup failed: " + "; ".join(errors), pytrace=False)
