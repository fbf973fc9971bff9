"""Facts read from this host (never from an outside service), kept apart from rendering."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.settings import Settings

SYNAPSE_SQLITE_PATH = Path("/var/lib/matrix-synapse/homeserver.db")
# Documentation addresses (RFC 5737, RFC 3849): connect() on UDP only picks a route, sends nothing.
_PROBE_ADDRESSES = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


@dataclass(frozen=True)
class Facts:
    """What rendering needs from the host: the addresses TURN listens on and announces."""

    listening_ip: str = ""
    external_ip: str = ""


def default_route_address(family: socket.AddressFamily = socket.AF_INET) -> str:
    """Return this host's source address on its default route, or '' when it has none."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((_PROBE_ADDRESSES[family], 9))
            return str(probe.getsockname()[0])
    except OSError:
        return ""


def gather_facts(settings: Settings) -> Facts:
    """Return the TURN addresses: the admin's answers, else the default route's address."""
    detected = ""
    if not settings.turn_listening_ip or not settings.turn_external_ip:
        detected = default_route_address()
    listening = settings.turn_listening_ip or detected
    return Facts(listening_ip=listening, external_ip=settings.turn_external_ip or listening)


def synapse_has_database(root: Path = Path("/")) -> Path | None:
    """Return Synapse's SQLite database if it holds data (the server name is then fixed)."""
    path = root / SYNAPSE_SQLITE_PATH.relative_to("/")
    try:
        return SYNAPSE_SQLITE_PATH if path.stat().st_size > 0 else None
    except FileNotFoundError:
        return None
