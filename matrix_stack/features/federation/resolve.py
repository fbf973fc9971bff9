"""Find where a Matrix server takes federation traffic, as the server-server spec says.

Order (https://spec.matrix.org/latest/server-server-api/#resolving-server-names): an IP
literal or an explicit port is used as it is; else /.well-known/matrix/server may delegate to
another name (followed through redirects, at most 50 KiB, a JSON object with m.server); then
SRV _matrix-fed._tcp, else the deprecated _matrix._tcp (MSC4040), else port 8448. The
certificate must be valid for the delegated host name (the server name when not delegated).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from matrix_stack.base.checks import Check, Status
from matrix_stack.base.errors import CommandError, SettingsError
from matrix_stack.base.run import last_line, run
from matrix_stack.core.services import synapse_python
from matrix_stack.core.settings import check_server_name_with_port

DEFAULT_PORT = 8448
WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_MAX_BYTES = 50 * 1024
SRV_PREFIXES = ("_matrix-fed._tcp", "_matrix._tcp")
TIMEOUT = 10.0
DNS_TIMEOUT = 5.0


@dataclass(frozen=True)
class ServerName:
    """A server name split into host and optional port; host is an IP literal or DNS name."""

    host: str
    port: int | None = None

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_server_name(text: str) -> ServerName:
    """Return a server name (host, IPv4, [IPv6], each with an optional :port), or raise."""
    value = text.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingsError("SERVER", text, "is not a server name") from None
        if rest and (not rest.startswith(":") or not rest[1:].isdigit()):
            raise SettingsError("SERVER", text, "has an invalid port")
        port = int(rest[1:]) if rest else None
        if port is not None and not 0 < port < 65536:
            raise SettingsError("SERVER", text, "has an invalid port (1-65535)")
        return ServerName(host, port)
    canonical = check_server_name_with_port("SERVER", value)
    host, _, port_text = canonical.partition(":")
    return ServerName(host, int(port_text) if port_text else None)


@dataclass(frozen=True)
class Endpoint:
    """Where to connect, which name the certificate must hold, and the Host header to send."""

    address: str
    port: int
    tls_name: str
    host_header: str

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP response as far as the well-known check needs it."""

    status: int
    content_type: str
    body: bytes
    redirected_to: str = ""


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def fetch_well_known(host: str, timeout: float = TIMEOUT, cafile: str | None = None) -> HttpAnswer:
    """GET https://host/.well-known/matrix/server, following redirects, verifying TLS."""
    return fetch_url(f"https://{host}{WELL_KNOWN_PATH}", timeout, cafile)


def fetch_url(url: str, timeout: float = TIMEOUT, cafile: str | None = None) -> HttpAnswer:
    """GET url directly (no proxy), following redirects; read at most 50 KiB and one byte."""
    import ssl
    import urllib.error
    import urllib.request

    from matrix_stack.synapse.api import direct_opener

    context = ssl.create_default_context(cafile=cafile)
    opener = direct_opener(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers={"User-Agent": "matrix-stack-admin"})
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(WELL_KNOWN_MAX_BYTES + 1)
            final = response.geturl()
            return HttpAnswer(response.status, response.headers.get_content_type(), body,
                              final if final != url else "")
    except urllib.error.HTTPError as error:
        final = error.geturl()
        return HttpAnswer(error.code, error.headers.get_content_type(), b"",
                          final if final != url else "")


# Synapse looks SRV records up with Twisted's DNS client (synapse/http/federation/
# srv_resolver.py: twisted.names.client.lookupService; NXDOMAIN means no records; answers other
# than SRV are skipped). The check asks the same client, in Synapse's own Python, so it sees
# what Synapse would: argv is the name, the timeout in seconds, and for tests a DNS server
# HOST:PORT to ask instead of /etc/resolv.conf's. One line of JSON comes back.
SRV_LOOKUP = """
import json, sys
from twisted.internet import defer, task
from twisted.names import client, dns, error

async def lookup(name, timeout, server):
    if server:
        host, _, port = server.rpartition(":")
        resolver = client.Resolver(servers=[(host, int(port))])
    else:
        resolver = client.createResolver()
    try:
        answers, _authority, _additional = await resolver.lookupService(name, (timeout,))
    except error.DNSNameError:
        return {"records": []}
    except (error.DNSQueryTimeoutError, defer.TimeoutError):
        return {"timeout": True}
    except (error.DNSServerError, error.DNSQueryRefusedError):
        return {"error": "no DNS server could answer"}
    except error.DomainError as failure:
        return {"error": f"{type(failure).__name__} {failure}".strip()}
    return {"records": [
        [answer.payload.priority, answer.payload.weight, answer.payload.port,
         answer.payload.target.name.decode("ascii")]
        for answer in answers if answer.type == dns.SRV and answer.payload]}

def main(reactor):
    async def run():
        server = sys.argv[3] if len(sys.argv) > 3 else ""
        print(json.dumps(await lookup(sys.argv[1], float(sys.argv[2]), server)))
    return defer.ensureDeferred(run())

task.react(main)
"""


def lookup_srv(
    name: str, timeout: float = DNS_TIMEOUT, server: str | None = None
) -> list[SrvRecord] | None:
    """Return the SRV records of name, or None when it has none; raise OSError on DNS failure.

    server: HOST:PORT of the DNS server to ask (tests), else those of /etc/resolv.conf.
    """
    argv = [str(synapse_python()), "-c", SRV_LOOKUP, name, f"{timeout:g}"]
    try:
        result = run([*argv, *([server] if server else [])], check=False, timeout=timeout + 30)
    except CommandError as error:
        raise OSError(f"cannot look SRV records up: {error}") from None
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise OSError(f"cannot look SRV records up with Synapse's DNS client: "
                      f"{last_line(result.stderr) or f'exit {result.returncode}'}") from None
    if answer.get("timeout"):
        raise OSError(f"no answer from the DNS server within {timeout:g} s")
    if "error" in answer:
        raise OSError(answer["error"])
    records = [SrvRecord(priority, weight, port, target.rstrip("."))
               for priority, weight, port, target in answer["records"]]
    if not records:
        return None
    return sorted(records, key=lambda record: (record.priority, -record.weight))


def resolve_addresses(host: str, port: int) -> list[str]:
    """Return every IPv4 and IPv6 address of host, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Network:
    """How the checks reach the network; tests swap these for local or fake ones."""

    timeout: float = TIMEOUT
    cafile: str | None = None  # None: the system's trust store, as Synapse uses
    fetch_well_known: Callable[[str], HttpAnswer] | None = None
    lookup_srv: Callable[[str], list[SrvRecord] | None] | None = None
    resolve: Callable[[str, int], list[str]] = field(default=resolve_addresses)

    def well_known(self, host: str) -> HttpAnswer:
        if self.fetch_well_known is not None:
            return self.fetch_well_known(host)
        return fetch_well_known(host, self.timeout, self.cafile)

    def srv(self, name: str) -> list[SrvRecord] | None:
        if self.lookup_srv is not None:
            return self.lookup_srv(name)
        return lookup_srv(name, min(self.timeout, DNS_TIMEOUT))


def parse_well_known(answer: HttpAnswer) -> tuple[Check, ServerName | None]:
    """Return the well-known check's result and the delegated server name, if any."""
    where = f" (redirected to {answer.redirected_to})" if answer.redirected_to else ""

    def ignored(status: Status, reason: str) -> tuple[Check, None]:
        return Check.of("well-known", status, reason), None

    if answer.status == 404:
        return ignored(Status.PASS, f"none published (404){where}: no delegation")
    if answer.status != 200:
        return ignored(Status.WARN, f"HTTP {answer.status}{where}: ignored, as other servers "
                       "do (no delegation)")
    if len(answer.body) > WELL_KNOWN_MAX_BYTES:
        return ignored(Status.FAIL, f"larger than 50 KiB{where}: other servers ignore it")
    try:
        content = json.loads(answer.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ignored(Status.FAIL, f"is not JSON{where}: other servers ignore it")
    value = content.get("m.server") if isinstance(content, dict) else None
    if not isinstance(value, str) or not value:
        return ignored(Status.FAIL, f'has no "m.server" string{where}: other servers ignore it')
    try:
        delegated = parse_server_name(value)
    except SettingsError:
        return ignored(Status.FAIL, f'"m.server" {value!r} is not a server name{where}: other '
                       "servers ignore it")
    detail = f"delegates to {delegated}{where}"
    if answer.content_type != "application/json":
        detail += f" (served as {answer.content_type}; application/json is expected)"
    return Check.of("well-known", Status.PASS, detail), delegated


def well_known_step(name: ServerName, network: Network) -> tuple[Check, ServerName | None]:
    """Fetch and judge the well-known file of name (only for a host name without a port)."""
    import ssl
    import urllib.error

    try:
        return parse_well_known(network.well_known(name.host))
    except ssl.SSLCertVerificationError as error:
        reason = getattr(error, "verify_message", None) or str(error)
    except urllib.error.URLError as error:
        inner = error.reason
        if isinstance(inner, ssl.SSLCertVerificationError):
            message = str(getattr(inner, "verify_message", inner)).rstrip(".")
            reason = f"certificate not trusted: {message}"
        else:
            reason = str(getattr(inner, "strerror", None) or inner)
    except (OSError, ValueError) as error:
        reason = str(error)
    return Check.of("well-known", Status.WARN, f"https://{name.host}{WELL_KNOWN_PATH} "
                  f"unreachable ({reason}): no delegation"), None


def srv_step(host: str, network: Network) -> tuple[Check, list[tuple[str, int]]]:
    """Look SRV records up for host; return the result and (target, port) pairs, maybe none."""
    for prefix in SRV_PREFIXES:
        record_name = f"{prefix}.{host}"
        try:
            records = network.srv(record_name)
        except OSError as error:
            return Check.of("srv", Status.WARN, f"lookup of {record_name} failed ({error}); "
                          f"using port {DEFAULT_PORT}"), []
        if records is None:
            continue
        if len(records) == 1 and records[0].target in ("", "."):
            return Check.of("srv", Status.FAIL, f"{record_name} says the service is not "
                          "available here (target '.')"), []
        targets = [(record.target, record.port) for record in records]
        shown = ", ".join(f"{target}:{port}" for target, port in targets)
        status = Status.PASS if prefix == SRV_PREFIXES[0] else Status.WARN
        deprecated = "" if status is Status.PASS else f" (deprecated: publish {SRV_PREFIXES[0]})"
        return Check.of("srv", status, f"{record_name} -> {shown}{deprecated}"), targets
    return Check.of("srv", Status.PASS, f"no {SRV_PREFIXES[0]} or {SRV_PREFIXES[1]} record for "
                  f"{host}: port {DEFAULT_PORT}"), []


def discover(server: ServerName, network: Network) -> tuple[list[Check], list[Endpoint]]:
    """Return the resolution checks and every endpoint (address, port) to probe."""
    results: list[Check] = []
    if server.is_ip or server.port is not None:
        kind = "an IP address" if server.is_ip else "an explicit port"
        results.append(Check.of("well-known", Status.PASS, f"not used: {server} has {kind}"))
        targets = [(server.host, server.port or DEFAULT_PORT)]
        tls_name, host_header = server.host, str(server)
    else:
        result, delegated = well_known_step(server, network)
        results.append(result)
        name = delegated or server
        tls_name, host_header = name.host, str(name)
        if name.is_ip or name.port is not None:
            results.append(Check.of("srv", Status.PASS, f"not used: {name} has "
                                  + ("an IP address" if name.is_ip else "an explicit port")))
            targets = [(name.host, name.port or DEFAULT_PORT)]
        else:
            result, targets = srv_step(name.host, network)
            results.append(result)
            targets = targets or [(name.host, DEFAULT_PORT)]
    endpoints: list[Endpoint] = []
    for host, port in targets:
        try:
            addresses = network.resolve(host, port)
        except (OSError, UnicodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            results.append(Check.of("dns", Status.FAIL, f"{host} does not resolve ({reason})"))
            continue
        results.append(Check.of("dns", Status.PASS, f"{host} -> {', '.join(addresses)}"))
        endpoints.extend(Endpoint(a, port, tls_name, host_header) for a in addresses)
    return results, endpoints
