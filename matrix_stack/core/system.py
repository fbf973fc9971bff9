"""The units an apply restarts, and what it asks of the running system (one object, replaced
in tests and absent for a temporary root).

Also the record of units whose files changed but which were not restarted yet: written
before any file is, removed once they restarted, so that the next apply finishes one killed
in between (a crash, a power cut); and the line saying what a failed apply left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from matrix_stack.base.files import FileSpec, host_path, write_atomic
from matrix_stack.base.paths import (
    APACHE_SITE_PATH,
    APACHE_SITES_ENABLED,
    PENDING_RESTARTS_PATH,
    SERVER_NAME_PATH,
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
)
from matrix_stack.base.run import run
from matrix_stack.base.undo import describe_problems
from matrix_stack.core import services
from matrix_stack.core.settings import Settings
from matrix_stack.core.tls import SELF_SIGNED_CERT_PATH, SELF_SIGNED_KEY_PATH
from matrix_stack.core.workers import KEY_VALUE_SERVERS, WORKER_UNIT, WORKERS_DIR

# The order units restart in: Synapse's replication bus first, then Synapse's main process
# (its workers wait for its replication listener), its workers, Apache last (it proxies them).
UNIT_ORDER = ("matrix-synapse", "coturn", "apache2")
KEY_VALUE_UNITS = tuple(server.unit for server in KEY_VALUE_SERVERS)
WORKER_UNIT_PREFIX = WORKER_UNIT.format(name="")

# Which units read each file written; files served as they are need no reload.
UNITS_OF_PATH: dict[Path, tuple[str, ...]] = {
    SYNAPSE_CONF_PATH: ("matrix-synapse",),
    SERVER_NAME_PATH: ("matrix-synapse",),
    TURNSERVER_CONF_PATH: ("coturn",),
    APACHE_SITE_PATH: ("apache2",),
    SELF_SIGNED_CERT_PATH: ("apache2", "coturn"),
    SELF_SIGNED_KEY_PATH: ("apache2", "coturn"),
}


class System(Protocol):
    """The programs an apply runs: validation, Apache's parts, the units."""

    def validate_synapse(self, candidate: str, candidate_name: str) -> None: ...

    def prepare_database(self, settings: Settings, root: Path) -> list[str]: ...

    def database_password_check(self) -> Callable[[Settings, Path], object] | None: ...

    def disable_site(self, name: str, root: Path) -> None: ...

    def probe_sqlite(self, path: Path, probe: str, *arguments: str) -> str | None: ...

    def enable_apache(self, settings: Settings, root: Path) -> tuple[str, ...]: ...

    def validate_apache(self) -> None: ...

    def disable_apache_site(self) -> None: ...

    def restart(self, units: Sequence[str]) -> tuple[list[str], list[str]]: ...

    def set_turn_service(self, enabled: bool, root: Path) -> list[str]: ...

    def set_backup_timer(self, daily: bool) -> list[str]: ...

    def in_maintainer_script(self) -> bool: ...

    def check_workers(self, settings: Settings) -> None: ...

    def stop_workers(self, keep: Sequence[str]) -> list[str]: ...

    def start_workers(self, units: Sequence[str]) -> list[str]: ...


class LiveSystem:
    """This host: Synapse's config check, a2enmod, apache2ctl, systemctl or deb-systemd-invoke."""

    def validate_synapse(self, candidate: str, candidate_name: str) -> None:
        services.validate_synapse(candidate, candidate_name)

    def prepare_database(self, settings: Settings, root: Path) -> list[str]:
        """Check the database switch before anything is written (postgres.prepare)."""
        from matrix_stack.core import postgres

        return postgres.prepare(settings, root)

    def database_password_check(self) -> Callable[[Settings, Path], object] | None:
        """Return the check a new remote PostgreSQL password file must pass."""
        from matrix_stack.core import postgres

        return postgres.check_remote

    def disable_site(self, name: str, root: Path) -> None:
        run(["a2dissite", "-m", "-q", name])

    def probe_sqlite(self, path: Path, probe: str, *arguments: str) -> str | None:
        """Run a Python probe on a SQLite file as its owner (postgres.probe_sqlite_as_owner)."""
        from matrix_stack.core import postgres

        return postgres.probe_sqlite_as_owner(path, probe, *arguments)

    def enable_apache(self, settings: Settings, root: Path) -> tuple[str, ...]:
        return services.ensure_apache_enabled(settings, root)

    def validate_apache(self) -> None:
        services.validate_apache()

    def disable_apache_site(self) -> None:
        services.disable_apache_site()

    def restart(self, units: Sequence[str]) -> tuple[list[str], list[str]]:
        return services.restart(units)

    def set_turn_service(self, enabled: bool, root: Path) -> list[str]:
        return services.set_turn_service(enabled, root)

    def set_backup_timer(self, daily: bool) -> list[str]:
        return services.set_backup_timer(daily)

    def in_maintainer_script(self) -> bool:
        return services.in_maintainer_script()

    def check_workers(self, settings: Settings) -> None:
        services.check_worker_support()

    def stop_workers(self, keep: Sequence[str]) -> list[str]:
        return services.stop_workers(keep)

    def start_workers(self, units: Sequence[str]) -> list[str]:
        return services.start_workers(units)


class NoSystem:
    """A temporary root (tests, image builds): files only, no program and no unit touched."""

    def validate_synapse(self, candidate: str, candidate_name: str) -> None:
        return None

    def prepare_database(self, settings: Settings, root: Path) -> list[str]:
        return []

    def database_password_check(self) -> Callable[[Settings, Path], object] | None:
        return None

    def disable_site(self, name: str, root: Path) -> None:
        host_path(APACHE_SITES_ENABLED / f"{name}.conf", root).unlink(missing_ok=True)

    def probe_sqlite(self, path: Path, probe: str, *arguments: str) -> str | None:
        return None  # no account of the host owns a temporary root's files

    def enable_apache(self, settings: Settings, root: Path) -> tuple[str, ...]:
        return ()

    def validate_apache(self) -> None:
        return None

    def disable_apache_site(self) -> None:
        return None

    def restart(self, units: Sequence[str]) -> tuple[list[str], list[str]]:
        return [], []

    def set_turn_service(self, enabled: bool, root: Path) -> list[str]:
        return []

    def set_backup_timer(self, daily: bool) -> list[str]:
        return []

    def in_maintainer_script(self) -> bool:
        return False

    def check_workers(self, settings: Settings) -> None:
        return None

    def stop_workers(self, keep: Sequence[str]) -> list[str]:
        return []

    def start_workers(self, units: Sequence[str]) -> list[str]:
        return []


def system_for(root: Path) -> System:
    """Return the live system for the real root, none for a temporary one."""
    return LiveSystem() if root == Path("/") else NoSystem()


def _rank(unit: str) -> tuple[int, str] | None:
    """Return where unit restarts in the order (None: not a unit apply restarts)."""
    if unit in KEY_VALUE_UNITS:
        return (0, unit)
    if unit == "matrix-synapse":
        return (1, unit)
    if unit.startswith(WORKER_UNIT_PREFIX) and len(unit) > len(WORKER_UNIT_PREFIX):
        return (2, unit)
    if unit in UNIT_ORDER:
        return (3 + UNIT_ORDER.index(unit), unit)
    return None


def worker_side(unit: str) -> bool:
    """Return whether unit is a worker's or the Valkey/Redis instance's (workers only)."""
    return unit in KEY_VALUE_UNITS or (_rank(unit) or (0, ""))[0] == 2


def in_order(units: Iterable[str]) -> list[str]:
    """Return the units apply restarts, each once, in restart order."""
    ranked = {rank: unit for unit in units if (rank := _rank(unit)) is not None}
    return [ranked[rank] for rank in sorted(ranked)]


def read_pending(root: Path) -> list[str]:
    """Return the units an earlier apply left to restart (none: no record)."""
    try:
        text = host_path(PENDING_RESTARTS_PATH, root).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return in_order(text.split())


def write_pending(units: Iterable[str], root: Path) -> None:
    """Record the units to restart (root only, atomic); no unit: remove the record."""
    ordered = in_order(units)
    if not ordered:
        host_path(PENDING_RESTARTS_PATH, root).unlink(missing_ok=True)
        return
    text = "".join(f"{unit}\n" for unit in ordered)
    write_atomic(FileSpec(PENDING_RESTARTS_PATH, text, 0o600), root)


def restart_pending(system: System, root: Path) -> tuple[list[str], list[str]]:
    """Restart the units an interrupted apply left pending, saying so.

    Return the lines, and the units that failed again (they stay recorded).
    """
    pending = read_pending(root)
    if not pending:
        return [], []
    restarted, failed = system.restart(pending)
    write_pending(failed, root)
    lines = [f"{line} (left pending by an interrupted apply)" for line in restarted]
    lines += [f"warning: {unit}, left pending by an interrupted apply, failed to start "
              f"(see: journalctl -u {unit})" for unit in failed]
    return lines, failed


def units_of(paths: Iterable[Path], workers: Iterable[str] = ()) -> list[str]:
    """Return the units that read any of paths; workers (units) read Synapse's files too."""
    workers = list(workers)
    units: list[str] = []
    for path in paths:
        units += UNITS_OF_PATH.get(path, ())
        if "matrix-synapse" in UNITS_OF_PATH.get(path, ()):
            units += workers
        if str(path.parent) == WORKERS_DIR and path.suffix == ".yaml":
            units.append(WORKER_UNIT.format(name=path.stem))
        units += [server.unit for server in KEY_VALUE_SERVERS
                  if str(path) == server.config_path]
    return units


NOTHING_CHANGED = "nothing was changed"


def describe_failure(error: BaseException) -> str | None:
    """Return 'failed (reason)' or 'interrupted' for an error that is no bug, else None."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return f"failed ({error.strerror or error}{where})"
    return None


def describe_state(
    reverted: list[Path], problems: dict[Path, str], restarted: list[str], failed: list[str]
) -> str:
    """Return what a rolled-back change left: which files are back, which units run on them."""
    if not (reverted or problems or restarted or failed):
        return NOTHING_CHANGED
    if problems:
        stuck = describe_problems(problems)
        state = f"could not put back {stuck}; every other file is back as it was"
    else:
        state = "every file is back as it was"
    if restarted:
        verb = "was" if len(restarted) == 1 else "were"
        state += f" and {', '.join(restarted)} {verb} restarted on them"
    if failed:
        hints = "; ".join(f"see: journalctl -u {unit}" for unit in failed)
        state += f"; {', '.join(failed)} did not start again ({hints})"
    return state
