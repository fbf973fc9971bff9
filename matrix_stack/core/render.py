"""Render every generated file from Settings: a pure function, no I/O but reading templates."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import jinja2

from matrix_stack.base.files import FileSpec
from matrix_stack.base.paths import (
    APACHE_SITE_PATH,
    ELEMENT_CONFIG_PATH,
    ELEMENT_DIR,
    ELEMENT_ROOT,
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    WELL_KNOWN_DIR,
)
from matrix_stack.base.secrets import (
    DATABASE_PASSFILE,
    MAIL_PASSWORD_PATH,
    REDIS_PASSWORD_PATH,
    REGISTRATION_SECRET_PATH,
    TURN_SECRET_PATH,
    WORKER_REPLICATION_SECRET_PATH,
    Secrets,
)
from matrix_stack.core.host import Facts, is_private_address
from matrix_stack.core.settings import FederationMode, RegistrationMode, Settings
from matrix_stack.core.tls import certificate_paths
from matrix_stack.core.worker_routes import (
    ROUTES_OF_KIND,
    apache_pattern,
    hex_partitions,
    sync_pattern,
)
from matrix_stack.core.workers import (
    KEY_VALUE_INSTANCE,
    KEY_VALUE_PORT,
    KEY_VALUE_SERVER_BY_NAME,
    REPLICATION_PORT,
    KeyValueServer,
    Worker,
    of_kind,
    plan_workers,
)

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"


# coturn must never relay into these (Synapse's TURN guide; RFC 6890 special-purpose ranges).
DENIED_PEER_NETWORKS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001::/23", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
)


# Element's files compressed at install time, and the media type each copy is served as.
PRECOMPRESSED_TYPES = (
    ("js", "text/javascript"),
    ("mjs", "text/javascript"),
    ("css", "text/css"),
    ("html", "text/html; charset=utf-8"),
    ("json", "application/json"),
    ("svg", "image/svg+xml"),
    ("wasm", "application/wasm"),
    ("txt", "text/plain; charset=utf-8"),
    ("map", "application/json"),
    ("ttf", "font/ttf"),
)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def denied_ranges() -> list[tuple[str, str]]:
    """Return DENIED_PEER_NETWORKS as first-last pairs, the form every coturn version reads."""
    ranges = []
    for network in DENIED_PEER_NETWORKS:
        parsed = ipaddress.ip_network(network)
        ranges.append((str(parsed[0]), str(parsed[-1])))
    return ranges


def allowed_peers(facts: Facts) -> list[str]:
    """Return this server's own relay addresses, exempt from the denied ranges."""
    addresses = [facts.listening_ip, *facts.external_ip.split("/")]
    return [address for address in dict.fromkeys(addresses) if address]


def turn_address_private(settings: Settings, facts: Facts) -> bool:
    """Return whether coturn would announce a detected private address (NAT, no answer)."""
    public = facts.external_ip.split("/")[0]
    return not settings.turn_external_ip and bool(public) and is_private_address(public)


def render_element_config(settings: Settings, country_code: str = "") -> str:
    """Return Element's config.json: this homeserver only, matching the registration policy."""
    config: dict[str, Any] = {
        "default_server_config": {
            "m.homeserver": {
                "base_url": f"https://{settings.server_name}",
                "server_name": settings.server_name,
            }
        },
        "disable_custom_urls": False,
        "disable_guests": True,
        "default_federate": settings.federation is not FederationMode.OFF,
        "brand": "Element",
        "default_theme": "light",
        "room_directory": {"servers": [settings.server_name]},
        # Element's defaults send group calls and widgets to third parties (docs/config.md,
        # src/SdkConfig.ts). 1:1 calls stay on: they go peer to peer or through our coturn.
        # An empty preferred_domain falls back to meet.element.io (src/widgets/Jitsi.ts), so a
        # Jitsi conference started anyway is pointed at this server, where none runs.
        "jitsi": {"preferred_domain": settings.server_name},
        # Element Call (group calls, video rooms) defaults to call.element.io; forced off here
        # (config.json outranks the user's labs choice), so element_call.url is never used.
        "features": {
            "feature_group_calls": False,
            "feature_video_rooms": False,
            "feature_element_call_video_rooms": False,
        },
        "show_labs_settings": False,
        # null, not absent: the default integration manager is scalar.vector.im.
        "integrations_ui_url": None,
        "integrations_rest_url": None,
        "integrations_widgets_urls": None,
        # No bug_report_endpoint_url, map_style_url, posthog or sentry: absent, Element sends
        # no rageshakes or analytics and loads no map tiles (its sample config has maptiler).
        "setting_defaults": {
            "UIFeature.registration": settings.registration is not RegistrationMode.DISABLED,
            # "Forgot password?" only where Synapse can mail a reset link.
            "UIFeature.passwordReset": settings.password_reset_on,
            # Widgets are third-party pages; off, Element also hides the call buttons in rooms
            # of more than two (Jitsi, Element Call) and keeps 1:1 calls (useRoomCall.tsx).
            "UIFeature.widgets": False,
            # No tile server here: sharing a location could only show an error.
            "UIFeature.locationSharing": False,
        },
    }
    if country_code:  # else Element's own default (GB)
        config["default_country_code"] = country_code
    return json.dumps(config, indent=2) + "\n"


def render_well_known(settings: Settings) -> dict[str, str]:
    """Return the /.well-known/matrix files by name."""
    federation_port = 443 if settings.behind_proxy else 8448
    server = {"m.server": f"{settings.server_name}:{federation_port}"}
    client = {"m.homeserver": {"base_url": f"https://{settings.server_name}"}}
    return {
        "server": json.dumps(server, indent=2) + "\n",
        "client": json.dumps(client, indent=2) + "\n",
    }


def worker_context(workers: tuple[Worker, ...], kv: KeyValueServer) -> dict[str, Any]:
    """Return what the templates need to know of the workers (nothing when there are none)."""
    balancers = []
    routes = []
    sync_ports = [worker.port for worker in of_kind(workers, "sync")]
    # Two sync workers or more: mod_rewrite sends each user's syncs to one of them.
    sticky = len(sync_ports) > 1
    for kind, patterns in ROUTES_OF_KIND.items():
        ports = [worker.port for worker in of_kind(workers, kind)]
        if ports and not (kind == "sync" and sticky):
            balancers.append((f"synapse-{kind}", ports))
            routes += [(apache_pattern(pattern), f"synapse-{kind}") for pattern in patterns]
    background = of_kind(workers, "background")
    return {
        "workers": workers,
        "replication_port": REPLICATION_PORT,
        "replication_secret_path": str(WORKER_REPLICATION_SECRET_PATH),
        "redis_password_path": str(REDIS_PASSWORD_PATH),
        "kv": kv,
        "kv_port": KEY_VALUE_PORT,
        "kv_instance": KEY_VALUE_INSTANCE,
        "senders": [worker.name for worker in of_kind(workers, "federation-sender")],
        "media_workers": [worker.name for worker in of_kind(workers, "media")],
        "background": background[0].name if background else "",
        "worker_balancers": balancers,
        "worker_routes": routes,
        "sync_pattern": sync_pattern() if sticky else "",
        "sync_partitions": list(zip(hex_partitions(len(sync_ports)), sync_ports, strict=True))
        if sticky else [],
    }


def render_workers(
    environment: jinja2.Environment, context: dict[str, Any]
) -> list[FileSpec]:
    """Return each worker's configuration and the Valkey/Redis instance's (none when off)."""
    workers: tuple[Worker, ...] = context["workers"]
    if not workers:
        return []
    kv: KeyValueServer = context["kv"]
    files = [
        FileSpec(Path(worker.config_path),
                 environment.get_template("synapse-worker.yaml.j2").render(worker=worker))
        for worker in workers
    ]
    # Holds the password: readable by the instance's account alone (and root).
    files.append(FileSpec(Path(kv.config_path),
                          environment.get_template("valkey.conf.j2").render(context),
                          0o640, "root", kv.account))
    return files


def render_all(settings: Settings, secrets: Secrets, facts: Facts) -> tuple[FileSpec, ...]:
    """Return every generated file with its owner and mode."""
    environment = _environment()
    workers = plan_workers(settings.workers, facts.cpu_count)
    kv = KEY_VALUE_SERVER_BY_NAME[facts.key_value_server]
    context = {
        **worker_context(workers, kv),
        "s": settings,
        "secrets": secrets,
        "facts": facts,
        "tls_paths": certificate_paths(settings),
        "registration_secret_path": str(REGISTRATION_SECRET_PATH),
        "database_passfile": str(DATABASE_PASSFILE),
        "mail_password_path": str(MAIL_PASSWORD_PATH),
        "turn_secret_path": str(TURN_SECRET_PATH),
        "moved_secrets": secrets.moved,
        "denied_ranges": denied_ranges(),
        "allowed_peers": allowed_peers(facts),
        "turn_address_private": turn_address_private(settings, facts),
        "well_known_dir": str(WELL_KNOWN_DIR / "matrix"),
        "element_dir": str(ELEMENT_DIR),
        "element_root": str(ELEMENT_ROOT),
        "element_config": str(ELEMENT_CONFIG_PATH),
        "element_config_dir": str(ELEMENT_CONFIG_PATH.parent),
        "precompressed_types": PRECOMPRESSED_TYPES,
    }

    def render(name: str) -> str:
        return environment.get_template(name).render(context)

    files = [
        FileSpec(SYNAPSE_CONF_PATH, render("synapse.yaml.j2"), 0o600, "matrix-synapse", "root"),
        FileSpec(TURNSERVER_CONF_PATH, render("turnserver.conf.j2"), 0o640, "root", "turnserver"),
        FileSpec(APACHE_SITE_PATH, render("apache-site.conf.j2")),
        FileSpec(ELEMENT_CONFIG_PATH, render_element_config(settings, facts.country_code)),
    ]
    for name, text in render_well_known(settings).items():
        files.append(FileSpec(WELL_KNOWN_DIR / "matrix" / name, text))
    files += render_workers(environment, context)
    return tuple(files)
