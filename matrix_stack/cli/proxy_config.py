"""matrix-stack-admin proxy-config traefik|haproxy: this stack behind an outside proxy.

The proxy terminates TLS on 443 (client API, /.well-known/matrix, Element) and 8448
(federation) and forwards plain HTTP to Apache, which matrix-stack/behind-proxy makes listen
on port 80 for the proxy's addresses only. With matrix-stack/workers, a proxy on this host
sends the workers' endpoints (worker_routes.py) to them itself: they listen on loopback only,
so a proxy elsewhere leaves that to Apache.
"""

from __future__ import annotations

import argparse
import sys

from matrix_stack.base.errors import UsageError

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from typing import Any

    from matrix_stack.core.settings import Settings
    from matrix_stack.core.worker_routes import WorkerBackend
    from matrix_stack.core.workers import Worker

PROXIES = ("traefik", "haproxy")
TEMPLATES = {"traefik": "proxy-traefik.yaml.j2", "haproxy": "proxy-haproxy.cfg.j2"}
BACKEND_PORT = 80


def add_commands(commands: Any) -> None:
    """Register the proxy-config command on the top-level subparsers."""
    parser = commands.add_parser(
        "proxy-config", help="print a Traefik or HAProxy configuration for this stack",
        description="Print a ready configuration for an outside reverse proxy in front of "
        "this stack: a Traefik dynamic configuration (file provider, YAML; the static entry "
        "points it needs are shown in its comments) or an HAProxy frontend and backend. The "
        "proxy terminates TLS with HTTP/2 on 443 (client API, /.well-known/matrix, Element) "
        "and 8448 (federation), sets X-Forwarded-For and X-Forwarded-Proto, passes the Host "
        "header and encoded paths (%2F) on unchanged, and forwards to Apache's plain HTTP "
        "port 80. With matrix-stack/workers on and the proxy on this host (a loopback "
        "backend), the proxy sends the workers' endpoints to them itself: HAProxy keeps each "
        "user's syncs on one sync worker (a hash of the access token's user); Traefik, which "
        "cannot hash on a header, leaves two sync workers or more to Apache. A proxy "
        "elsewhere cannot reach the workers (they listen on loopback): Apache routes to them.",
        epilog="Answer matrix-stack/behind-proxy with yes, and list the proxy's address in "
        "proxy_addresses of /etc/matrix-stack/stack.yaml: Apache serves that address only "
        "and trusts X-Forwarded-For from it alone.",
    )
    parser.add_argument("proxy", choices=PROXIES, metavar="PROXY", help="traefik or haproxy")
    parser.add_argument(
        "--backend", metavar="HOST[:PORT]",
        help="where the proxy reaches this host's Apache (default: 127.0.0.1:80 when "
        "proxy_addresses are loopback only, the proxy running on this host; else this host's "
        "address on its default route, port 80)",
    )
    parser.set_defaults(handler=run_proxy_config)


def default_backend(settings: Settings) -> str:
    """Return where the proxy reaches Apache: loopback for a proxy on this host, else ours."""
    import ipaddress

    from matrix_stack.core.host import default_route_address

    networks = [ipaddress.ip_network(address) for address in settings.proxy_addresses]
    if all(network.is_loopback for network in networks):
        return f"127.0.0.1:{BACKEND_PORT}"
    address = default_route_address()
    if not address:
        raise UsageError("this host has no default route: name the address the proxy "
                         "connects to with --backend HOST[:PORT]")
    return f"{address}:{BACKEND_PORT}"


def check_backend(value: str) -> str:
    """Return HOST:PORT (port 80 when omitted; IPv6 in brackets), or raise UsageError."""
    import ipaddress

    from matrix_stack.core.settings import check_dns_name

    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or str(BACKEND_PORT)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"--backend {value}: not an IPv6 address in brackets") from None
        host = f"[{host}]"
    else:
        host, _, port = text.partition(":")
        port = port or str(BACKEND_PORT)
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            host = check_dns_name("--backend", host)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--backend {value}: the port must be 1-65535")
    return f"{host}:{int(port)}"


def on_this_host(backend: str) -> bool:
    """Return whether the proxy reaches Apache on loopback, so runs on this host."""
    import ipaddress

    host = backend.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_backends(workers: tuple[Worker, ...], backend: str) -> list[WorkerBackend]:
    """Return the workers the proxy sends requests to itself: none for a proxy elsewhere."""
    from matrix_stack.core.worker_routes import ROUTES_OF_KIND, WorkerBackend
    from matrix_stack.core.workers import of_kind

    if not on_this_host(backend):
        return []
    backends = []
    for kind, patterns in ROUTES_OF_KIND.items():
        servers = tuple((worker.name, worker.port) for worker in of_kind(workers, kind))
        if servers:
            backends.append(WorkerBackend(kind, patterns, servers))
    return backends


def sticky_sync(entry: WorkerBackend) -> bool:
    """Return whether entry is sync shared by several workers (each user's on one of them)."""
    return entry.kind == "sync" and len(entry.servers) > 1


def render_proxy_config(
    settings: Settings, proxy: str, backend: str, workers: tuple[Worker, ...] = ()
) -> str:
    """Return the proxy's configuration text for this stack (workers: the layout's)."""
    import jinja2

    from matrix_stack.core.render import TEMPLATES_DIR

    names = list(dict.fromkeys((settings.server_name, settings.element_domain)))
    backends = worker_backends(workers, backend)
    hosts = " || ".join(f"Host(`{name}`)" for name in names)
    context = {
        "s": settings,
        "backend": backend,
        "names": names,
        "client_rule": hosts,
        "federation_rule": f"Host(`{settings.server_name}`) && PathPrefix(`/_matrix`)",
        "workers": workers,
        "worker_backends": backends,
        # Traefik cannot hash on a header: two sync workers or more stay behind Apache's hash.
        "traefik_backends": [entry for entry in backends if not sticky_sync(entry)],
        "sync_via_apache": any(sticky_sync(entry) for entry in backends),
    }
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
    )
    return environment.get_template(TEMPLATES[proxy]).render(context)


def run_proxy_config(arguments: argparse.Namespace) -> int:
    from matrix_stack.core.stack import current_settings

    settings = current_settings()
    backend = check_backend(arguments.backend) if arguments.backend else default_backend(
        settings)
    from matrix_stack.cli.workers import current_workers

    workers, _cores = current_workers(settings)
    print(render_proxy_config(settings, arguments.proxy, backend, workers), end="")
    if not settings.behind_proxy:
        print("warning: Apache still serves TLS itself; answer yes to matrix-stack/behind-proxy "
              "(dpkg-reconfigure matrix-stack) so that it serves this proxy on port 80",
              file=sys.stderr)
    return 0
