"""Every path the package owns or reads, in one place.

The Python modules import them from here, and the build hands GENERATED_FILES to the postrm
(debian/rules: dh_installdeb -DGENERATED_FILES=…, from ``python3 -m matrix_stack.base.paths``), so
purge removes exactly what the renderer writes.
"""

from __future__ import annotations

from pathlib import Path

# --- matrix-stack's own ---------------------------------------------------------------------
STACK_DIR = Path("/etc/matrix-stack")
STACK_PATH = STACK_DIR / "stack.yaml"
SECRETS_DIR = STACK_DIR / "secrets"
# matrix-stack-admin's own Synapse account (@matrix-stack:SERVER): its password, root only.
SERVICE_PASSWORD_PATH = SECRETS_DIR / "service_password"
TLS_DIR = STACK_DIR / "tls"
TURNSERVER_CONF_PATH = STACK_DIR / "turnserver.conf"
ELEMENT_CONFIG_PATH = STACK_DIR / "element" / "config.json"
WELL_KNOWN_DIR = STACK_DIR / "well-known"
# Our file in Synapse's conf.d, and our Apache site.
SYNAPSE_CONF_PATH = Path("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
APACHE_SITE_NAME = "matrix-stack"
APACHE_SITE_PATH = Path(f"/etc/apache2/sites-available/{APACHE_SITE_NAME}.conf")

STATE_DIR = Path("/var/lib/matrix-stack")
ELEMENT_DIR = STATE_DIR / "element"
ELEMENT_ROOT = ELEMENT_DIR / "current"
# Records of what matrix-stack changed on the system, which purge undoes exactly.
APACHE_MODULES_RECORD = STATE_DIR / "apache-modules"
APACHE_SITES_RECORD = STATE_DIR / "apache-sites-disabled"
COTURN_DISABLED_RECORD = STATE_DIR / "coturn-disabled"
ADOPTED_RECORD = STATE_DIR / "adopted"
PENDING_RESTARTS_PATH = STATE_DIR / "pending-restarts"
LAST_BACKUP_PATH = STATE_DIR / "last-backup"
TOKEN_PATH = STATE_DIR / "admin-token"
USER_NAMES_PATH = STATE_DIR / "user-names"

SHARE_DIR = Path("/usr/share/matrix-stack")
PLACEHOLDER_DIR = SHARE_DIR / "element-placeholder"

# The files apply renders (render.render_all); purge removes them.
GENERATED_FILES = (
    SYNAPSE_CONF_PATH,
    TURNSERVER_CONF_PATH,
    APACHE_SITE_PATH,
    ELEMENT_CONFIG_PATH,
    WELL_KNOWN_DIR / "matrix" / "server",
    WELL_KNOWN_DIR / "matrix" / "client",
)

# --- read, never written (other packages' and the admin's) ------------------------------
SYNAPSE_DIR = Path("/etc/matrix-synapse")
HOMESERVER_PATH = SYNAPSE_DIR / "homeserver.yaml"
CONF_D_PATH = SYNAPSE_DIR / "conf.d"
# Written by matrix-synapse's postinst from its debconf answer matrix-synapse/server-name.
SERVER_NAME_PATH = CONF_D_PATH / "server_name.yaml"
# Synapse's working directory in Debian's units: relative paths in its config start here.
SYNAPSE_DATA_DIR = Path("/var/lib/matrix-synapse")
DEFAULT_SQLITE_PATH = SYNAPSE_DATA_DIR / "homeserver.db"
DEFAULT_MEDIA_PATH = SYNAPSE_DATA_DIR / "media"
DEFAULT_SIGNING_KEY = SYNAPSE_DIR / "homeserver.signing.key"
COTURN_OWN_CONF = Path("/etc/turnserver.conf")
APACHE_SITES_ENABLED = Path("/etc/apache2/sites-enabled")
APACHE_MODS_ENABLED = Path("/etc/apache2/mods-enabled")
POSTGRESQL_DATA_DIR = Path("/var/lib/postgresql")
UCF_STATE_PATH = Path("/var/lib/ucf")
SYSTEMD_RUNNING = Path("/run/systemd/system")


if __name__ == "__main__":
    print(" ".join(str(path) for path in GENERATED_FILES))
