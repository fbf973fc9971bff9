"""The TURN self-test: coturn checked end to end as a client would, one line per step."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matrix_stack.base.checks import Check, Steps
from matrix_stack.base.paths import TURNSERVER_CONF_PATH
from matrix_stack.features.turn.config import (
    TurnConfig,
    address_warnings,
    default_user,
    srv_records,
)

# Peers coturn must refuse: loopback and a private (RFC 1918) address.
DENIED_PROBES = ("127.0.0.1", "10.0.0.1")


def coturn_running() -> bool | None:
    """Return whether coturn.service is active; None without systemd (a chroot)."""
    from matrix_stack.base.paths import SYSTEMD_RUNNING
    from matrix_stack.base.run import run

    if not SYSTEMD_RUNNING.exists():
        return None
    return run(["systemctl", "is-active", "--quiet", "coturn.service"], check=False).returncode == 0


def run_checks(
    config: TurnConfig,
    *,
    running: bool | None,
    steps: Steps,
    now: float | None = None,
    key_readable: Callable[[str], bool] | None = None,
) -> list[Check]:
    """Check coturn end to end as a client would, one step each (steps prints them as they
    come); return the steps."""
    from matrix_stack.features.turn.credentials import turn_credentials

    if running is False:
        steps.fail("coturn is not running: start it with systemctl start coturn "
                   "(why it stopped: journalctl -u coturn)")
        return steps.checks
    if running:
        steps.ok("coturn is running")
    if "use-auth-secret" in config.coturn and config.synapse_secret in config.coturn.get(
        "static-auth-secret", []
    ):
        steps.ok(f"coturn and Synapse share the TURN secret ({config.synapse_secret_origin})")
    else:
        steps.fail(
            f"coturn's static-auth-secret in {TURNSERVER_CONF_PATH} is not Synapse's "
            f"{config.synapse_secret_origin}: coturn refuses every credential Synapse hands "
            "out; run: matrix-stack-admin apply"
        )
    for warning in address_warnings(config):
        steps.warn(warning)
    user = default_user(config.server_name)
    username, password = turn_credentials(
        config.synapse_secret, user, 600, time.time() if now is None else now
    )
    address, port = config.address, int(config.option("listening-port", "3478"))
    for transport in ("udp", "tcp"):
        label = f"Allocate over {transport.upper()} at {address} port {port} as {user}"
        allocate(steps, config, label, (address, port, transport), (username, password))
    if has_tls(config):
        check_tls(steps, config, (username, password), key_readable or turnserver_can_read)
    else:
        steps.warn("coturn has no certificate: no turns: on port 5349 (tls: acme)")
    return steps.checks


def has_tls(config: TurnConfig) -> bool:
    """Return whether coturn serves turns: (a certificate, TLS not turned off)."""
    return bool(config.option("cert")) and "no-tls" not in config.coturn


def srv_lines(config: TurnConfig) -> list[str]:
    """Return the DNS SRV records to publish, after a heading line."""
    return ["DNS SRV records to publish for clients that look TURN up (optional):",
            *(f"  {record}" for record in srv_records(config, has_tls(config)))]


def allocate(
    steps: Steps,
    config: TurnConfig,
    label: str,
    target: tuple[str, int, str],
    credentials: tuple[str, str],
    connected: str = "",
    **client_options: Any,
) -> None:
    """Allocate a relay (probing peers on UDP) and free it; say connected once connected."""
    from matrix_stack.features.turn.credentials import TurnClient, TurnError, elapsed_ms

    started = time.monotonic()
    try:
        with TurnClient(*target, **client_options) as client:
            if connected:
                steps.ok(connected)
            relayed, relayed_port = client.allocate(*credentials)
            steps.ok(f"{label}: relayed address {relayed}:{relayed_port} "
                     f"({elapsed_ms(started)} ms)")
            if target[2] == "udp":
                probe_peers(steps, config, client)
            with contextlib.suppress(TurnError):  # else it expires by itself
                client.release()
    except TurnError as error:
        hint = "" if "certificate" in error.reason else HINTS.get(error.code, "")
        steps.fail(f"{label}: {error}{hint}")


HINTS = {
    0: " (is coturn listening there, and the port open? journalctl -u coturn)",
    401: " (coturn refused the credentials: its secret is not Synapse's, or the clock is off)",
    486: " (user-quota reached: too many allocations for one user)",
}


def probe_peers(steps: Steps, config: TurnConfig, client: Any) -> None:
    """Check private and loopback peers are refused and this server's own address is not."""
    from matrix_stack.features.turn.credentials import TurnError

    for peer in DENIED_PROBES:
        try:
            client.create_permission(peer)
        except TurnError as error:
            if error.code == 403:
                steps.ok(f"relaying to {peer} is refused ({error})")
            else:
                steps.fail(f"relaying to {peer}: expected 403 Forbidden IP, got {error}")
        else:
            steps.fail(f"coturn relays to {peer}: no denied-peer-ip covers it "
                       f"(edited {TURNSERVER_CONF_PATH}?)")
    for own in config.coturn.get("allowed-peer-ip", [])[:1]:
        try:
            client.create_permission(own)
        except TurnError as error:
            steps.fail(f"relaying to this server's own address {own} is refused: {error}")
        else:
            steps.ok(f"relaying to this server's own address {own} is allowed "
                     "(calls where both sides use this TURN server)")


def check_tls(
    steps: Steps,
    config: TurnConfig,
    credentials: tuple[str, str],
    key_readable: Callable[[str], bool],
) -> None:
    """Check coturn can read its key, and that 5349 serves that certificate, verified."""
    certificate, key = config.option("cert"), config.option("pkey")
    if key and not key_readable(key):
        steps.fail(f"coturn (user turnserver) cannot read its key {key}: chgrp turnserver "
                   f"{key}; chmod 0640 {key}; let the group into its directory, then "
                   "systemctl restart coturn")
    port = int(config.option("tls-listening-port", "5349"))
    label = f"TLS on {config.address} port {port} for {config.turn_domain}"
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=certificate)  # a self-signed one is its own CA
        expected = ssl.PEM_cert_to_DER_cert(first_pem_block(Path(certificate).read_text("ascii")))
    except (OSError, ValueError, ssl.SSLError) as error:
        steps.fail(f"cannot read coturn's certificate {certificate}: {error}")
        return
    served = served_certificate(config.address, port)
    if served is not None and served != expected:
        steps.fail(f"{label}: coturn serves another certificate than {certificate} (renewed "
                   "since coturn started? systemctl kill --signal=USR2 coturn reloads it)")
        return
    allocate(
        steps, config,
        f"Allocate over TLS at {config.address} port {port} as {default_user(config.server_name)}",
        (config.address, port, "tls"), credentials,
        connected=f"{label}: serves {certificate}, verified for {config.turn_domain}",
        tls_context=context, server_name=config.turn_domain,
    )


def first_pem_block(text: str) -> str:
    """Return the first certificate of a PEM file (a full chain has several)."""
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    if start < 0 or end not in text[start:]:
        raise ValueError("no PEM certificate in it")
    return text[start : text.index(end, start) + len(end)] + "\n"


def served_certificate(address: str, port: int) -> bytes | None:
    """Return the certificate a TLS port serves, unverified; None when it does not answer."""
    from matrix_stack.features.turn.credentials import TurnClient, TurnError

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with TurnClient(address, port, "tls", tls_context=context) as client:
            return client.peer_certificate()
    except TurnError:
        return None  # the verified connection that follows says why


def turnserver_can_read(path: str) -> bool:
    """Return whether coturn's user may read path."""
    from matrix_stack.base.run import run

    return run(["test", "-r", path], check=False, user="turnserver").returncode == 0
