"""The TURN settings in force, read from the files coturn and Synapse read themselves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.paths import TURNSERVER_CONF_PATH

SRV_TTL = 3600


@dataclass(frozen=True)
class TurnConfig:
    """The TURN settings in force: coturn's options and Synapse's voip settings."""

    server_name: str
    coturn: dict[str, list[str]]
    synapse_secret: str
    synapse_secret_origin: str
    uris: tuple[str, ...]
    lifetime_ms: int

    def option(self, name: str, default: str = "") -> str:
        """Return the last value of a coturn option (coturn's own rule), or default."""
        values = self.coturn.get(name)
        return values[-1] if values else default

    @property
    def turn_domain(self) -> str:
        return self.option("realm", self.server_name)

    @property
    def address(self) -> str:
        """Return where to reach coturn from this host: its first listening address."""
        return self.option("listening-ip") or "127.0.0.1"


def parse_coturn_config(text: str) -> dict[str, list[str]]:
    """Return turnserver.conf's options, each with its values in order ('' for a flag)."""
    options: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.replace("=", " ", 1).partition(" ")
        options.setdefault(name.lstrip("-"), []).append(value.strip().strip('"'))
    return options


def parse_duration(value: object) -> int:
    """Return a Synapse duration ('1d', '3600s', or milliseconds) in milliseconds."""
    if type(value) is int:
        return value
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]] * 1000
    return int(text)


def load_turn_config(root: Path = Path("/")) -> TurnConfig:
    """Read coturn's and Synapse's TURN settings; raise one line when TURN is not set up."""
    from matrix_stack.base.files import host_path
    from matrix_stack.core.servername import synapse_server_name
    from matrix_stack.synapse.config import read_merged_config

    server_name = synapse_server_name(root)
    if server_name is None:
        raise MatrixStackError("Synapse has no server name yet; run: dpkg-reconfigure matrix-stack")
    synapse = read_merged_config(root)
    uris = tuple(str(uri) for uri in synapse.get("turn_uris") or ())
    if not uris:
        raise MatrixStackError(
            "Synapse hands out no TURN server (turn_uris is empty): set turn_enable: true in "
            "/etc/matrix-stack/stack.yaml and run: matrix-stack-admin apply"
        )
    secret_path = synapse.get("turn_shared_secret_path")
    if secret_path:
        try:
            secret = host_path(Path(secret_path), root).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise MatrixStackError(
                f"cannot read Synapse's turn_shared_secret_path {secret_path}: {error.strerror}"
            ) from None
        origin = f"turn_shared_secret_path {secret_path}"
    else:
        secret, origin = str(synapse.get("turn_shared_secret") or ""), "turn_shared_secret"
    if not secret:
        raise MatrixStackError("Synapse has turn_uris but no TURN shared secret")
    try:
        coturn_text = host_path(TURNSERVER_CONF_PATH, root).read_text(encoding="utf-8")
    except OSError as error:
        raise MatrixStackError(
            f"cannot read coturn's {TURNSERVER_CONF_PATH}: {error.strerror}; run: "
            "matrix-stack-admin apply"
        ) from None
    return TurnConfig(
        server_name=server_name,
        coturn=parse_coturn_config(coturn_text),
        synapse_secret=secret,
        synapse_secret_origin=origin,
        uris=uris,
        lifetime_ms=parse_duration(synapse.get("turn_user_lifetime", "1h")),
    )


def default_user(server_name: str) -> str:
    """Return the user minted for by default: matrix-stack-admin's own service account."""
    from matrix_stack.synapse.api import SERVICE_LOCALPART

    return f"@{SERVICE_LOCALPART}:{server_name}"


def credentials_for(config: TurnConfig, user_id: str, now: float) -> dict[str, Any]:
    """Return what Synapse's voip/turnServer endpoint would return to user_id at time now."""
    from matrix_stack.features.turn.credentials import turn_credentials

    username, password = turn_credentials(
        config.synapse_secret, user_id, config.lifetime_ms // 1000, now
    )
    return {
        "username": username,
        "password": password,
        "ttl": config.lifetime_ms // 1000,
        "uris": list(config.uris),
    }


def address_warnings(config: TurnConfig) -> list[str]:
    """Return a warning when coturn announces an address that outside clients cannot reach."""
    from matrix_stack.core.host import is_private_address

    external = config.option("external-ip") or config.option("listening-ip")
    public = external.split("/")[0]
    if public and is_private_address(public):
        return [
            f"coturn announces {public}, a private address: clients outside this network "
            "cannot reach it; set matrix-stack/turn-external-ip to PUBLIC/PRIVATE (the NAT's "
            f"public address, then {public}) with dpkg-reconfigure matrix-stack"
        ]
    return []


def srv_records(config: TurnConfig, with_tls: bool) -> list[str]:
    """Return the DNS SRV records that point clients looking them up at this TURN server."""
    port = config.option("listening-port", "3478")
    target = config.turn_domain
    records = [
        f"_stun._udp.{config.server_name}. {SRV_TTL} IN SRV 0 0 {port} {target}.",
        f"_turn._udp.{config.server_name}. {SRV_TTL} IN SRV 0 0 {port} {target}.",
    ]
    if with_tls:
        tls_port = config.option("tls-listening-port", "5349")
        records.append(
            f"_turns._tcp.{config.server_name}. {SRV_TTL} IN SRV 0 0 {tls_port} {target}."
        )
    return records
