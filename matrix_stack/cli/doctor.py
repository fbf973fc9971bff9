"""matrix-stack-admin doctor: every check of the stack in one run, one line each."""

from __future__ import annotations

import argparse
import sys

from matrix_stack.base.errors import MatrixStackError

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from matrix_stack.base.checks import Check
    from matrix_stack.core.settings import Settings

CERTIFICATE_WARNING_DAYS = 14
FREE_SPACE_WARNING = 2 * 1024**3  # bytes
BACKUP_LATE_HOURS = 48


def add_commands(commands: Any) -> None:
    """Register the doctor command on the top-level subparsers."""
    doctor = commands.add_parser(
        "doctor",
        help="check the whole stack, one line per check",
        description="Run every check of the stack, one line each, marked as passed, warning "
        "(!) or failed: services active; ports listening (8008 on loopback, 443, 8448, 3478 "
        "UDP and TCP); the certificate valid (a warning under 14 days); every generated file "
        "in step with stack.yaml or edited locally (ucf); Synapse's version and health; the "
        "federation self-check; the TURN test; the Element version served against the one "
        "configured; free disk space for Synapse's database and media; the mail server Synapse "
        "sends through (connect, EHLO, STARTTLS or TLS, nothing sent), and a warning when "
        "registration is open without mail. The exit status is 1 when any check fails.",
    )
    doctor.add_argument(
        "--json", action="store_true",
        help="print a JSON list of checks (keys name, ok, detail, hint, warning)",
    )
    doctor.set_defaults(handler=run_doctor)


def _run(argv: list[str]) -> Any:
    from matrix_stack.base.run import run

    return run(argv, check=False, timeout=60)


def check_services(settings: Settings) -> list[Check]:
    from matrix_stack.base.checks import Check

    units = ["matrix-synapse", "apache2"] + (["coturn"] if settings.turn_enable else [])
    checks = []
    for unit in units:
        state = _run(["systemctl", "is-active", f"{unit}.service"]).stdout.strip()
        checks.append(Check(f"service {unit}", state == "active", state or "unknown",
                            f"see: journalctl -u {unit}"))
    return checks


def check_ports(settings: Settings) -> list[Check]:
    from matrix_stack.base.checks import Check

    tcp = _run(["ss", "-Hltn"]).stdout
    udp = _run(["ss", "-Hlun"]).stdout
    wanted = [("tcp", "127.0.0.1:8008", "matrix-synapse")]
    if settings.behind_proxy:
        wanted.append(("tcp", ":80", "apache2"))
    else:
        wanted += [("tcp", ":443", "apache2"), ("tcp", ":8448", "apache2")]
    if settings.turn_enable:
        wanted += [("udp", ":3478", "coturn"), ("tcp", ":3478", "coturn")]
    checks = []
    for protocol, address, unit in wanted:
        table = tcp if protocol == "tcp" else udp
        listening = any(
            line.split()[3].endswith(address) if address.startswith(":")
            else line.split()[3] == address
            for line in table.splitlines() if len(line.split()) > 3
        )
        checks.append(Check(f"port {address.lstrip(':')}/{protocol}", listening,
                            "listening" if listening else "nothing listens",
                            f"see: systemctl status {unit}"))
    return checks


def check_workers(settings: Settings) -> list[Check]:
    """Every worker: its unit active, answering /health, connected for replication."""
    from matrix_stack.base.checks import Check

    if settings.workers == "off":
        return []
    from matrix_stack.cli.workers import current_workers, processes

    workers, _cores = current_workers(settings)
    checks = []
    for process in processes(settings, workers)[1:]:
        checks.append(Check(f"worker {process.name}", process.ok, process.line().split(": ", 1)[1],
                            f"see: journalctl -u {process.unit}"))
    return checks


def check_certificate(settings: Settings) -> list[Check]:
    import time
    from pathlib import Path

    from matrix_stack.base.checks import Check
    from matrix_stack.core.tls import certificate_paths

    paths = certificate_paths(settings)
    if paths is None:
        domains = Path("/var/lib/apache2/md/domains") / settings.server_name / "pubcert.pem"
        if not domains.exists():
            return [Check("certificate", True, "ACME: not obtained yet (mod_md retries)",
                          "ports 80 and 443 must be reachable from the Internet", warning=True)]
        paths = (str(domains), "")
    result = _run(["openssl", "x509", "-in", paths[0], "-noout", "-enddate"])
    if result.returncode != 0:
        return [Check("certificate", False, f"{paths[0]} cannot be read",
                      "check matrix-stack/tls-cert")]
    ends = result.stdout.strip().removeprefix("notAfter=")
    expiry = time.mktime(time.strptime(ends, "%b %d %H:%M:%S %Y %Z")) - time.timezone
    days = int((expiry - time.time()) // 86400)
    if days < 0:
        return [Check("certificate", False, f"expired on {ends}", "renew it")]
    return [Check("certificate", True, f"valid for {days} more days ({paths[0]})",
                  "renew it soon", warning=days < CERTIFICATE_WARNING_DAYS)]


def check_files(settings: Settings) -> list[Check]:
    from matrix_stack.base.checks import Check
    from matrix_stack.base.files import Outcome
    from matrix_stack.core.apply import apply

    checks = []
    for plan in apply(settings, dry_run=True).plans:
        name = f"file {plan.spec.path}"
        if plan.outcome is Outcome.UNCHANGED:
            checks.append(Check(name, True, "in step with stack.yaml"))
        elif plan.outcome is Outcome.KEPT_LOCAL:
            checks.append(Check(name, True, "edited locally (kept by ucf)",
                                "apply writes the new version beside it as .ucf-dist",
                                warning=True))
        elif plan.outcome is Outcome.KEPT_DELETED:
            checks.append(Check(name, False, "deleted", "restore it, or run: ucf --purge"))
        else:
            checks.append(Check(name, False, "differs from stack.yaml",
                                "run: matrix-stack-admin apply"))
    return checks


def check_synapse() -> list[Check]:
    from matrix_stack.base.checks import Check
    from matrix_stack.synapse.api import Synapse

    synapse = Synapse(timeout=10)
    try:
        version = synapse.request("GET", "/_synapse/admin/v1/server_version",
                                  authenticated=False)["server_version"]
        synapse.request("GET", "/_matrix/client/versions", authenticated=False)
    except MatrixStackError as error:
        return [Check("synapse", False, str(error), "see: journalctl -u matrix-synapse")]
    return [Check("synapse", True, f"Synapse {version} answers on 127.0.0.1:8008")]


def summarize(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    """Run a test of several steps (the TURN test) and report it as one check."""
    from matrix_stack.base.checks import Check, failures

    try:
        steps = run()
    except MatrixStackError as error:
        return [Check(name, False, str(error))]
    failed = failures(steps)
    detail = failed[0].text() if failed else f"{len(steps)} steps passed"
    return [Check(name, not failed, detail, f"run: matrix-stack-admin {name} for every step")]


def check_turn(settings: Settings) -> list[Check]:
    from matrix_stack.base.checks import Steps

    if not settings.turn_enable:
        return []
    from matrix_stack.features.turn.check import coturn_running, run_checks
    from matrix_stack.features.turn.config import load_turn_config

    def turn() -> list[Check]:
        steps = Steps()
        run_checks(load_turn_config(), running=coturn_running(), steps=steps)
        return steps.checks

    return summarize("turn test", turn)


def check_element(settings: Settings) -> list[Check]:
    from matrix_stack.base.checks import Check
    from matrix_stack.features.element import install as element

    served = element.installed().current
    if served is None:
        return [Check("element", False, "not installed (a placeholder page is served)",
                      "run: matrix-stack-admin element fetch")]
    wanted = settings.element_version
    if wanted not in ("latest", served):
        return [Check("element", True, f"{served} served, {wanted} configured",
                      "run: matrix-stack-admin element fetch", warning=True)]
    return [Check("element", True, f"{served} served ({wanted} configured)")]


def check_disk() -> list[Check]:
    import shutil
    from pathlib import Path

    from matrix_stack.base.checks import Check
    from matrix_stack.base.paths import SYNAPSE_DATA_DIR as MEDIA_PATH

    usage = shutil.disk_usage(MEDIA_PATH if MEDIA_PATH.exists() else Path("/"))
    free = usage.free / 1024**3
    low = usage.free < FREE_SPACE_WARNING or usage.free < usage.total * 0.05
    return [Check("disk", True, f"{free:.1f} GiB free for Synapse's database and media",
                  "free some space", warning=low)]


def check_database(settings: Settings) -> list[Check]:
    """The engine Synapse uses and its size, read from Synapse's own configuration."""
    from matrix_stack.base.checks import Check
    from matrix_stack.core import postgres
    from matrix_stack.features.data import backup

    if settings.remote_database:
        try:
            rows = postgres.remote_query(settings, "SELECT pg_database_size(current_database())")
        except MatrixStackError as error:
            return [Check("database", False, str(error), "see: journalctl -u matrix-synapse")]
        return [Check("database", True, f"postgresql on {settings.database_host}:"
                      f"{settings.database_port}, {int(rows[0][0]) / 2**20:.1f} MiB")]
    try:
        layout = backup.Layout.read()
        size = backup.database_size(layout)
    except MatrixStackError as error:
        return [Check("database", False, str(error), "see: matrix-stack-admin(8), DATABASE")]
    hint = "for more than a trial: matrix-stack-admin db migrate-to-postgresql"
    detail = f"{layout.engine}, {size / 2**20:.1f} MiB"
    return [Check("database", True, detail, hint, warning=layout.engine == "sqlite")]


def check_backup(settings: Settings, now: float | None = None) -> list[Check]:
    """The age of the last backup; a failure only when the daily timer is on and it is late."""
    import time

    from matrix_stack.base.checks import Check
    from matrix_stack.features.data import backup

    last = backup.last_backup()
    daily = settings.backup_schedule == "daily"
    if last is None:
        return [Check("backup", not daily, "none made yet",
                      "run: matrix-stack-admin backup (or backup --schedule daily)",
                      warning=not daily)]
    archive, created = last
    age = ((now or time.time()) - created) / 3600
    late = age > BACKUP_LATE_HOURS
    detail = f"last {age:.0f} h ago: {archive}" + ("" if daily else " (daily backup off)")
    if daily and late:
        return [Check("backup", False, detail, "see: journalctl -u matrix-stack-backup")]
    return [Check("backup", True, detail, "run: matrix-stack-admin backup --schedule daily",
                  warning=late)]


def check_mail(settings: Settings, probe: Callable[[], str] | None = None) -> list[Check]:
    """The mail server Synapse sends through, reached as Synapse would (nothing is sent)."""
    from matrix_stack.base.checks import Check

    checks = []
    if settings.registration == "open" and not settings.mail_on:
        checks.append(Check("registration", True, "open to anyone, without any verification "
                            "(mail off)", "turn mail on (matrix-stack/mail) to require a "
                            "verified e-mail address, or use registration tokens", warning=True))
    if not settings.mail_on:
        return [*checks, Check("mail", True, "off (matrix-stack/mail)")]
    if probe is None:
        from matrix_stack.features import mail

        def probe() -> str:
            return mail.probe(mail.read_smtp_server())

    try:
        detail = probe()
    except MatrixStackError as error:
        return [*checks, Check("mail", False, str(error),
                               "run: matrix-stack-admin mail test ADDRESS")]
    return [*checks, Check("mail", True, detail)]


def run_doctor(arguments: argparse.Namespace) -> int:
    import json

    from matrix_stack.base.checks import exit_status
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.core.stack import current_settings

    ensure_root()
    settings = current_settings()
    checks: list[Check] = []
    steps: tuple[Callable[[], list[Check]], ...] = (
        lambda: check_services(settings), lambda: check_workers(settings),
        lambda: check_ports(settings),
        lambda: check_certificate(settings), lambda: check_files(settings), check_synapse,
        lambda: federation_checks(settings), lambda: check_turn(settings),
        lambda: check_element(settings), check_disk, lambda: check_database(settings),
        lambda: check_backup(settings), lambda: check_mail(settings),
    )
    for step in steps:
        found = step()
        checks.extend(found)
        if not arguments.json:
            for check in found:
                print(check.line(), flush=True)
    if arguments.json:
        json.dump([check.as_json() for check in checks], sys.stdout, indent=2)
        print()
    return exit_status(checks)


def federation_checks(settings: Settings) -> list[Check]:
    """The federation self-check of this server, as another server would run it."""
    from matrix_stack.base.checks import Check

    if settings.federation == "off":
        return [Check("federation", True, "off (matrix-stack/federation)")]
    from matrix_stack.base.checks import Status
    from matrix_stack.features.federation.check import run_check
    from matrix_stack.features.federation.resolve import Network, parse_server_name

    results = run_check(parse_server_name(settings.server_name), Network())
    failed = [result for result in results if result.status is Status.FAIL]
    if not failed:
        return [Check("federation", True, f"{len(results)} checks passed (federation check)")]
    hint = "run: matrix-stack-admin federation check"
    if settings.tls == "self-signed" and all(
        result.name == "tls" and "self-signed" in result.detail for result in failed
    ):
        # Expected with a self-signed certificate: only servers told to trust it federate.
        return [Check("federation", True, failed[0].detail, hint, warning=True)]
    return [Check("federation", False, failed[0].text(), hint)]
