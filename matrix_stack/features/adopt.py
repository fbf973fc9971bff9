"""Take over a Synapse, coturn and Apache set up by hand (the wiki recipe), losing nothing.

Such a server keeps its secrets inline in homeserver.yaml, its database, signing key and media
under /etc/matrix-synapse (``--data-dir /etc/matrix-synapse``), listens on 0.0.0.0:8008, lists
its federation partners in federation_domain_whitelist, runs coturn on a hand-edited
/etc/turnserver.conf and serves Element from /var/www through an Apache site of its own.

detect() reads all that and changes nothing; plan() turns it into the stack.yaml values
proposed (debconf defaults at install), the secrets to keep, and one line per thing taken over
or changed. carry_out() and finish() do it, inside stack.change's transaction: the postinst on
the first configuration, and ``matrix-stack-admin adopt``. homeserver.yaml, /etc/turnserver.conf,
the old site and /var/www stay as they are (their contents are never edited): conf.d and the
drop-in override them, so purge gives the hand-made server back.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix_stack.base.errors import MatrixStackError, SettingsError
from matrix_stack.base.files import host_path, lookup_ids, sets_ownership
from matrix_stack.base.paths import (
    ADOPTED_RECORD,
    APACHE_SITES_RECORD,
    COTURN_OWN_CONF,
    HOMESERVER_PATH,
)
from matrix_stack.base.paths import APACHE_SITES_ENABLED as SITES_ENABLED
from matrix_stack.base.paths import SYNAPSE_CONF_PATH as OUR_SYNAPSE_CONF
from matrix_stack.base.secrets import SECRET_FILES, SECRET_OWNER
from matrix_stack.core import settings as settings_module
from matrix_stack.core.host import host_names
from matrix_stack.core.services import record
from matrix_stack.core.settings import DEFAULT_SQLITE_PATH, Settings
from matrix_stack.core.system import System, system_for
from matrix_stack.features.turn.config import parse_coturn_config
from matrix_stack.synapse.config import find_config_files, read_config_file
from matrix_stack.synapse.db import Database, Engine, parse_database

# Sites matrix-stack handles elsewhere: its own, and Debian's stock default (services.py).
OUR_SITES = ("matrix-stack", "000-default")
# Synapse's setting for each part of the layout that stays where it is.
KEPT_PATHS = (("signing_key_path", "signing key"), ("media_store_path", "media"),
              ("log_config", "log configuration"))
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# Local PostgreSQL as matrix-stack sets it up (render: socket, peer authentication).
LOCAL_ROLE = "matrix-synapse"
LOCAL_DATABASE = settings_module.DEFAULT_DATABASE_NAME


@dataclass(frozen=True)
class Site:
    """One enabled Apache site of the admin's: its file name, the names and root it serves."""

    name: str
    names: tuple[str, ...]  # ServerName and ServerAlias values; empty: none written
    document_root: str

    def served_names(self, hostnames: Iterable[str]) -> tuple[str, ...]:
        """Return the names Apache answers with it (without ServerName: the host's name)."""
        return self.names or tuple(dict.fromkeys(name.lower() for name in hostnames if name))

    @property
    def serves_element(self) -> bool:
        return "element" in self.document_root.lower() or "element" in self.name.lower()


@dataclass(frozen=True)
class Found:
    """What a server has before matrix-stack takes it over; read from its files only."""

    config: Mapping[str, Any]  # Synapse's configuration as merged, without matrix-stack's file
    server_name: str | None
    database: Database | None
    inline_secrets: Mapping[str, str]  # Synapse setting -> value written inline
    coturn: Mapping[str, list[str]] | None  # /etc/turnserver.conf's options, when edited
    sites: tuple[Site, ...]
    homeserver_mode: int


@dataclass(frozen=True)
class Plan:
    """What adoption proposes and does: stack.yaml values, secrets kept, and why, line by line."""

    proposed: Mapping[str, Any]  # stack.yaml keys (debconf defaults, file-only keys)
    secrets: Mapping[str, str]  # Synapse setting -> value to keep in matrix-stack's file
    lines: tuple[str, ...]
    tighten_homeserver: bool = False
    found: Found | None = field(default=None, compare=False, repr=False)
    # A remote PostgreSQL's password written inline: kept in the passfile, never in debconf.
    database_password: str = field(default="", repr=False)

    @property
    def empty(self) -> bool:
        return not self.lines


def read_hand_config(root: Path = Path("/")) -> dict[str, Any]:
    """Return Synapse's configuration merged as Synapse merges it, minus matrix-stack's file.

    Raise one line when a file cannot be read: a server whose configuration cannot be read
    cannot be taken over safely.
    """
    merged: dict[str, Any] = {}
    for path in find_config_files(root):
        if path == OUR_SYNAPSE_CONF:
            continue
        value = read_config_file(path, root)
        if path == HOMESERVER_PATH and not isinstance(value, dict):
            raise MatrixStackError(f"{path} is not a mapping of Synapse settings")
        if isinstance(value, dict):
            merged.update(value)
    return merged


def parse_apache_sites(root: Path = Path("/")) -> tuple[Site, ...]:
    """Return the enabled sites other than matrix-stack's own and Debian's stock default."""
    sites: list[Site] = []
    directory = host_path(SITES_ENABLED, root)
    if not directory.is_dir():
        return ()
    for entry in sorted(directory.glob("*.conf")):
        name = entry.name.removesuffix(".conf")
        if name in OUR_SITES:
            continue
        try:
            text = entry.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        names: list[str] = []
        document_root = ""
        for raw in text.splitlines():
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            directive = words[0].lower()
            if directive in ("servername", "serveralias"):
                names += [word.lower().split(":")[0] for word in words[1:]]
            elif directive == "documentroot" and len(words) > 1 and not document_root:
                document_root = words[1].strip('"')
        sites.append(Site(name, tuple(dict.fromkeys(names)), document_root))
    return tuple(sites)


def detect(root: Path = Path("/")) -> Found:
    """Read what the server has: Synapse's files, coturn's own file, Apache's enabled sites."""
    config = read_hand_config(root)
    name = config.get("server_name")
    server_name = str(name).strip().lower() if name else None
    database = parse_database(config) if server_name else None
    inline = {
        key: str(config[key])
        for key in SECRET_FILES
        if isinstance(config.get(key), (str, int)) and str(config[key])
    }
    try:
        text = host_path(COTURN_OWN_CONF, root).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    # Debian's stock file has every option commented out: only an edited one has options.
    coturn = parse_coturn_config(text) or None
    try:
        mode = stat.S_IMODE(host_path(HOMESERVER_PATH, root).stat().st_mode)
    except OSError:
        mode = 0
    return Found(config, server_name, database, inline, coturn, parse_apache_sites(root), mode)


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(item).strip().lower() for item in value if str(item).strip())


def _key_servers(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        str(item["server_name"]).strip().lower()
        for item in value
        if isinstance(item, Mapping) and item.get("server_name")
    )


def _turn_domain(uris: Sequence[str]) -> str | None:
    for uri in uris:
        match = re.match(r"turns?:(\[[^\]]+\]|[^:?]+)", uri)
        if match:
            return match.group(1).strip("[]").lower()
    return None


def _valid(check: Any, key: str, value: object) -> Any:
    try:
        return check(key, value)
    except SettingsError:
        return None


def _listeners_open(config: Mapping[str, Any]) -> list[str]:
    """Return 'address:port' of each plain-HTTP listener reachable from other hosts."""
    exposed = []
    for listener in config.get("listeners") or ():
        if not isinstance(listener, Mapping) or listener.get("type", "http") != "http":
            continue
        port = listener.get("port")
        addresses = listener.get("bind_addresses") or ["::", "0.0.0.0"]
        if listener.get("tls"):
            continue
        exposed += [f"{address}:{port}" for address in addresses if str(address) not in LOOPBACK]
    return exposed


def _database_values(database: Database) -> tuple[dict[str, Any], str | None, str]:
    """Return the stack.yaml database keys, a refusal (or None), and how to say it."""
    if database.engine is Engine.SQLITE:
        path = str(database.sqlite_path)
        where = "left where it is" if path != DEFAULT_SQLITE_PATH else "where Debian keeps it"
        return {"database": "sqlite", "database_path": path}, None, f"SQLite {path}, {where}"
    args = dict(database.connect_args)
    host = str(args.get("host") or "")
    name = str(args.get("database") or args.get("dbname") or "")
    user = str(args.get("user") or "")
    if not host or host.startswith("/"):
        if (user, name) != (LOCAL_ROLE, LOCAL_DATABASE):
            return {}, (
                f"Synapse uses PostgreSQL database {name or '?'} as role {user or '?'} on this "
                f"host, and matrix-stack's local PostgreSQL is database {LOCAL_DATABASE} as role "
                f"{LOCAL_ROLE} (peer authentication): rename them, or give Synapse a TCP host "
                "and password so matrix-stack can use it as a remote server"
            ), ""
        return {"database": "postgresql", "database_host": ""}, None, (
            f"PostgreSQL {LOCAL_DATABASE} on this host, as it is"
        )
    values = {
        "database": "postgresql",
        "database_host": host,
        "database_port": int(args.get("port") or settings_module.DEFAULT_DATABASE_PORT),
        "database_name": name or LOCAL_DATABASE,
        "database_user": user or LOCAL_DATABASE,
    }
    return values, None, f"PostgreSQL {values['database_name']} on {host}, as it is"


def plan(found: Found, hostnames: Iterable[str] = ()) -> Plan:
    """Return what taking the server over means: proposals, secrets kept, one line each.

    Raise MatrixStackError when it cannot be taken over safely (nothing was changed then).
    """
    if found.server_name is None:
        return Plan({}, {}, (), found=found)
    config = found.config
    server = _valid(settings_module.check_dns_name, "server_name", found.server_name)
    if server is None:
        raise MatrixStackError(
            f"Synapse's server_name {found.server_name!r} is not a DNS name matrix-stack can serve"
        )
    proposed: dict[str, Any] = {"server_name": server}
    lines: list[str] = []

    if found.database is not None:
        values, refusal, said = _database_values(found.database)
        if refusal:
            raise MatrixStackError(refusal)
        proposed.update(values)
        if values.get("database_path", DEFAULT_SQLITE_PATH) != DEFAULT_SQLITE_PATH or (
            values.get("database") == "postgresql"
        ):
            lines.append(f"database: {said}")

    secrets = dict(found.inline_secrets)
    if secrets:
        lines.append(
            f"secrets {', '.join(secrets)}: moved to /etc/matrix-stack/secrets/ with the same "
            "values; the copies inline in homeserver.yaml are ignored from now on (delete them "
            "at leisure)"
        )
        if found.homeserver_mode & 0o077:
            lines.append(
                f"homeserver.yaml holds secrets and was readable by other users "
                f"(mode {found.homeserver_mode:04o}): now owner {SECRET_OWNER}, mode 0600"
            )

    exposed = _listeners_open(config)
    if exposed:
        lines.append(
            f"Synapse listened on {', '.join(exposed)} without TLS: now 127.0.0.1:8008 only, "
            "behind Apache (HTTPS on 443, federation on 8448)"
        )

    whitelist = config.get("federation_domain_whitelist")
    key_servers = _key_servers(config.get("trusted_key_servers"))
    if whitelist is None:
        proposed.update(federation="open", federation_domains=[])
        kept_keys = [name for name in key_servers if name != "matrix.org"]
        lines.append("federation: open, as configured (no federation_domain_whitelist)")
    else:
        domains = list(_names(whitelist))
        proposed.update(federation="allow-list" if domains else "off", federation_domains=domains)
        kept_keys = [name for name in key_servers if name in domains]
        dropped = [name for name in key_servers if name not in domains]
        line = (
            f"federation: allow-list of {', '.join(domains)}" if domains else "federation: off"
        )
        if kept_keys:
            line += f"; key servers {', '.join(kept_keys)}"
        if dropped:
            line += (
                f" ({', '.join(dropped)} not kept as key server: the allow-list does not admit "
                "it, so Synapse could not ask it)"
            )
        lines.append(line)
    proposed["federation_key_servers"] = kept_keys

    if config.get("enable_registration"):
        mode = "token" if config.get("registration_requires_token") else "open"
        proposed["registration"] = mode
        lines.append(f"registration: {mode}, as configured")

    uris = [str(uri) for uri in config.get("turn_uris") or ()]
    turn_domain = _turn_domain(uris)
    coturn = found.coturn or {}
    if turn_domain is None and coturn.get("realm"):
        turn_domain = coturn["realm"][-1].lower()
    proposed["turn_enable"] = bool(uris) or found.coturn is not None
    if turn_domain and _valid(settings_module.check_dns_name, "turn_domain", turn_domain):
        proposed["turn_domain"] = turn_domain
    for option, key, check in (
        ("external-ip", "turn_external_ip", settings_module.check_external_ip),
        ("listening-ip", "turn_listening_ip", settings_module.check_ip),
    ):
        value = coturn.get(option, [""])[-1]
        if value and _valid(check, key, value) is not None:
            proposed[key] = _valid(check, key, value)
    if found.coturn is not None:
        coturn_secret = coturn.get("static-auth-secret", [""])[-1]
        synapse_secret = secrets.get("turn_shared_secret")
        if not synapse_secret and coturn_secret:
            secrets["turn_shared_secret"] = synapse_secret = coturn_secret
        line = (
            "coturn: /etc/turnserver.conf (edited by hand) is kept untouched but no longer "
            "read; coturn runs /etc/matrix-stack/turnserver.conf"
        )
        if synapse_secret:
            line += " with the same shared secret"
        line += " and the denied-peer list (no relaying to private or loopback addresses)"
        lines.append(line)
        if coturn_secret and synapse_secret and coturn_secret != synapse_secret:
            lines.append(
                "coturn's static-auth-secret differed from Synapse's turn_shared_secret: "
                "Synapse's is kept (clients hold credentials made with it)"
            )
    if config.get("turn_allow_guests") and uris:
        lines.append("TURN: guests no longer get relay credentials (turn_allow_guests was true)")

    hostnames = tuple(hostnames)
    element_sites = [site for site in found.sites if site.serves_element]
    for site in element_sites:
        if site.names:
            proposed.setdefault("element_domain", site.names[0])
    for site in element_sites:
        lines.append(describe_site(site, proposed_names(proposed), hostnames))
    if element_sites:
        lines.append(
            "Element: matrix-stack serves its own GPG-verified release (the copy under /var/www "
            "was never verified against Element's signing key, so it is not reused)"
        )

    if not hand_made(lines, found):
        # Debian's configuration as its package left it: only the name and the database are
        # facts to keep; every other answer keeps matrix-stack's default.
        keep = ("server_name", "database", "database_path", "database_host", "database_port",
                "database_name", "database_user")
        return Plan({key: proposed[key] for key in keep if key in proposed}, {}, (), found=found)
    if lines:
        # Something here was made by hand: say what stays as it is, first.
        kept = [f"{what} {config[key]}" for key, what in KEPT_PATHS if config.get(key)]
        lines.insert(
            0, f"server name {server}" + (f"; kept in place: {', '.join(kept)}" if kept else "")
        )
    password = ""
    if found.database is not None and proposed.get("database_host"):
        password = str(found.database.connect_args.get("password") or "")
        if password:
            lines.append("database password: moved to /etc/matrix-stack/secrets/database.pgpass "
                         "(readable by Synapse alone)")
    return Plan(
        proposed, secrets, tuple(lines),
        tighten_homeserver=bool(found.inline_secrets) and bool(found.homeserver_mode & 0o077),
        found=found, database_password=password,
    )


def hand_made(lines: Sequence[str], found: Found) -> bool:
    """Return whether anything in the plan was made by hand (not just Synapse's defaults)."""
    defaults = ("federation: open, as configured", "federation: off", "registration: ")
    return any(not line.startswith(defaults) for line in lines)


def proposed_names(proposed: Mapping[str, Any]) -> tuple[str, ...]:
    """Return the names matrix-stack would serve with the proposed values (defaults filled)."""
    server = str(proposed.get("server_name") or "")
    element = str(proposed.get("element_domain") or f"element.{server}")
    return tuple(dict.fromkeys((server, element, str(proposed.get("turn_domain") or server))))


def describe_site(site: Site, ours: Sequence[str], hostnames: Sequence[str]) -> str:
    served = site.served_names(hostnames)
    where = f"site {site.name} (DocumentRoot {site.document_root or '?'})"
    clash = [name for name in served if name in ours]
    if clash:
        return (
            f"Element: {where} answers for {', '.join(clash)}, which matrix-stack now serves: "
            "disabled (purge enables it again); its files under /var/www are left in place"
        )
    return (
        f"Element: {where} answers for {', '.join(served) or 'no name'}, not a name of "
        "matrix-stack: left enabled"
    )


def sites_to_disable(found: Found, settings: Settings, hostnames: Sequence[str]) -> list[str]:
    """Return the admin's Element sites that answer for a name matrix-stack serves."""
    ours = set(settings.certificate_names)
    return [
        site.name
        for site in found.sites
        if site.serves_element and ours & set(site.served_names(hostnames))
    ]




def check_database_users(found: Found, root: Path, system: System) -> None:
    """Refuse when Synapse's SQLite database holds users of another server name."""
    database = found.database
    if database is None or database.engine is not Engine.SQLITE or database.sqlite_path is None:
        return
    path = host_path(database.sqlite_path, root)
    if not path.is_file() or path.stat().st_size == 0:
        return
    others = count_foreign_users(path, str(found.server_name), system.probe_sqlite)
    if others:
        raise MatrixStackError(
            f"Synapse's database {database.sqlite_path} holds {others} users of another server "
            f"name than {found.server_name} (its server_name): its configuration does not match "
            "its data; nothing was changed"
        )


# Run as the database's owner (as postgres.sqlite_holds_data): prints how many local users do
# not end in ':SERVER'.
_FOREIGN_USERS_PROBE = """
import sqlite3, sys
connection = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
try:
    row = connection.execute(
        "SELECT count(*) FROM users WHERE substr(name, -length(?)) != ?",
        (":" + sys.argv[2], ":" + sys.argv[2])).fetchone()
except sqlite3.OperationalError:
    row = (0,)
print(row[0])
"""


def count_foreign_users(
    path: Path, server_name: str, probe: Callable[..., str | None] | None = None
) -> int:
    """Return how many users of the SQLite database are not of server_name (probe: how to
    run the probe; default as the file's owner; one that returns None cannot look: 0)."""
    from matrix_stack.base.errors import CommandError
    from matrix_stack.core.postgres import probe_sqlite_as_owner

    try:
        printed = (probe or probe_sqlite_as_owner)(path, _FOREIGN_USERS_PROBE, server_name)
        return 0 if printed is None else int(printed)
    except (CommandError, ValueError) as error:
        raise MatrixStackError(
            f"cannot read Synapse's database {path} to check its users: {error}"
        ) from None


def take_over_plan(
    root: Path = Path("/"), hostnames: Iterable[str] | None = None, system: System | None = None
) -> Plan:
    """Detect and plan, checking the database agrees with the configuration (on a system
    that can read it: not a temporary root)."""
    found = detect(root)
    result = plan(found, host_names() if hostnames is None else hostnames)
    check_database_users(found, root, system or system_for(root))
    return result


def undo_paths(adoption: Plan) -> list[Path]:
    """Return what carry_out may write, for the transaction to put back on failure."""
    sites = adoption.found.sites if adoption.found else ()
    return [
        *(SECRET_FILES[key] for key in adoption.secrets),
        *(SITES_ENABLED / f"{site.name}.conf" for site in sites),
        APACHE_SITES_RECORD,
    ]


def carry_out(
    adoption: Plan, settings: Settings, root: Path = Path("/"), system: System | None = None
) -> list[str]:
    """Keep the secrets in matrix-stack's files and disable the Element sites in the way.

    Run inside stack.change's transaction, whose undo holds secret_paths() and site_links().
    """
    from matrix_stack.base.secrets import ensure_secret

    system = system or system_for(root)
    for key, value in adoption.secrets.items():
        ensure_secret(SECRET_FILES[key], root, value=value)
    lines = []
    if adoption.found is not None:
        for name in sites_to_disable(adoption.found, settings, host_names()):
            system.disable_site(name, root)
            record(APACHE_SITES_RECORD, [name], root)
            lines.append(f"disabled the Apache site {name} (it answered for a name of the stack)")
    return lines


def finish(adoption: Plan, root: Path = Path("/")) -> None:
    """After the change is in force: close homeserver.yaml to others, keep a record for purge."""
    if adoption.tighten_homeserver:
        tighten(host_path(HOMESERVER_PATH, root), root)
    record(ADOPTED_RECORD, ["synapse"], root)


def tighten(path: Path, root: Path) -> None:
    """Make homeserver.yaml owner matrix-synapse, mode 0600, on its descriptor.

    /etc/matrix-synapse is writable by Synapse's user: never follow a link planted there, nor
    change a file with another name elsewhere.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
            return  # not the admin's file: a hard link may name a file of root's
        if sets_ownership(root):
            os.fchown(descriptor, lookup_ids(SECRET_OWNER, "root")[0], -1)
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)


def take_over(root: Path = Path("/")) -> list[str]:
    """Write stack.yaml from what the server has and apply it, as one transaction.

    For a server whose first configuration has not happened (no stack.yaml yet); return the
    report lines.
    """
    from matrix_stack.core.apply import apply
    from matrix_stack.core.stack import change

    adoption = take_over_plan(root)
    if adoption.found is None or adoption.found.server_name is None:
        raise MatrixStackError(
            "Synapse has no server_name yet: nothing to take over; run: dpkg-reconfigure "
            "matrix-stack"
        )

    system = system_for(root)

    def apply_settings(settings: Settings) -> list[str]:
        return (carry_out(adoption, settings, root, system)
                + apply(settings, root=root, system=system).lines())

    changed = change(lambda _stack: dict(adoption.proposed), root=root, source="adopt",
                     apply_settings=apply_settings, keeps=undo_paths(adoption), missing_ok=True)
    finish(adoption, root)
    return [f"adopt: {line}" for line in adoption.lines] + changed.lines


def debconf_lines(adoption: Plan) -> list[str]:
    """Return the config script's input: 'set QUESTION VALUE', then 'plan LINE' lines."""
    from matrix_stack.core.answers import ANSWERS

    lines = [
        f"set {answer.question} {answer.to_debconf(adoption.proposed[answer.key])}"
        for answer in ANSWERS
        if answer.key in adoption.proposed
    ]
    return lines + [f"plan {line}" for line in adoption.lines]


def main(argv: Sequence[str]) -> int:
    """python3 -m matrix_stack.features.adopt --debconf: what the config script proposes and shows.

    A server that cannot be taken over prints 'refuse REASON' (the postinst refuses it too).
    """
    if list(argv) != ["--debconf"]:
        print("usage: python3 -m matrix_stack.features.adopt --debconf", file=sys.stderr)
        return 2
    try:
        lines = debconf_lines(take_over_plan())
    except MatrixStackError as error:
        lines = [f"refuse {error}"]
    for line in lines:
        print(line.replace("\n", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
