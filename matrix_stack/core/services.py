"""Validate configurations with the programs that read them, enable Apache parts, restart units."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from matrix_stack.base.errors import CommandError, MatrixStackError, ValidationError
from matrix_stack.base.files import create_exclusive, host_path, lookup_ids
from matrix_stack.base.paths import (
    APACHE_MODS_ENABLED,
    APACHE_MODULES_RECORD,
    APACHE_SITES_ENABLED,
    APACHE_SITES_RECORD,
    COTURN_DISABLED_RECORD,
    COTURN_OWN_CONF,
    SYSTEMD_RUNNING,
)
from matrix_stack.base.paths import CONF_D_PATH as SYNAPSE_CONF_DIR
from matrix_stack.base.paths import HOMESERVER_PATH as SYNAPSE_CONFIG_PATH
from matrix_stack.base.phases import phase
from matrix_stack.base.run import last_line, run
from matrix_stack.core.host import host_names
from matrix_stack.core.settings import Settings, TlsMode

SYNAPSE_USER = "matrix-synapse"
# Debian's matrix-synapse runs on the system python3; the Synapse project's
# matrix-synapse-py3 in its own virtualenv.
SYNAPSE_PYTHONS = (Path("/opt/venvs/matrix-synapse/bin/python"), Path("/usr/bin/python3"))
APACHE_SITE = "matrix-stack"
# Modules matrix-stack enabled itself (they were off): purge turns exactly these off again.
# Debian's "It works" site; see _default_site_shadows.
DEFAULT_SITE = "000-default"
# coturn disabled because TURN was turned off; purge and TURN on enable it again.

# Load the configuration exactly as the unit's ExecStartPre does (generating a missing signing
# key as the matrix-synapse user), without starting the server.
_SYNAPSE_CHECK = (
    "import sys\n"
    "from synapse.config.homeserver import HomeServerConfig as Config\n"
    "Config.load_or_generate_config('matrix-stack check', sys.argv[1:] + ['--generate-keys'])\n"
    "Config.load_config('matrix-stack check', sys.argv[1:])\n"
)


def in_maintainer_script() -> bool:
    """Return whether dpkg runs us (restarts then go through deb-systemd-invoke)."""
    return "DPKG_MAINTSCRIPT_NAME" in os.environ


def synapse_python() -> Path:
    for python in SYNAPSE_PYTHONS:
        if python.exists():
            return python
    raise MatrixStackError("Synapse is not installed (matrix-synapse or matrix-synapse-py3)")


def validate_synapse(candidate: str, candidate_name: str) -> None:
    """Load homeserver.yaml plus conf.d with candidate in place of our file, as Synapse would.

    Raise ValidationError with Synapse's own message when it refuses the configuration.
    """
    python = synapse_python()
    uid, gid = lookup_ids(SYNAPSE_USER, "root")
    with tempfile.TemporaryDirectory(prefix="matrix-stack-check-") as stage:
        # Filled while root's (mode 0700), given to Synapse's account last: once it owns the
        # directory it could plant links there, and root must do nothing more in it by path.
        for name, data in read_root_conf_dir(SYNAPSE_CONF_DIR).items():
            if name != candidate_name:
                _write_staged(Path(stage) / name, data, uid, gid)
        _write_staged(Path(stage) / candidate_name, candidate.encode("utf-8"), uid, gid)
        os.chown(stage, uid, gid, follow_symlinks=False)
        result = run(
            [
                str(python), "-c", _SYNAPSE_CHECK,
                "--config-path", str(SYNAPSE_CONFIG_PATH),
                "--config-path", stage,
            ],
            check=False,
            user=SYNAPSE_USER,
            timeout=120,
        )
    if result.returncode != 0:
        raise ValidationError(
            f"Synapse refuses the new configuration: {last_line(result.stderr or result.stdout)}"
        )


def read_root_conf_dir(directory: Path) -> dict[str, bytes]:
    """Return each *.yaml file of a directory root alone can write, by name.

    matrix-synapse-py3 gives /etc/matrix-synapse itself to Synapse's account, which could
    swap conf.d for a directory of its own with links to root's files: those would then be
    copied where it reads. So conf.d is opened without following a link and must be root's;
    what root put in it (links included) is read through that descriptor.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(directory, flags)
    except OSError as error:
        raise MatrixStackError(
            f"cannot read {directory}: {error.strerror} (it must be a directory, not a link)"
        ) from None
    try:
        status = os.fstat(descriptor)
        if status.st_uid != 0 or status.st_mode & 0o022:
            raise MatrixStackError(
                f"{directory} must belong to root and be writable by root alone (it is uid "
                f"{status.st_uid}, mode {status.st_mode & 0o7777:o}): fix it with "
                f"chown root: {directory} && chmod 755 {directory}"
            )
        contents = {}
        for name in sorted(os.listdir(descriptor)):
            if name.endswith(".yaml"):
                with open(name, "rb", opener=lambda n, f: os.open(n, f, dir_fd=descriptor)) as file:
                    contents[name] = file.read()
        return contents
    finally:
        os.close(descriptor)


def _write_staged(path: Path, data: bytes, uid: int, gid: int) -> None:
    with os.fdopen(create_exclusive(path, uid, gid, 0o600), "wb") as stream:
        stream.write(data)


def apache_modules(settings: Settings) -> tuple[str, ...]:
    """Return the Apache modules the rendered site needs."""
    modules = ["proxy", "proxy_http", "headers", "alias", "rewrite", "deflate", "filter"]
    if settings.behind_proxy:
        modules.append("remoteip")
    else:
        modules += ["ssl", "http2"]
    if settings.tls is TlsMode.ACME and not settings.behind_proxy:
        modules.append("md")
    if settings.workers != "off":
        # balancer:// in front of the workers of each kind.
        modules += ["slotmem_shm", "proxy_balancer", "lbmethod_byrequests"]
    return tuple(modules)


def _a2query(flag: str, name: str) -> int:
    return run(["a2query", flag, name], check=False).returncode


def record(path: Path, names: list[str], root: Path) -> None:
    """Add names to a record of what matrix-stack changed (postrm purge undoes exactly that)."""
    if not names:
        return
    record = host_path(path, root)
    record.parent.mkdir(parents=True, exist_ok=True)
    known = (record.read_text().split() if record.exists() else []) + names
    record.write_text("".join(f"{name}\n" for name in dict.fromkeys(known)))


def _default_site_shadows(settings: Settings, root: Path) -> bool:
    """Return whether Debian's stock default site would answer port 80 for one of our names.

    000-default.conf has no ServerName, so Apache gives it the host name, which is usually
    the Matrix server name; being first, it would win over our redirect. Only the untouched
    stock file is disabled (an admin's edited copy is theirs), and purge enables it again.
    """
    if DEFAULT_SITE not in _enabled_sites(root):
        return False
    site = Path("/etc/apache2/sites-available") / f"{DEFAULT_SITE}.conf"
    hostnames = set(host_names())
    return is_stock_conffile("apache2", site) and bool(hostnames & set(settings.certificate_names))


def is_stock_conffile(package: str, path: Path) -> bool:
    """Return whether path is still the conffile package shipped (same MD5 as dpkg recorded)."""
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", package], check=False).stdout
    recorded = next(
        (line.split()[1] for line in conffiles.splitlines() if line.split()[:1] == [str(path)]),
        None,
    )
    try:
        current = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    except FileNotFoundError:
        return False
    return current == recorded


def _enabled(directory: Path, suffix: str, root: Path) -> set[str]:
    """Return the modules (.load) or sites (.conf) linked in an Apache *-enabled directory."""
    links = host_path(directory, root).glob(f"*{suffix}")
    return {path.name.removesuffix(suffix) for path in links}


def _enabled_modules(root: Path) -> set[str]:
    return _enabled(APACHE_MODS_ENABLED, ".load", root)


def _enabled_sites(root: Path) -> set[str]:
    return _enabled(APACHE_SITES_ENABLED, ".conf", root)


def ensure_apache_enabled(settings: Settings, root: Path = Path("/")) -> tuple[str, ...]:
    """Enable the modules the site needs and the site itself; return what was newly enabled.

    Like apache2-maintscript-helper, a module or site the admin disabled is never re-enabled.
    a2query is asked only about what is not linked already (a link is what it calls enabled),
    and the missing modules are enabled by one a2enmod.
    """
    enabled: list[str] = []
    before = _enabled_modules(root)
    missing = [module for module in apache_modules(settings) if module not in before]
    for module in missing:
        if _a2query("-m", module) == 32:
            raise MatrixStackError(
                f"Apache module {module} was disabled by the administrator and matrix-stack "
                f"needs it; enable it with: a2enmod {module}"
            )
    if missing:
        run(["a2enmod", "-m", "-q", *missing])
    # a2enmod also enables what a module depends on (ssl: socache_shmcb); record them all.
    enabled = sorted(_enabled_modules(root) - before)
    record(APACHE_MODULES_RECORD, enabled, root)
    if _default_site_shadows(settings, root):
        run(["a2dissite", "-m", "-q", DEFAULT_SITE])
        record(APACHE_SITES_RECORD, [DEFAULT_SITE], root)
        enabled.append(f"disabled-site:{DEFAULT_SITE}")
    site_state = 0 if APACHE_SITE in _enabled_sites(root) else _a2query("-s", APACHE_SITE)
    if site_state == 32:
        print(
            f"matrix-stack: the Apache site {APACHE_SITE} was disabled by the administrator; "
            f"left disabled (a2ensite {APACHE_SITE} serves the stack)"
        )
    elif site_state != 0:
        run(["a2ensite", "-m", "-q", APACHE_SITE])
        enabled.append(f"site:{APACHE_SITE}")
    return tuple(enabled)


def disable_apache_site() -> None:
    """Disable the site again (after a failed configuration test on first enabling)."""
    run(["a2dissite", "-m", "-q", APACHE_SITE], check=False)


def validate_apache() -> None:
    """Run apache2ctl configtest; raise ValidationError with its complaint on failure."""
    result = run(["apache2ctl", "configtest"], check=False)
    if result.returncode != 0:
        raise ValidationError(f"Apache refuses the configuration: {last_line(result.stderr)}")


def restart(units: Iterable[str]) -> tuple[list[str], list[str]]:
    """Restart (Apache: reload) each unit.

    Return one line per action, and the units that failed to start. Inside a maintainer
    script this goes through deb-systemd-invoke, which honours policy-rc.d. Without a
    running systemd (a chroot) nothing is started.
    """
    units = list(units)
    if not SYSTEMD_RUNNING.exists():
        return ([f"systemd is not running: not restarting {' '.join(units)}"] if units else []), []
    tool = ["deb-systemd-invoke"] if in_maintainer_script() else ["systemctl"]
    lines, failed = [], []
    for unit in units:
        action = "reload-or-restart" if unit == "apache2" else "restart"
        try:
            with phase(f"{action} {unit}"):
                run([*tool, action, f"{unit}.service"], timeout=180)
        except CommandError:
            failed.append(unit)
            continue
        lines.append(f"{action} {unit}")
    return lines, failed


def switch_unit(unit: str, on: bool, *, check: bool) -> None:
    """Enable and start a unit, or stop and disable it; in a maintainer script, start and stop
    go through deb-systemd-invoke (policy-rc.d), else systemctl (whose failure raises when
    check).

    The unit is another package's (coturn's): deb-systemd-helper keeps that package's own
    enable state and, once a unit was disabled, never enables it again, so systemctl enable.
    """
    if in_maintainer_script():
        run(["systemctl", "enable" if on else "disable", unit], check=False, timeout=180)
        run(["deb-systemd-invoke", "start" if on else "stop", unit], check=False, timeout=180)
    else:
        run(["systemctl", "enable" if on else "disable", "--now", unit], check=check,
            timeout=180)


def synapse_unit(action: str, *, check: bool = True) -> None:
    """Start or stop Synapse, waiting for systemd to finish."""
    run(["systemctl", action, "matrix-synapse.service"], check=check, timeout=300)


def set_turn_service(enabled: bool, root: Path = Path("/")) -> list[str]:
    """TURN off: stop and disable coturn (recorded); TURN on again: undo exactly that.

    A coturn the administrator disabled themselves is left alone.
    """
    if not SYSTEMD_RUNNING.exists():
        return []
    marker = host_path(COTURN_DISABLED_RECORD, root)
    if not enabled:
        state = run(["systemctl", "is-enabled", "coturn.service"], check=False).stdout.strip()
        if state != "enabled":
            return []
        switch_unit("coturn.service", False, check=False)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("coturn was disabled by matrix-stack (matrix-stack/turn-enable)\n")
        return ["stop and disable coturn (TURN is off)"]
    if not marker.exists():
        return []
    switch_unit("coturn.service", True, check=False)
    marker.unlink()
    return ["enable and start coturn (TURN is on)"]




def stop_open_coturn(ours: Path) -> bool:
    """Stop coturn while matrix-stack's configuration (ours) is not written yet and coturn
    runs Debian's stock /etc/turnserver.conf, where every option is commented out: it would
    relay for anyone. A turnserver.conf the admin wrote keeps coturn running until ours
    replaces it. Return whether coturn was stopped; apply starts it again."""
    if not SYSTEMD_RUNNING.exists() or ours.exists():
        return False
    if not is_stock_conffile("coturn", COTURN_OWN_CONF):
        return False
    run(["deb-systemd-invoke", "stop", "coturn.service"], check=False)
    return True


BACKUP_TIMER = "matrix-stack-backup.timer"


def set_backup_timer(daily: bool) -> list[str]:
    """Enable and start the daily backup timer, or stop and disable it (stack.yaml decides)."""
    if not SYSTEMD_RUNNING.exists():
        return []
    state = run(["systemctl", "is-enabled", BACKUP_TIMER], check=False).stdout.strip()
    if daily == (state == "enabled"):
        return []
    switch_unit(BACKUP_TIMER, daily, check=True)
    return [f"{'enable' if daily else 'disable'} the daily backup ({BACKUP_TIMER})"]


SYNAPSE_TARGET = "matrix-synapse.target"
TARGET_WANTS = Path("/etc/systemd/system") / f"{SYNAPSE_TARGET}.wants"


def check_worker_support(root: Path = Path("/")) -> None:
    """Refuse workers where they cannot run: no Valkey or Redis server installed (the package
    installs none itself), or a Synapse without its Redis client txredisapi (Debian's
    matrix-synapse: the import is tried with Synapse's own Python)."""
    from matrix_stack.core.workers import KEY_VALUE_SERVERS

    if not any(host_path(Path(server.binary), root).exists() for server in KEY_VALUE_SERVERS):
        raise MatrixStackError(
            "matrix-stack/workers: Synapse's workers talk through Valkey (or Redis), which is "
            "not installed; install it with: apt install valkey-server"
        )
    python = synapse_python()
    if run([str(python), "-c", "import txredisapi"], check=False).returncode != 0:
        raise MatrixStackError(
            f"matrix-stack/workers: this Synapse ({python}) lacks txredisapi, its Redis "
            "client, which workers need (Debian's matrix-synapse does not package it); use "
            "the Synapse project's matrix-synapse-py3, or answer off"
        )


def worker_units() -> list[str]:
    """Return every worker unit enabled under matrix-synapse.target or loaded (running)."""
    from matrix_stack.core.workers import WORKER_UNIT

    prefix = WORKER_UNIT.format(name="")
    units = {link.name.removesuffix(".service") for link in TARGET_WANTS.glob(f"{prefix}*")}
    listed = run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                  f"{prefix}*.service"], check=False).stdout
    units.update(line.split()[0].removesuffix(".service") for line in listed.splitlines()
                 if line.split() and line.split()[0].startswith(prefix))
    return sorted(units)


def stop_workers(keep: Iterable[str]) -> list[str]:
    """Stop and disable every worker unit and Valkey/Redis instance not in keep."""
    from matrix_stack.core.workers import KEY_VALUE_SERVERS

    if not SYSTEMD_RUNNING.exists():
        return []
    keep = set(keep)
    lines = []
    for unit in worker_units():
        if unit not in keep:
            switch_unit(f"{unit}.service", False, check=False)
            lines.append(f"stop and disable {unit}")
    for server in KEY_VALUE_SERVERS:
        if server.unit in keep:
            continue
        state = run(["systemctl", "is-enabled", f"{server.unit}.service"], check=False)
        if state.stdout.strip() == "enabled":
            switch_unit(f"{server.unit}.service", False, check=False)
            lines.append(f"stop and disable {server.unit}")
    return lines


def start_workers(units: Iterable[str]) -> list[str]:
    """Enable (and start, if stopped) units and matrix-synapse.target; none: disable it."""
    if not SYSTEMD_RUNNING.exists():
        return []
    lines = []
    units = list(units)
    for unit in [*units, SYNAPSE_TARGET] if units else []:
        name = unit if "." in unit else f"{unit}.service"
        state = run(["systemctl", "is-enabled", name], check=False).stdout.strip()
        if state != "enabled":
            switch_unit(name, True, check=True)
            lines.append(f"enable {unit}")
    if not units:
        state = run(["systemctl", "is-enabled", SYNAPSE_TARGET], check=False).stdout.strip()
        if state == "enabled":
            # Disable only: stopping the target would stop the main process too (PartOf=).
            run(["systemctl", "disable", SYNAPSE_TARGET], check=False, timeout=180)
            lines.append(f"disable {SYNAPSE_TARGET}")
    return lines
