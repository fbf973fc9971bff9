"""The admin's choices, validated once into a frozen Settings object that templates read."""

from __future__ import annotations

import email.utils
import enum
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matrix_stack.errors import SettingsError
from matrix_stack.workers import OFF as WORKERS_OFF
from matrix_stack.workers import check_workers

DEFAULT_ELEMENT_SOURCE = (
    "https://github.com/element-hq/element-web/releases/download/"
    "v{version}/element-v{version}.tar.gz"
)
# Element's release signing key: downloaded, accepted only with the pinned primary fingerprint
# ("Element Releases <releases@riot.im>", element-web docs/install.md).
DEFAULT_ELEMENT_KEY_URL = "https://packages.element.io/element-release-key.asc"
ELEMENT_KEY_FINGERPRINT = "712BFBEE92DCA45252DB17D7C7BE97EFA179B100"

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_EMAIL = re.compile(r"[^@\s]+@" + _DNS_NAME.pattern)
_VERSION = re.compile(r"\d+\.\d+\.\d+(-rc\.?\d+)?")


class TlsMode(enum.StrEnum):
    SELF_SIGNED = "self-signed"
    FILES = "files"
    ACME = "acme"


class FederationMode(enum.StrEnum):
    ALLOW_LIST = "allow-list"
    OPEN = "open"
    OFF = "off"


class RegistrationMode(enum.StrEnum):
    DISABLED = "disabled"
    TOKEN = "token"
    OPEN = "open"


class DatabaseMode(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class MailMode(enum.StrEnum):
    OFF = "off"
    LOCAL = "local"  # this host's MTA (exim4, postfix) on 127.0.0.1:25
    RELAY = "relay"  # a smarthost, with TLS and usually authentication


class MailSecurity(enum.StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"


# The submission ports: STARTTLS (RFC 6409) and implicit TLS (RFC 8314).
DEFAULT_RELAY_PORTS = {MailSecurity.STARTTLS: 587, MailSecurity.TLS: 465}


class BackupSchedule(enum.StrEnum):
    OFF = "off"
    DAILY = "daily"


DEFAULT_DATABASE_NAME = "matrix_synapse"
# Where Debian's packages keep Synapse's SQLite database; a server built by hand may keep it
# elsewhere (the wiki recipe: /etc/matrix-synapse/homeserver.db), and it stays there.
DEFAULT_SQLITE_PATH = "/var/lib/matrix-synapse/homeserver.db"
DEFAULT_DATABASE_PORT = 5432
_PG_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
DEFAULT_BACKUP_DIR = "/var/backups/matrix-stack"
DEFAULT_BACKUP_KEEP = 7
MAX_BACKUP_KEEP = 366


@dataclass(frozen=True)
class Settings:
    """Every choice the stack is rendered from; built only by from_mapping, so always valid."""

    server_name: str
    element_domain: str
    element_version: str = "latest"
    element_source: str = DEFAULT_ELEMENT_SOURCE
    element_key_url: str = DEFAULT_ELEMENT_KEY_URL
    element_key_fingerprint: str = ELEMENT_KEY_FINGERPRINT
    element_latest_url: str = ""
    tls: TlsMode = TlsMode.SELF_SIGNED
    tls_cert: str = ""
    tls_key: str = ""
    acme_email: str = ""
    turn_enable: bool = True
    turn_domain: str = ""
    turn_external_ip: str = ""
    turn_listening_ip: str = ""
    federation: FederationMode = FederationMode.ALLOW_LIST
    federation_domains: tuple[str, ...] = ()
    federation_key_servers: tuple[str, ...] = ()
    registration: RegistrationMode = RegistrationMode.DISABLED
    behind_proxy: bool = False
    proxy_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    database: DatabaseMode = DatabaseMode.SQLITE
    database_path: str = DEFAULT_SQLITE_PATH
    # Empty: PostgreSQL on this host (socket, peer authentication); else a remote server.
    database_host: str = ""
    database_port: int = DEFAULT_DATABASE_PORT
    database_name: str = DEFAULT_DATABASE_NAME
    database_user: str = DEFAULT_DATABASE_NAME
    backup_schedule: BackupSchedule = BackupSchedule.OFF
    backup_dir: str = DEFAULT_BACKUP_DIR
    backup_keep: int = DEFAULT_BACKUP_KEEP
    mail: MailMode = MailMode.OFF
    mail_from: str = ""
    mail_relay_host: str = ""
    mail_relay_port: int = DEFAULT_RELAY_PORTS[MailSecurity.STARTTLS]
    mail_relay_security: MailSecurity = MailSecurity.STARTTLS
    mail_relay_user: str = ""
    mail_password_reset: bool = True
    admin_email: str = ""
    # Synapse's worker processes: off, auto (sized to the cores) or counts per kind.
    workers: str = WORKERS_OFF
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def element_on_own_domain(self) -> bool:
        """Return whether Element has a vhost of its own (Element's advice against XSS)."""
        return self.element_domain != self.server_name

    @property
    def trusted_key_servers(self) -> tuple[str, ...]:
        """Return the servers Synapse asks for other servers' keys (empty: each origin)."""
        if self.federation is FederationMode.OFF:
            return ()
        if self.federation is FederationMode.OPEN:
            return tuple(dict.fromkeys(("matrix.org", *self.federation_key_servers)))
        # Synapse refuses to ask a key server that its whitelist does not admit.
        return tuple(k for k in self.federation_key_servers if k in self.federation_domains)

    @property
    def mail_on(self) -> bool:
        """Return whether Synapse sends mail (verification, password reset, notifications)."""
        return self.mail is not MailMode.OFF

    @property
    def password_reset_on(self) -> bool:
        """Return whether users may reset their own password by mail."""
        return self.mail_on and self.mail_password_reset

    @property
    def remote_database(self) -> bool:
        """Return whether Synapse uses a PostgreSQL server on another host."""
        return self.database is DatabaseMode.POSTGRESQL and bool(self.database_host)

    @property
    def certificate_names(self) -> tuple[str, ...]:
        """Return the DNS names one certificate must cover, server name first, no repeats."""
        names = (self.server_name, self.element_domain, self.turn_domain)
        return tuple(dict.fromkeys(names))


def check_dns_name(question: str, value: object) -> str:
    """Return value as a lower-case DNS name, or raise SettingsError saying why it is not one."""
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(
            question, value, "is empty: a DNS name such as matrix.example.org is needed"
        )
    name = value.strip().lower().rstrip(".")
    if ":" in name:
        raise SettingsError(question, value, "has a port: give the host name only")
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        raise SettingsError(
            question,
            value,
            "is not a DNS name (letters, digits and hyphens in dot-separated labels)",
        )
    return name


def check_server_name_with_port(question: str, value: str) -> str:
    """Return a Matrix server name, optionally with :port, or raise SettingsError."""
    host, sep, port = value.strip().lower().partition(":")
    name = check_dns_name(question, host) if not _is_ip(host) else host
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(question, value, "has an invalid port (1-65535)")
        return f"{name}:{int(port)}"
    return name


def check_ip(question: str, value: object, *, allow_empty: bool = True) -> str:
    """Return an IP address in canonical form ('' means detect), or raise SettingsError."""
    text = "" if value is None else str(value).strip()
    if not text and allow_empty:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SettingsError(question, value, "is not an IPv4 or IPv6 address") from None


def check_external_ip(question: str, value: object) -> str:
    """Return 'PUBLIC' or 'PUBLIC/PRIVATE' (host behind NAT), each an IP, or '' to detect."""
    text = "" if value is None else str(value).strip()
    if "/" in text:
        public, private = text.split("/", 1)
        public = check_ip(question, public, allow_empty=False)
        private = check_ip(question, private, allow_empty=False)
        return f"{public}/{private}"
    return check_ip(question, text)


def check_proxy_address(question: str, value: object) -> str:
    """Return an IP address or network (CIDR) trusted as the outside reverse proxy."""
    try:
        return str(ipaddress.ip_network(str(value).strip(), strict=False))
    except ValueError:
        raise SettingsError(question, value, "is not an IP address or network") from None


def check_email(question: str, value: object) -> str:
    """Return an e-mail address, or raise SettingsError."""
    text = str(value or "").strip()
    if not _EMAIL.fullmatch(text.lower()):
        raise SettingsError(question, value, "is not an e-mail address such as admin@example.org")
    return text


def check_mail_from(question: str, value: object) -> str:
    """Return a sender such as 'Matrix <noreply@example.org>' or a bare address."""
    text = str(value or "").strip()
    _name, address = email.utils.parseaddr(text)
    if "\n" in text or "\r" in text or not _EMAIL.fullmatch(address.lower()):
        raise SettingsError(
            question, value, "is not a sender such as Matrix <noreply@example.org>"
        )
    return text


def check_mail_host(question: str, value: object) -> str:
    """Return the relay's host name or IP address (never empty)."""
    text = str(value or "").strip()
    if not text:
        raise SettingsError(question, value, "is empty: the relay's host name is needed")
    return check_ip(question, text) if _is_ip(text) else check_dns_name(question, text)


def check_mail_user(question: str, value: object) -> str:
    """Return an SMTP login name: one line without blanks, or '' (no authentication)."""
    text = str(value or "").strip()
    if re.search(r"\s", text):
        raise SettingsError(question, value, "must not contain blanks or line breaks")
    return text


def check_absolute_file(question: str, value: object, root: Path) -> str:
    """Return an absolute path to an existing regular file, or raise SettingsError."""
    text = str(value or "").strip()
    if not text.startswith("/"):
        raise SettingsError(question, value, "must be an absolute path to an existing file")
    if not (root / text.lstrip("/")).is_file():
        raise SettingsError(question, value, "does not exist or is not a regular file")
    return text


def check_version(question: str, value: object) -> str:
    """Return 'latest' or an Element version X.Y.Z (a leading v is dropped)."""
    text = str(value or "").strip().lower().removeprefix("v")
    if text == "latest" or _VERSION.fullmatch(text):
        return text
    raise SettingsError(question, value, "must be 'latest' or a version such as 1.11.90")


def check_source(question: str, value: object) -> str:
    """Return an https://, http:// or file:// URL template for the Element release tarball."""
    text = str(value or "").strip()
    if not re.fullmatch(r"(https?://[^\s/]+|file://)/\S*", text):
        raise SettingsError(question, value, "must be an https://, http:// or file:/// URL")
    return text


def check_optional_url(question: str, value: object) -> str:
    """Return '' (derive it) or an https://, http:// or file:// URL."""
    text = str(value or "").strip()
    return check_source(question, text) if text else ""


def check_fingerprint(question: str, value: object) -> str:
    """Return an OpenPGP fingerprint as upper-case hex without spaces (40 or 64 digits)."""
    text = re.sub(r"\s+", "", str(value or "")).upper()
    if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", text):
        raise SettingsError(question, value, "must be a key fingerprint of 40 hex digits")
    return text


def check_choice(question: str, value: object, choices: type[enum.StrEnum]) -> Any:
    """Return the enum member named by value, or raise SettingsError listing the choices."""
    # YAML 1.1 reads an unquoted 'federation: off' in a hand-edited stack.yaml as false.
    text = "off" if value is False else str(value).strip()
    try:
        return choices(text)
    except ValueError:
        allowed = ", ".join(member.value for member in choices)
        raise SettingsError(question, value, f"is not one of: {allowed}") from None


def check_database_host(question: str, value: object) -> str:
    """Return '' (this host), an IP address or a DNS name."""
    text = str(value or "").strip()
    if not text:
        return ""
    return check_ip(question, text) if _is_ip(text) else check_dns_name(question, text)


def check_port(question: str, value: object) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 0 < int(text) < 65536:
        raise SettingsError(question, value, "must be a port number (1-65535)")
    return int(text)


def check_pg_identifier(question: str, value: object) -> str:
    """Return a PostgreSQL role or database name that needs no quoting in a pgpass line."""
    text = str(value or "").strip()
    if not _PG_IDENTIFIER.fullmatch(text):
        raise SettingsError(
            question, value, "must be letters, digits, _ and -, starting with a letter or _"
        )
    return text


def check_directory(question: str, value: object) -> str:
    """Return an absolute directory path (it need not exist yet), or raise SettingsError."""
    text = str(value or "").strip()
    if not text.startswith("/") or "\n" in text or any(part == ".." for part in text.split("/")):
        raise SettingsError(question, value, "must be an absolute directory path")
    return text.rstrip("/") or "/"


def check_absolute_path(question: str, value: object) -> str:
    """Return an absolute, normalised file path (it need not exist), or raise SettingsError."""
    text = str(value or "").strip()
    if not text.startswith("/") or "\n" in text or any(p == ".." for p in text.split("/")):
        raise SettingsError(question, value, "must be an absolute file path")
    return "/" + "/".join(part for part in text.split("/") if part not in ("", "."))


def check_keep(question: str, value: object) -> int:
    """Return how many archives to keep: a whole number from 1 to MAX_BACKUP_KEEP."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_BACKUP_KEEP:
        raise SettingsError(question, value, f"must be a whole number from 1 to {MAX_BACKUP_KEEP}")
    return int(text)


def check_bool(question: str, value: object) -> bool:
    """Return a boolean from a YAML boolean or the debconf strings true/false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes"):
        return True
    if text in ("false", "no"):
        return False
    raise SettingsError(question, value, "must be true or false")


def split_list(value: object) -> list[str]:
    """Return the items of a YAML list or a comma/space separated string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return [item for item in re.split(r"[\s,]+", str(value)) if item]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def getter(raw: Mapping[str, Any]) -> Callable[..., Any]:
    """Return get(key, check, default=''): raw[key] checked, default when missing or empty."""

    def get(key: str, check: Callable[[str, Any], Any], default: Any = "") -> Any:
        value = raw.get(key)
        return check(key, default if value in (None, "") else value)

    return get


def mail_fields(raw: Mapping[str, Any], server_name: str) -> dict[str, Any]:
    """Return the mail_* and admin_email fields; the relay's only checked when it is used."""

    get = getter(raw)
    mode = get("mail", lambda q, v: check_choice(q, v, MailMode), MailMode.OFF)
    security = get(
        "mail_relay_security",
        lambda q, v: check_choice(q, v, MailSecurity),
        MailSecurity.STARTTLS,
    )
    relay = mode is MailMode.RELAY
    return {
        "mail": mode,
        "mail_from": get("mail_from", check_mail_from, f"Matrix <noreply@{server_name}>"),
        "mail_relay_host": get("mail_relay_host", check_mail_host)
        if relay
        else str(raw.get("mail_relay_host") or "").strip(),
        "mail_relay_port": get("mail_relay_port", check_port, DEFAULT_RELAY_PORTS[security]),
        "mail_relay_security": security,
        "mail_relay_user": get("mail_relay_user", check_mail_user),
        "mail_password_reset": get("mail_password_reset", check_bool, True),
        "admin_email": get("admin_email", lambda q, v: check_email(q, v) if v else ""),
    }


def from_mapping(raw: Mapping[str, Any], root: Path = Path("/")) -> Settings:
    """Validate stack.yaml's keys into Settings; empty derived names take their defaults."""
    known = {name for name in Settings.__dataclass_fields__ if name != "warnings"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(unknown[0], raw[unknown[0]], "is not a matrix-stack setting")

    get = getter(raw)
    server_name = get("server_name", check_dns_name)
    element_domain = get("element_domain", check_dns_name, f"element.{server_name}")
    tls = get("tls", lambda q, v: check_choice(q, v, TlsMode), TlsMode.SELF_SIGNED)
    warnings = []
    if element_domain == server_name:
        warnings.append(
            f"Element is served from the homeserver's own name {server_name}; Element advises "
            "a separate domain (cross-site scripting)"
        )
    settings = Settings(
        server_name=server_name,
        element_domain=element_domain,
        element_version=get("element_version", check_version, "latest"),
        element_source=get("element_source", check_source, DEFAULT_ELEMENT_SOURCE),
        element_key_url=get("element_key_url", check_source, DEFAULT_ELEMENT_KEY_URL),
        element_key_fingerprint=get(
            "element_key_fingerprint", check_fingerprint, ELEMENT_KEY_FINGERPRINT
        ),
        element_latest_url=get("element_latest_url", check_optional_url),
        tls=tls,
        tls_cert=get("tls_cert", lambda q, v: check_absolute_file(q, v, root))
        if tls is TlsMode.FILES
        else str(raw.get("tls_cert") or ""),
        tls_key=get("tls_key", lambda q, v: check_absolute_file(q, v, root))
        if tls is TlsMode.FILES
        else str(raw.get("tls_key") or ""),
        acme_email=get("acme_email", check_email)
        if tls is TlsMode.ACME
        else str(raw.get("acme_email") or ""),
        turn_enable=get("turn_enable", check_bool, True),
        turn_domain=get("turn_domain", check_dns_name, server_name),
        turn_external_ip=get("turn_external_ip", check_external_ip),
        turn_listening_ip=get("turn_listening_ip", check_ip),
        federation=get(
            "federation", lambda q, v: check_choice(q, v, FederationMode), FederationMode.ALLOW_LIST
        ),
        federation_domains=tuple(
            dict.fromkeys(
                check_server_name_with_port("federation_domains", item)
                for item in split_list(raw.get("federation_domains"))
            )
        ),
        federation_key_servers=tuple(
            dict.fromkeys(
                check_server_name_with_port("federation_key_servers", item)
                for item in split_list(raw.get("federation_key_servers"))
            )
        ),
        registration=get(
            "registration",
            lambda q, v: check_choice(q, v, RegistrationMode),
            RegistrationMode.DISABLED,
        ),
        behind_proxy=get("behind_proxy", check_bool, False),
        proxy_addresses=tuple(
            check_proxy_address("proxy_addresses", item)
            for item in split_list(raw.get("proxy_addresses") or ["127.0.0.1", "::1"])
        ),
        database=get(
            "database", lambda q, v: check_choice(q, v, DatabaseMode), DatabaseMode.SQLITE
        ),
        database_path=get("database_path", check_absolute_path, DEFAULT_SQLITE_PATH),
        database_host=get("database_host", check_database_host),
        database_port=get("database_port", check_port, DEFAULT_DATABASE_PORT),
        database_name=get("database_name", check_pg_identifier, DEFAULT_DATABASE_NAME),
        database_user=get("database_user", check_pg_identifier, DEFAULT_DATABASE_NAME),
        backup_schedule=get(
            "backup_schedule",
            lambda q, v: check_choice(q, v, BackupSchedule),
            BackupSchedule.OFF,
        ),
        backup_dir=get("backup_dir", check_directory, DEFAULT_BACKUP_DIR),
        backup_keep=get("backup_keep", check_keep, DEFAULT_BACKUP_KEEP),
        **mail_fields(raw, server_name),
        workers=check_workers("workers", raw.get("workers")),
        warnings=tuple(warnings),
    )
    if settings.workers != WORKERS_OFF and settings.database is not DatabaseMode.POSTGRESQL:
        raise SettingsError(
            "workers", settings.workers, "needs database: postgresql (Synapse's workers share "
            "one PostgreSQL database); move it first with: matrix-stack-admin db "
            "migrate-to-postgresql",
        )
    ignored_key_servers = [
        name
        for name in settings.federation_key_servers
        if settings.federation is FederationMode.ALLOW_LIST
        and name not in settings.federation_domains
    ]
    if ignored_key_servers:
        settings = replace(
            settings,
            warnings=(
                *settings.warnings,
                f"key server {', '.join(ignored_key_servers)} is not in federation_domains, "
                "so Synapse cannot ask it; allow it with: matrix-stack-admin federation allow "
                "DOMAIN --key-server",
            ),
        )
    return settings
