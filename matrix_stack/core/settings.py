"""The admin's choices, validated once into a frozen Settings object that templates read."""

from __future__ import annotations

import email.utils
import enum
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from matrix_stack.base.errors import SettingsError
from matrix_stack.core.workers import OFF as WORKERS_OFF
from matrix_stack.core.workers import check_workers

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


class Kind(enum.Enum):
    """How a debconf answer (always text) holds a setting's value."""

    TEXT = "text"
    BOOLEAN = "boolean"
    LIST = "list"
    NUMBER = "number"


@dataclass(frozen=True)
class Spec:
    """How one setting is read from stack.yaml: checked by check(key, value); default (a
    value, or a function of the settings read before it) when missing or empty; asked by the
    debconf question matrix-stack/KEY-WITH-DASHES unless asked is False (stack.yaml only);
    checked only when when(settings so far) holds, else kept as the text given."""

    check: Callable[..., Any]
    default: Any = ""
    asked: bool = True
    kind: Kind = Kind.TEXT
    when: Callable[[Mapping[str, Any]], bool] | None = None
    under_root: bool = False  # check(key, value, root): a file looked for under root

    @property
    def derived(self) -> bool:
        """Whether it needs other settings first (a derived default, or a condition)."""
        return callable(self.default) or self.when is not None


SPEC = "matrix_stack.spec"


_DEFAULT_GIVEN = object()


def setting(
    check: Callable[..., Any], default: Any = "", *, plain: Any = _DEFAULT_GIVEN, **options: Any
) -> Any:
    """Declare a Settings field: the one place its check, default and question are said.

    plain is the dataclass's own default (MISSING: required) where default is derived or
    should not be the constructor's."""
    if plain is _DEFAULT_GIVEN:
        plain = MISSING if callable(default) else default
    return field(default=plain, metadata={SPEC: Spec(check, default, **options)})


def choice(choices: type[enum.StrEnum]) -> Callable[[str, Any], Any]:
    return lambda question, value: check_choice(question, value, choices)


def each(check: Callable[[str, Any], Any]) -> Callable[[str, Any], tuple[Any, ...]]:
    """Return a check of a list (YAML list or comma/space separated): each item, no repeats."""
    return lambda question, value: tuple(
        dict.fromkeys(check(question, item) for item in split_list(value)))


def _is(key: str, value: object) -> Callable[[Mapping[str, Any]], bool]:
    return lambda settings: settings[key] is value


@dataclass(frozen=True)
class Settings:
    """Every choice the stack is rendered from; built only by from_mapping, so always valid.

    Each field is declared once, with setting(): answers.py derives the debconf table, the
    config script its list of kept questions, and from_mapping the checks from it.
    """

    server_name: str = setting(check_dns_name, plain=MISSING)
    element_domain: str = setting(
        check_dns_name, lambda s: f"element.{s['server_name']}")
    element_version: str = setting(check_version, "latest")
    element_source: str = setting(check_source, DEFAULT_ELEMENT_SOURCE)
    element_key_url: str = setting(
        check_source, DEFAULT_ELEMENT_KEY_URL, asked=False)
    element_key_fingerprint: str = setting(
        check_fingerprint, ELEMENT_KEY_FINGERPRINT, asked=False)
    # Empty: derived from element_source.
    element_latest_url: str = setting(check_optional_url, asked=False)
    tls: TlsMode = setting(choice(TlsMode), TlsMode.SELF_SIGNED)
    tls_cert: str = setting(check_absolute_file, when=_is("tls", TlsMode.FILES), under_root=True)
    tls_key: str = setting(check_absolute_file, when=_is("tls", TlsMode.FILES), under_root=True)
    acme_email: str = setting(check_email, when=_is("tls", TlsMode.ACME))
    turn_enable: bool = setting(check_bool, True, kind=Kind.BOOLEAN)
    turn_domain: str = setting(check_dns_name, lambda s: s["server_name"], plain="")
    turn_external_ip: str = setting(check_external_ip)
    turn_listening_ip: str = setting(check_ip)
    federation: FederationMode = setting(choice(FederationMode), FederationMode.ALLOW_LIST)
    federation_domains: tuple[str, ...] = setting(
        each(check_server_name_with_port), (), kind=Kind.LIST)
    # Peers also trusted as key servers (matrix-stack-admin federation allow --key-server).
    federation_key_servers: tuple[str, ...] = setting(
        each(check_server_name_with_port), (), asked=False)
    registration: RegistrationMode = setting(choice(RegistrationMode), RegistrationMode.DISABLED)
    behind_proxy: bool = setting(check_bool, False, kind=Kind.BOOLEAN)
    # The outside proxy allowed to set X-Forwarded-*.
    proxy_addresses: tuple[str, ...] = setting(
        each(check_proxy_address), ("127.0.0.1", "::1"), asked=False)
    database: DatabaseMode = setting(choice(DatabaseMode), DatabaseMode.SQLITE)
    # Synapse's SQLite file, where it already was on a server taken over (adopt).
    database_path: str = setting(
        check_absolute_path, DEFAULT_SQLITE_PATH, asked=False)
    # Empty: PostgreSQL on this host (socket, peer authentication); else a remote server.
    database_host: str = setting(check_database_host)
    database_port: int = setting(
        check_port, DEFAULT_DATABASE_PORT, kind=Kind.NUMBER)
    database_name: str = setting(check_pg_identifier, DEFAULT_DATABASE_NAME)
    database_user: str = setting(check_pg_identifier, DEFAULT_DATABASE_NAME)
    # The daily backup (matrix-stack-admin backup --schedule): off or daily, where, how many.
    backup_schedule: BackupSchedule = setting(
        choice(BackupSchedule), BackupSchedule.OFF, asked=False)
    backup_dir: str = setting(check_directory, DEFAULT_BACKUP_DIR, asked=False)
    backup_keep: int = setting(check_keep, DEFAULT_BACKUP_KEEP, asked=False)
    mail: MailMode = setting(choice(MailMode), MailMode.OFF)
    mail_from: str = setting(
        check_mail_from, lambda s: f"Matrix <noreply@{s['server_name']}>", plain="")
    mail_relay_host: str = setting(
        check_mail_host, when=_is("mail", MailMode.RELAY))
    mail_relay_port: int = setting(
        check_port, lambda s: DEFAULT_RELAY_PORTS[s["mail_relay_security"]],
        plain=DEFAULT_RELAY_PORTS[MailSecurity.STARTTLS], kind=Kind.NUMBER)
    mail_relay_security: MailSecurity = setting(choice(MailSecurity), MailSecurity.STARTTLS)
    mail_relay_user: str = setting(check_mail_user)
    mail_password_reset: bool = setting(check_bool, True, kind=Kind.BOOLEAN)
    admin_email: str = setting(lambda q, v: check_email(q, v) if v else "")
    # Synapse's worker processes: off, auto (sized to the cores) or counts per kind.
    workers: str = setting(check_workers, WORKERS_OFF)
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


def specs() -> dict[str, Spec]:
    """Return each setting's Spec by key, in the order of Settings (stack.yaml's order)."""
    return {item.name: item.metadata[SPEC] for item in fields(Settings) if SPEC in item.metadata}


def _read(
    key: str, spec: Spec, raw: Mapping[str, Any], done: Mapping[str, Any], root: Path
) -> Any:
    value = raw.get(key)
    if spec.when is not None and not spec.when(done):
        return "" if value is None else str(value).strip()
    if value in (None, "") or (spec.kind is Kind.LIST and not value and spec.default):
        value = spec.default(done) if callable(spec.default) else spec.default
    return spec.check(key, value, root) if spec.under_root else spec.check(key, value)


def from_mapping(raw: Mapping[str, Any], root: Path = Path("/")) -> Settings:
    """Validate stack.yaml's keys into Settings; empty derived names take their defaults."""
    declared = specs()
    unknown = sorted(set(raw) - set(declared))
    if unknown:
        raise SettingsError(unknown[0], raw[unknown[0]], "is not a matrix-stack setting")
    values: dict[str, Any] = {}
    # Settings of their own first, then those read from them (derived defaults, checks that
    # apply only under another setting's value).
    for derived in (False, True):
        for key, spec in declared.items():
            if spec.derived is derived:
                values[key] = _read(key, spec, raw, values, root)
    warnings = []
    if values["element_domain"] == values["server_name"]:
        warnings.append(
            f"Element is served from the homeserver's own name {values['server_name']}; Element "
            "advises a separate domain (cross-site scripting)"
        )
    settings = Settings(**values, warnings=tuple(warnings))
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
