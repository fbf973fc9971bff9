"""Facts read from this host (never from an outside service), kept apart from rendering."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.base.paths import DEFAULT_SQLITE_PATH as SYNAPSE_SQLITE_PATH
from matrix_stack.core.settings import Settings

# Documentation addresses (RFC 5737, RFC 3849): connect() on UDP only picks a route, sends nothing.
_PROBE_ADDRESSES = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


@dataclass(frozen=True)
class Facts:
    """What rendering needs from the host: the addresses TURN listens on and announces."""

    listening_ip: str = ""
    external_ip: str = ""
    country_code: str = ""  # of the system locale (Element's default for phone numbers)
    cpu_count: int = 2  # what matrix-stack/workers: auto sizes the layout to
    key_value_server: str = "valkey"  # Synapse's replication bus: valkey, else redis


def installed_key_value_server(root: Path = Path("/")) -> str:
    """Return the name of the Valkey or Redis server installed (valkey when neither is)."""
    from matrix_stack.core.workers import KEY_VALUE_SERVERS

    for server in KEY_VALUE_SERVERS:
        if (root / server.binary.lstrip("/")).exists():
            return server.name
    return KEY_VALUE_SERVERS[0].name


def host_names() -> tuple[str, ...]:
    """Return this host's names: the ones Apache gives a site without ServerName."""
    return tuple(dict.fromkeys((socket.getfqdn().lower(), socket.gethostname().lower())))


def default_route_address(family: socket.AddressFamily = socket.AF_INET) -> str:
    """Return this host's source address on its default route, or '' when it has none."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((_PROBE_ADDRESSES[family], 9))
            return str(probe.getsockname()[0])
    except OSError:
        return ""


def locale_country_code(root: Path = Path("/")) -> str:
    """Return the country of the system locale (/etc/default/locale: en_GB.UTF-8 gives GB)."""
    for name in ("etc/default/locale", "etc/locale.conf"):
        try:
            text = (root / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        values = {}
        for line in text.splitlines():
            key, separator, value = line.strip().partition("=")
            if separator:
                values[key] = value.strip().strip("\"'")
        locale = values.get("LC_ALL") or values.get("LANG") or ""
        match = re.match(r"[a-z]{2,3}_([A-Z]{2})\b", locale)
        return match.group(1) if match else ""
    return ""


def gather_facts(settings: Settings, root: Path | None = None) -> Facts:
    """Return the TURN addresses: the admin's answers, else the default route's address.

    With a root, the system locale's country is read under it too.
    """
    detected = ""
    if not settings.turn_listening_ip or not settings.turn_external_ip:
        detected = default_route_address() or default_route_address(socket.AF_INET6)
    listening = settings.turn_listening_ip or detected
    return Facts(
        listening_ip=listening,
        external_ip=settings.turn_external_ip or listening,
        country_code=locale_country_code(root) if root is not None else "",
        cpu_count=os.cpu_count() or 1,
        key_value_server=installed_key_value_server(root or Path("/")),
    )


# Addresses no client outside the local network can reach (RFC 1918, CGNAT RFC 6598,
# loopback, link-local, ULA): a TURN server announcing one needs external-ip PUBLIC/PRIVATE.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
        "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10",
    )
)


def is_private_address(address: str) -> bool:
    """Return whether address is private (unreachable from the Internet by design)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in PRIVATE_NETWORKS)


def synapse_sqlite_path(root: Path = Path("/")) -> Path:
    """Return the SQLite file Synapse's configuration names (Debian's place if it names none).

    A server built by hand keeps it where it was made (the wiki recipe: /etc/matrix-synapse).
    """
    from matrix_stack.base.errors import MatrixStackError
    from matrix_stack.synapse.config import read_merged_config
    from matrix_stack.synapse.db import Engine, parse_database

    try:
        database = parse_database(read_merged_config(root))
    except MatrixStackError:
        return SYNAPSE_SQLITE_PATH
    if database.engine is Engine.SQLITE and database.sqlite_path is not None:
        return database.sqlite_path
    return SYNAPSE_SQLITE_PATH


def synapse_has_database(root: Path = Path("/")) -> Path | None:
    """Return Synapse's SQLite database if it holds data (the server name is then fixed)."""
    sqlite = synapse_sqlite_path(root)
    try:
        return sqlite if (root / sqlite.relative_to("/")).stat().st_size > 0 else None
    except FileNotFoundError:
        return None
