"""A local federation tester: one server checked as another Matrix server would reach it.

For every address the server resolves to: a TLS certificate valid for the delegated host
against this system's trust store (Synapse's too), /_matrix/key/v2/server (server_name,
valid_until_ts in the future, every ed25519 signature verifies), and
/_matrix/federation/v1/version; last, whether this server's allow-list admits it.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from matrix_stack.base.checks import Check, Status
from matrix_stack.base.errors import MatrixStackError
from matrix_stack.features.federation.resolve import Endpoint, Network, ServerName, discover

MAX_BODY_BYTES = 1024 * 1024
# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code gives them.
_EXPIRED, _NOT_YET_VALID, _SELF_SIGNED, _SELF_SIGNED_IN_CHAIN = 10, 9, 18, 19
_UNKNOWN_ISSUER = (2, 20, 21)
_HOSTNAME_MISMATCH = 62


def open_tls(endpoint: Endpoint, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """Connect to the endpoint's address with TLS, sending the delegated host name as SNI."""
    raw = socket.create_connection((endpoint.address, endpoint.port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=endpoint.tls_name)
    except BaseException:
        raw.close()
        raise


def unverified_context() -> ssl.SSLContext:
    """Return a TLS client context that accepts any certificate (judged separately)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def get_json(endpoint: Endpoint, path: str, timeout: float) -> tuple[int, Any]:
    """GET path from the endpoint with its Host header; return the status and parsed JSON."""
    tls = open_tls(endpoint, unverified_context(), timeout)
    connection = http.client.HTTPConnection(endpoint.address, endpoint.port, timeout=timeout)
    connection.sock = tls
    try:
        connection.request("GET", path, headers={
            "Host": endpoint.host_header, "User-Agent": "matrix-stack-admin",
            "Accept": "application/json",
        })
        response = connection.getresponse()
        body = response.read(MAX_BODY_BYTES)
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return response.status, None


def certificate_facts(der: bytes) -> dict[str, Any]:
    """Return a certificate's subject, issuer, DNS/IP names and expiry, read with openssl."""
    from matrix_stack.base.run import run

    result = run(
        ["openssl", "x509", "-noout", "-subject", "-issuer", "-enddate", "-ext",
         "subjectAltName"],
        input_text=ssl.DER_cert_to_PEM_cert(der), check=False, timeout=30,
    )
    facts: dict[str, Any] = {"subject": "", "issuer": "", "not_after": "", "names": []}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("subject", "issuer"):
            facts[key] = value.strip()
        elif sep and key == "notAfter":
            facts["not_after"] = value.strip()
    facts["names"] = re.findall(r"(?:DNS|IP Address):([^,\s]+)", result.stdout)
    return facts


def describe_failure(error: ssl.SSLCertVerificationError, der: bytes, tls_name: str) -> str:
    """Return why the certificate is not trusted, in words an administrator can act on."""
    facts = certificate_facts(der) if der else {"subject": "", "issuer": "", "names": [],
                                                  "not_after": ""}
    names = ", ".join(facts["names"]) or facts["subject"] or "no name"
    code = error.verify_code
    if code == _SELF_SIGNED:
        return (f"self-signed certificate ({names}): other servers refuse it; use one from a "
                "CA (tls: acme, or tls: files)")
    self_signed = " (self-signed)" if facts["subject"] and facts["subject"] == facts[
        "issuer"] else ""
    if code == _HOSTNAME_MISMATCH:
        return f"not valid for {tls_name}: the certificate names {names}{self_signed}"
    if code == _SELF_SIGNED_IN_CHAIN:
        return f"issued by {facts['issuer']}, a CA that this system does not trust"
    if code in _UNKNOWN_ISSUER:
        return (f"issued by {facts['issuer']}, unknown to this system's trust store (is the "
                "intermediate certificate missing from the chain?)")
    if code == _EXPIRED:
        return f"expired on {facts['not_after']}{self_signed}"
    if code == _NOT_YET_VALID:
        return f"not valid yet{self_signed}"
    return f"not trusted: {error.verify_message}{self_signed}"


def _name_of(distinguished: Any) -> str:
    """Return the commonName (else the whole name) of a getpeercert() subject or issuer."""
    pairs = [pair for rdn in distinguished or () for pair in rdn]
    common = [value for key, value in pairs if key == "commonName"]
    return common[0] if common else ", ".join(f"{key}={value}" for key, value in pairs)


def check_certificate(endpoint: Endpoint, network: Network) -> tuple[Check, bool]:
    """Verify the endpoint's certificate for the delegated host; say if TLS works at all."""
    context = ssl.create_default_context(cafile=network.cafile)
    try:
        with open_tls(endpoint, context, network.timeout) as tls:
            peer = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as error:
        try:
            with open_tls(endpoint, unverified_context(), network.timeout) as tls:
                der = tls.getpeercert(binary_form=True) or b""
        except OSError:
            der = b""
        detail = describe_failure(error, der, endpoint.tls_name)
        return Check.of("tls", Status.FAIL, detail, endpoint.label), bool(der)
    except ssl.SSLError as error:
        return Check.of("tls", Status.FAIL, f"TLS handshake failed ({error.reason or error})",
                      endpoint.label), False
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        return Check.of("tls", Status.FAIL, f"cannot connect ({reason})", endpoint.label), False
    detail = (f"certificate valid for {endpoint.tls_name}, issued by "
              f"{_name_of(peer.get('issuer'))}, until {peer.get('notAfter', '?')}")
    return Check.of("tls", Status.PASS, detail, endpoint.label), True


def _iso(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def judge_keys(body: Any, server_name: str, now: float, where: str = "") -> list[Check]:
    """Return the checks of a /_matrix/key/v2/server response (parsed JSON)."""
    from signedjson.key import decode_verify_key_bytes
    from signedjson.sign import SignatureVerifyException, verify_signed_json
    from unpaddedbase64 import decode_base64

    if not isinstance(body, dict):
        return [Check.of("keys", Status.FAIL, "the response is not a JSON object", where)]
    results = []
    claimed = body.get("server_name")
    if claimed == server_name:
        results.append(Check.of("keys", Status.PASS, f"server_name is {server_name}", where))
    else:
        results.append(Check.of("keys", Status.FAIL,
                              f"server_name is {claimed!r}, not {server_name!r}", where))
    until = body.get("valid_until_ts")
    if type(until) is int and until > now * 1000:
        hours = (until - now * 1000) / 3_600_000
        results.append(Check.of("keys", Status.PASS,
                              f"valid until {_iso(until)} (in {hours:.0f} h)", where))
    else:
        shown = _iso(until) if type(until) is int else repr(until)
        results.append(Check.of("keys", Status.FAIL,
                              f"valid_until_ts {shown} is not in the future", where))
    keys = body.get("verify_keys")
    keys = keys if isinstance(keys, dict) else {}
    ed25519 = sorted(key_id for key_id in keys if key_id.startswith("ed25519:"))
    if not ed25519:
        results.append(Check.of("keys", Status.FAIL, "no ed25519 verify key", where))
    signer = claimed if isinstance(claimed, str) else server_name
    for key_id in ed25519:
        entry = keys[key_id]
        try:
            key_bytes = decode_base64(entry["key"])
            if len(key_bytes) != 32:
                raise ValueError(f"{len(key_bytes)} bytes, not 32")
            verify_signed_json(body, signer, decode_verify_key_bytes(key_id, key_bytes))
        except SignatureVerifyException as error:
            results.append(Check.of("keys", Status.FAIL, f"{key_id} signature does not verify "
                                  f"({error})", where))
        except (KeyError, TypeError, ValueError) as error:
            results.append(Check.of("keys", Status.FAIL, f"{key_id} is not a valid ed25519 key "
                                  f"({error})", where))
        else:
            results.append(Check.of("keys", Status.PASS,
                                  f"{key_id} signature by {signer} verifies", where))
    return results


def check_endpoint(endpoint: Endpoint, server_name: str, network: Network,
                   now: float) -> list[Check]:
    """Return the TLS, key and version checks of one address."""
    certificate, connected = check_certificate(endpoint, network)
    results = [certificate]
    if not connected:
        return results
    where = endpoint.label
    try:
        status, body = get_json(endpoint, "/_matrix/key/v2/server", network.timeout)
        if status != 200:
            results.append(Check.of("keys", Status.FAIL, f"/_matrix/key/v2/server answered HTTP "
                                  f"{status}", where))
        else:
            results.extend(judge_keys(body, server_name, now, where))
        status, body = get_json(endpoint, "/_matrix/federation/v1/version", network.timeout)
    except (OSError, ValueError, http.client.HTTPException) as error:
        results.append(Check.of("federation", Status.FAIL, f"request failed ({error})", where))
        return results
    server = body.get("server") if isinstance(body, dict) else None
    if status == 200 and isinstance(server, dict):
        name = f"{server.get('name', '?')} {server.get('version', '')}".strip()
        results.append(Check.of("version", Status.PASS, f"federation API answers: {name}", where))
    else:
        results.append(Check.of("version", Status.FAIL, "/_matrix/federation/v1/version answered "
                              f"HTTP {status} without a server name and version", where))
    return results


def judge_allow_list(server_name: str, whitelist: object) -> Check:
    """Return whether Synapse's federation_domain_whitelist (None: absent) admits the server."""
    if whitelist is None:
        return Check.of("allow-list", Status.PASS, "federation is open here: every server is "
                      "admitted")
    if not isinstance(whitelist, list) or not whitelist:
        return Check.of("allow-list", Status.FAIL, "federation is off here (empty "
                      "federation_domain_whitelist); run: matrix-stack-admin federation mode "
                      "allow-list")
    if server_name in [str(item) for item in whitelist]:
        return Check.of("allow-list", Status.PASS, f"{server_name} is on this server's allow-list")
    return Check.of("allow-list", Status.FAIL, f"{server_name} is not on this server's "
                  f"allow-list; add it with: matrix-stack-admin federation allow {server_name}")


def synapse_allow_list(server_name: str, own_name: str | None) -> Check:
    """Return the allow-list check against Synapse's configuration in force."""
    from matrix_stack.synapse.config import read_merged_config

    if own_name is not None and server_name == own_name:
        return Check.of("allow-list", Status.PASS, "not needed: this is this server")
    try:
        config = read_merged_config()
    except MatrixStackError as error:
        return Check.of("allow-list", Status.WARN, f"not checked ({error}; run as root)")
    return judge_allow_list(server_name, config.get("federation_domain_whitelist"))


def run_check(
    server: ServerName,
    network: Network,
    allow_list: Callable[[str], Check] | None = None,
    now: float | None = None,
) -> list[Check]:
    """Return every check of server, in the order another server would go through them."""
    moment = time.time() if now is None else now
    results, endpoints = discover(server, network)
    if not endpoints and not any(r.status is Status.FAIL for r in results):
        results.append(Check.of("dns", Status.FAIL, "no address to connect to"))
    for endpoint in endpoints:
        results.extend(check_endpoint(endpoint, str(server), network, moment))
    if allow_list is not None:
        results.append(allow_list(str(server)))
    return results


def report_json(server: ServerName, results: list[Check]) -> str:
    """Return the results as JSON for scripts: ok, and every check with its status."""
    return json.dumps({
        "server": str(server),
        "ok": not any(result.status is Status.FAIL for result in results),
        "checks": [
            {"check": r.name, "status": r.status.value, "detail": r.detail,
             "address": r.where or None}
            for r in results
        ],
    }, indent=2)
