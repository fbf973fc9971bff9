"""Replay of a hand-made Synapse + coturn + Element box, as a French wiki recipe builds one.

The recipe (the wiki page "Matrix synapse", kept as the seed of the adoption issue) installs
Debian's ``matrix-synapse``, regenerates its configuration with ``synapse_generate_config
--data-dir /etc/matrix-synapse/`` (so the database, media and signing key live in
/etc/matrix-synapse), binds port 8008 on every address with ``sed``, writes
``/etc/turnserver.conf`` and appends a TURN block to ``homeserver.yaml``, unpacks Element under
``/var/www`` behind an Apache site of its own, and federates with one partner through two more
``sed`` lines.  ``replay()`` runs those steps as written, in a booted container that has no
matrix-stack, and uses the box like its users would (two accounts, a room, messages, a picture),
recording what must survive matrix-stack's takeover.

What cannot run as written here, and what is done instead:

* ``apt install -t bullseye-backports matrix-synapse``: the target's own Synapse package
  (Debian's ``matrix-synapse`` on sid, the Synapse project's ``matrix-synapse-py3`` from the
  test bed's repository on Debian 13, whose tools are in its virtualenv without the
  ``synapse_`` prefix);
* ``IP_EXTERNE=$(wget -qO - ifconfig.co)``: nothing outside is reachable; both addresses are
  the host's default-route address (the container shares the host's network);
* ``sed "s/bind_addresses: \\[.*\\]/bind_addresses: ['0.0.0.0']/g"``: today's
  ``generate_config`` writes the addresses as a block list the sed does not match; the line is
  then edited by hand to what the sed would have written, so that 8008 is open on every address
  as the recipe wants;
* ``synapse_generate_signing_key`` now writes the key 0640 for root, which Synapse cannot read:
  the key is handed to matrix-synapse with ``chown``, as the admin must do;
* the TLS pair the recipe leaves to the reader (``/srv/tls/corturn.pem`` and ``.key``): a
  self-signed one made with openssl;
* ``wget .../element-v1.10.14.tar.gz``: a small tarball of the same shape, made locally;
* ``sed 's/^#federation_domain_whitelist:/...'``: current Synapse generates no such commented
  line, so that sed changes nothing; the admin following the recipe then writes the whitelist
  by hand, which ``replay()`` does by appending it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.element_release import release_members, write_tarball
from tests.system import stack
from tests.system.stack import SERVER
from tests.system.testbed import Container, Target, http_request, wait_for

ELEMENT_VERSION = "1.10.14"
PARTNER = "partner.example.org"
HOMESERVER_YAML = "/etc/matrix-synapse/homeserver.yaml"
TURNSERVER_CONF = "/etc/turnserver.conf"
SIGNING_KEY = f"/etc/matrix-synapse/{SERVER}.signing.key"
DATABASE = "/etc/matrix-synapse/homeserver.db"
MEDIA_STORE = "/etc/matrix-synapse/media_store"
ELEMENT_SITE = "/etc/apache2/sites-available/element.conf"
ELEMENT_DIR = f"/var/www/element-v{ELEMENT_VERSION}"
INLINE_SECRETS = (
    "registration_shared_secret",
    "macaroon_secret_key",
    "form_secret",
    "turn_shared_secret",
)
# The two accounts: the first is the recipe's administrator.
USERS = {"michel": "Michel-0ld-Passw0rd", "josiane": "Josiane-0ld-Passw0rd"}
ADMIN = "michel"


def log(message: str) -> None:
    print(f"[recipe] {message}", file=sys.stderr, flush=True)


@dataclass
class RecipeBox:
    """What the hand-made box holds before matrix-stack comes: to be found again after."""

    address: str
    secret_coturn: str
    room_id: str = ""
    messages: list[str] = field(default_factory=list)
    server_keys: dict[str, str] = field(default_factory=dict)  # key id -> unpadded base64
    files: dict[str, bytes] = field(default_factory=dict)  # path -> bytes
    inline_secrets: dict[str, str] = field(default_factory=dict)
    media: list[str] = field(default_factory=list)  # files under media_store
    homeserver: dict[str, Any] = field(default_factory=dict)  # homeserver.yaml, parsed
    timings: dict[str, float] = field(default_factory=dict)


def synapse_tools(target: Target) -> dict[str, str]:
    """The recipe's synapse_* commands as the target's Synapse package ships them."""
    names = ("generate_config", "generate_log_config", "generate_signing_key",
             "register_new_matrix_user")
    if target.synapse_package == "matrix-synapse-py3":
        return {name: f"/opt/venvs/matrix-synapse/bin/{name}" for name in names}
    return {name: f"/usr/bin/synapse_{name}" for name in names}


def host_address(ct: Container) -> str:
    """The host's default-route address (the container shares the host's network)."""
    route = ct.run(["ip", "-4", "route", "get", "192.0.2.1"]).stdout.split()
    return route[route.index("src") + 1]


def sh(ct: Container, script: str, env: dict[str, str] | None = None) -> str:
    """Run recipe lines with sh -e inside the container, as root; return stdout."""
    return ct.run(["sh", "-ec", script], env=env, timeout=300).stdout


def client_versions_answer(ct: Container) -> bool:
    return http_request("GET", "127.0.0.1", 8008, "/_matrix/client/versions").status == 200


def wait_for_synapse(ct: Container) -> None:
    wait_for(lambda: client_versions_answer(ct), timeout=120,
             what="Synapse on http://127.0.0.1:8008 (the recipe's listener)")


# -- the recipe's sections, in its order --------------------------------------------------


def install_packages(ct: Container, target: Target) -> None:
    """« apt install --no-install-recommends matrix-synapse / coturn / apache2 »."""
    stack.apt_install(
        ct, "--no-install-recommends", target.synapse_package, "coturn", "apache2", "sqlite3",
        "openssl",
    )


LOOPBACK_BLOCK = "  - bind_addresses:\n    - ::1\n    - 127.0.0.1\n"
ALL_ADDRESSES = "  - bind_addresses: ['0.0.0.0']\n"


def configure_synapse(ct: Container, target: Target) -> None:
    """« Génération des fichiers configuration et de la clé de signature » and what follows."""
    tools = synapse_tools(target)
    sh(ct, f"""
export DNS_SYNAPSE={SERVER}
{tools['generate_config']} --server-name ${{DNS_SYNAPSE}} --config-dir /etc/matrix-synapse --data-dir /etc/matrix-synapse/ --report-stats no --generate-secrets -o /etc/matrix-synapse/homeserver.yaml
{tools['generate_log_config']} -o /etc/matrix-synapse/${{DNS_SYNAPSE}}.log.config
{tools['generate_signing_key']} -o /etc/matrix-synapse/${{DNS_SYNAPSE}}.signing.key
# Not in the recipe: its Synapse wrote the key world-readable; today's writes it 0640 for
# root, and Synapse (user matrix-synapse) refuses to start ("Permission denied") until the
# admin hands it over.
chown matrix-synapse: /etc/matrix-synapse/${{DNS_SYNAPSE}}.signing.key

echo 'report_stats: false' > /etc/matrix-synapse/conf.d/report_stats.yaml
echo "server_name: \\"${{DNS_SYNAPSE}}\\"" > /etc/matrix-synapse/conf.d/server_name.yaml

sed -i "s/bind_addresses: \\[.*\\]/bind_addresses: ['0.0.0.0']/g" /etc/matrix-synapse/homeserver.yaml

""")  # noqa: E501 - the recipe's lines as written
    text = ct.read_file(HOMESERVER_YAML)
    if "bind_addresses: ['0.0.0.0']" not in text:
        # Today's generate_config writes the addresses as a block list, which the recipe's
        # sed does not match: Synapse would stay on loopback. The admin after « Écouter les
        # requêtes clientes sur toutes les adresses IP du serveur » edits the line by hand.
        assert LOOPBACK_BLOCK in text, text
        mode = os.stat(ct.path(HOMESERVER_YAML)).st_mode & 0o7777
        ct.write_file(HOMESERVER_YAML, text.replace(LOOPBACK_BLOCK, ALL_ADDRESSES), mode=mode)
    sh(ct, "systemctl restart matrix-synapse.service")
    wait_for_synapse(ct)
    listening = ct.run(["ss", "-ltnH", "sport = :8008"]).stdout.split()
    assert "0.0.0.0:8008" in listening, listening


def register_users(ct: Container, target: Target) -> None:
    """« synapse_register_new_matrix_user http://127.0.0.1:8008 -c homeserver.yaml », given
    its answers on the command line instead of at its prompts."""
    tool = synapse_tools(target)["register_new_matrix_user"]
    for user, password in USERS.items():
        ct.run([tool, "http://127.0.0.1:8008", "-c", HOMESERVER_YAML, "-u", user, "-p", password,
                "-a" if user == ADMIN else "--no-admin"])


TURNSERVER_HEREDOC = """\
cat << _EOF_ > /etc/turnserver.conf
use-auth-secret
static-auth-secret=${SECRET_COTURN}
realm=${DNS_COTURN}

# Le trafic VoIP est entièrement UDP. Il n'y a aucune raison de laisser les utilisateurs se connecter à des points d'extrémité TCP arbitraires via le relais
no-tcp-relay

# Ne laissez pas le relais essayer de se connecter à des plages d'adresses IP privées au sein de votre réseau (s'il y en a)
# Étant donné que le serveur tournant est probablement derrière votre pare-feu, n'oubliez pas d'inclure également toutes les adresses IP publiques privilégiées
denied-peer-ip=10.0.0.0-10.255.255.255
denied-peer-ip=192.168.0.0-192.168.255.255
denied-peer-ip=172.16.0.0-172.31.255.255

# À recommandé, blocage de pairs locaux supplémentaires, afin de limiter l'accès externe aux services internes
# https://www.rtcsec.com/article/slack-webrtc-turn-compromise-and-bug-bounty/#how-to-fix-an-open-turn-relay-to-address-this-vulnerability
no-multicast-peers
denied-peer-ip=0.0.0.0-0.255.255.255
denied-peer-ip=100.64.0.0-100.127.255.255
denied-peer-ip=127.0.0.0-127.255.255.255
denied-peer-ip=169.254.0.0-169.254.255.255
denied-peer-ip=192.0.0.0-192.0.0.255
denied-peer-ip=192.0.2.0-192.0.2.255
denied-peer-ip=192.88.99.0-192.88.99.255
denied-peer-ip=198.18.0.0-198.19.255.255
denied-peer-ip=198.51.100.0-198.51.100.255
denied-peer-ip=203.0.113.0-203.0.113.255
denied-peer-ip=240.0.0.0-255.255.255.255

# Cas particulier : le serveur TURN lui-même pour que les flux client->TURN->TURN->client fonctionnent
# Il doit s'agir de l'une des adresses IP d'écoute du serveur TURN
allowed-peer-ip=${IP_INTERNE}

# Examinez si vous souhaitez limiter le quota de flux relayés par utilisateur (ou total) pour éviter les risques de DoS
user-quota=12 # 4 flux par appel vidéo, donc 12 flux = 3 appels relayés simultanés par utilisateur
total-quota=1200

# Certificats TLS, y compris les certificats intermédiaires
# Pour les certificats Let's Encrypt, utilisez 'fullchain.pem' ici
cert=/srv/tls/corturn.pem

# Fichier TLS de clé privée
pkey=/srv/tls/corturn.key

# Assurez-vous que les lignes de configuration qui désactivent TLS/DTLS sont commentées ou supprimées.
#no-tls
#no-dtls

external-ip=${IP_EXTERNE}
listening-ip=${IP_INTERNE}
_EOF_
"""  # noqa: E501 - the recipe's heredoc as written


def configure_coturn(ct: Container, address: str) -> str:
    """« Service TURN »: the recipe's variables, its heredoc, TLS files, the Synapse block.

    Returns SECRET_COTURN, made as the recipe makes it (inside the container)."""
    sh(ct, f"""
export DNS_COTURN={SERVER}
export SECRET_COTURN=$(cat /dev/urandom | tr -dc 'a-zA-Z0-9' | fold -w 64 | head -n 1)
# The recipe: IP_EXTERNE=$(wget -qO - ifconfig.co); nothing outside answers here.
export IP_EXTERNE={address}
export IP_INTERNE={address}

{TURNSERVER_HEREDOC}
mkdir /srv/tls
# The recipe leaves the pair to the reader ("via OpenSSL par exemple").
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=${{DNS_COTURN}}" \\
    -keyout /srv/tls/corturn.key -out /srv/tls/corturn.pem 2>/dev/null
chown -R root:root /srv/tls
chmod 500 /srv/tls
chmod 400 /srv/tls/*

systemctl restart coturn.service

cat << _EOF_ >> /etc/matrix-synapse/homeserver.yaml

turn_uris: [ "turn:${{DNS_COTURN}}?transport=udp", "turn:${{DNS_COTURN}}?transport=tcp" ]
turn_shared_secret: "${{SECRET_COTURN}}"
turn_user_lifetime: 86400000
turn_allow_guests: True
_EOF_
systemctl restart matrix-synapse.service
""")
    wait_for_synapse(ct)
    line = next(line for line in ct.read_file(TURNSERVER_CONF).splitlines()
                if line.startswith("static-auth-secret="))
    secret = line.split("=", 1)[1]
    assert len(secret) == 64 and secret.isalnum(), line
    return secret


ELEMENT_SITE_HEREDOC = """\
cat << '_EOF_' > /etc/apache2/sites-available/element.conf
<VirtualHost *:80>
    ServerAdmin webmaster@localhost
    DocumentRoot /var/www/element
    ErrorLog ${APACHE_LOG_DIR}/error.log
    CustomLog ${APACHE_LOG_DIR}/access.log combined
</VirtualHost>
_EOF_
"""

ELEMENT_CONFIG_HEREDOC = """\
cat << _EOF_ > /var/www/element/config.json
{
    "default_server_config": {
        "m.homeserver": {
            "base_url": "https://${DNS_SYNAPSE}",
            "server_name": "${DNS_SYNAPSE}"
        },
        "m.identity_server": {
            "base_url": "https://vector.im"
        }
    },
    "disable_custom_urls": false,
    "disable_guests": false,
    "disable_login_language_selector": false,
    "disable_3pid_login": false,
    "brand": "Element",
    "bug_report_endpoint_url": "https://element.io/bugreports/submit",
    "uisi_autorageshake_app": "element-auto-uisi",
    "default_country_code": "FR",
    "show_labs_settings": false,
    "features": { },
    "default_federate": false,
    "default_theme": "light",
    "enable_presence_by_hs_url": {
        "https://matrix.org": false,
        "https://matrix-client.matrix.org": false
    },
    "setting_defaults": {
        "breadcrumbs": true
    },
   "features": {
      "feature_you_want_to_turn_on": true,
      "feature_you_want_to_keep_off": false
   }
}
_EOF_
"""


def install_element(ct: Container) -> None:
    """« Client WEB Element », with a locally made tarball in place of the download."""
    with tempfile.TemporaryDirectory() as work:
        tarball = write_tarball(Path(work) / f"element-v{ELEMENT_VERSION}.tar.gz",
                                release_members(ELEMENT_VERSION))
        # The recipe: wget https://github.com/vector-im/element-web/releases/download/...
        # (through the container: its /tmp is a tmpfs the host's view of the root misses)
        ct.run(["sh", "-c", f"cat > /tmp/{tarball.name}"], input=tarball.read_bytes())
    sh(ct, f"""
export DNS_SYNAPSE={SERVER}
tar xf /tmp/element-v{ELEMENT_VERSION}.tar.gz -C /var/www/
ln -s /var/www/element-v{ELEMENT_VERSION}/ /var/www/element
chown -R www-data: /var/www/element*

{ELEMENT_SITE_HEREDOC}
a2dissite 000-default.conf
a2ensite element.conf

export DNS_ELEMENT=element.exemple.fr

{ELEMENT_CONFIG_HEREDOC}
systemctl restart apache2.service
""")
    page = http_request("GET", "127.0.0.1", 80, "/", server_name="element.exemple.fr")
    assert f"fake Element {ELEMENT_VERSION}" in page.text, (page.status, page.text)


def federate(ct: Container) -> None:
    """« Fédération »: the recipe's two sed lines, then the whitelist the second one misses."""
    sh(ct, f"""
export DNS_SRV_DISTANT_SYNAPSE={PARTNER}
sed -i "s/^trusted_key_servers:/trusted_key_servers:\\n  - server_name: \\"${{DNS_SRV_DISTANT_SYNAPSE}}\\"/g" /etc/matrix-synapse/homeserver.yaml
sed -i "s/^#federation_domain_whitelist:/federation_domain_whitelist:\\n  - ${{DNS_SRV_DISTANT_SYNAPSE}}/g" /etc/matrix-synapse/homeserver.yaml
""")  # noqa: E501 - the recipe's lines as written
    text = ct.read_file(HOMESERVER_YAML)
    assert f'trusted_key_servers:\n  - server_name: "{PARTNER}"\n' in text, text
    if "\nfederation_domain_whitelist:" not in text:
        # Current Synapse generates no "#federation_domain_whitelist:" line, so the recipe's
        # second sed changed nothing: the admin writes the list by hand.
        sh(ct, f"printf 'federation_domain_whitelist:\\n  - %s\\n' {shlex.quote(PARTNER)} "
               f">> {HOMESERVER_YAML}")
    sh(ct, "systemctl restart matrix-synapse.service")
    wait_for_synapse(ct)
    parsed = yaml.safe_load(ct.read_file(HOMESERVER_YAML))
    assert parsed["federation_domain_whitelist"] == [PARTNER], parsed
    assert {"server_name": PARTNER} in parsed["trusted_key_servers"], parsed


# -- the box in use -----------------------------------------------------------------------


def api(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    status, answer = stack.synapse_request(method, path, body, token)
    assert status == 200, (method, path, status, answer)
    return answer


def use_the_box(ct: Container, box: RecipeBox) -> None:
    """Two users talk in a room; the first also uploads a picture."""
    tokens = {user: stack.login(user, password) for user, password in USERS.items()}
    first, second = USERS
    room = api("POST", "/_matrix/client/v3/createRoom",
               {"name": "Salon de la recette", "invite": [f"@{second}:{SERVER}"]},
               tokens[first])
    box.room_id = room["room_id"]
    quoted = urllib.parse.quote(box.room_id)
    api("POST", f"/_matrix/client/v3/rooms/{quoted}/join", {}, tokens[second])
    for number in range(4):
        sender = first if number % 2 == 0 else second
        body = f"message {number} de {sender} avant matrix-stack ({secrets.token_hex(4)})"
        api("PUT", f"/_matrix/client/v3/rooms/{quoted}/send/m.room.message/txn{number}",
            {"msgtype": "m.text", "body": body}, tokens[sender])
        box.messages.append(body)
    upload = http_request(
        "POST", "127.0.0.1", 8008, "/_matrix/media/v3/upload?filename=photo.png",
        headers={"Authorization": f"Bearer {tokens[first]}", "Content-Type": "image/png"},
        body=b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64),
    )
    assert upload.status == 200, upload.text


def record(ct: Container, box: RecipeBox) -> None:
    keys = api("GET", "/_matrix/key/v2/server")
    assert keys["server_name"] == SERVER, keys
    box.server_keys = {key_id: key["key"] for key_id, key in keys["verify_keys"].items()}
    for path in (HOMESERVER_YAML, TURNSERVER_CONF, SIGNING_KEY):
        box.files[path] = ct.read_bytes(path)
    box.homeserver = yaml.safe_load(box.files[HOMESERVER_YAML])
    box.inline_secrets = {name: str(box.homeserver[name]) for name in INLINE_SECRETS}
    assert box.inline_secrets["turn_shared_secret"] == box.secret_coturn
    box.media = media_files(ct)
    assert box.media, "the upload left no file under media_store"


def media_files(ct: Container) -> list[str]:
    found = ct.run(["find", MEDIA_STORE, "-type", "f"], check=False).stdout.split()
    return sorted(found)


def replay(ct: Container, target: Target) -> RecipeBox:
    """Build the recipe's box in a booted container without matrix-stack; return its record."""
    started = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str, begun: float) -> float:
        now = time.monotonic()
        steps[name] = round(now - begun, 1)
        log(f"{name}: {steps[name]}s")
        return now

    now = started
    install_packages(ct, target)
    now = step("apt install", now)
    configure_synapse(ct, target)
    register_users(ct, target)
    now = step("synapse", now)
    box = RecipeBox(address=host_address(ct), secret_coturn="")
    box.secret_coturn = configure_coturn(ct, box.address)
    now = step("coturn", now)
    install_element(ct)
    federate(ct)
    now = step("element + federation", now)
    use_the_box(ct, box)
    record(ct, box)
    step("use + record", now)
    steps["total"] = round(time.monotonic() - started, 1)
    box.timings = steps
    return box
