"""adopt: a server built by hand with the wiki recipe is read, planned and taken over."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.secrets import SECRET_FILES
from matrix_stack.core.answers import debconf_from_yaml
from matrix_stack.core.stack import read_stack
from matrix_stack.features import adopt
from matrix_stack.hooks import configure
from tests.unit.helpers import Answers, FakeSystem

SERVER = "synapse.exemple.fr"
PARTNER = "synapse.toto.fr"
SECRETS = {
    "registration_shared_secret": "reg=;:~secret",
    "macaroon_secret_key": "mac#&*key",
    "form_secret": "form^secret",
    "turn_shared_secret": "T0rnSecret64",
}

# What synapse_generate_config --data-dir /etc/matrix-synapse writes, after the recipe's sed
# (bind 0.0.0.0, the partner as key server) and its appended TURN and whitelist blocks.
HOMESERVER = f"""\
server_name: "{SERVER}"
pid_file: /etc/matrix-synapse/homeserver.pid
listeners:
  - port: 8008
    tls: false
    type: http
    x_forwarded: true
    bind_addresses: ['0.0.0.0']
    resources:
      - names: [client, federation]
        compress: false
database:
  name: sqlite3
  args:
    database: /etc/matrix-synapse//homeserver.db
log_config: "/etc/matrix-synapse/{SERVER}.log.config"
media_store_path: /etc/matrix-synapse/media_store
registration_shared_secret: "{SECRETS['registration_shared_secret']}"
report_stats: false
macaroon_secret_key: "{SECRETS['macaroon_secret_key']}"
form_secret: "{SECRETS['form_secret']}"
signing_key_path: "/etc/matrix-synapse/{SERVER}.signing.key"
trusted_key_servers:
  - server_name: "{PARTNER}"
  - server_name: "matrix.org"

turn_uris: [ "turn:turn.exemple.fr?transport=udp", "turn:turn.exemple.fr?transport=tcp" ]
turn_shared_secret: "{SECRETS['turn_shared_secret']}"
turn_user_lifetime: 86400000
turn_allow_guests: True
federation_domain_whitelist:
  - {PARTNER}
"""

TURNSERVER = f"""\
use-auth-secret
static-auth-secret={SECRETS['turn_shared_secret']}
realm=turn.exemple.fr
no-tcp-relay
denied-peer-ip=10.0.0.0-10.255.255.255
user-quota=12 # 4 flux par appel
external-ip=198.51.100.7
listening-ip=192.168.0.100
"""

ELEMENT_SITE = """\
<VirtualHost *:80>
    ServerAdmin webmaster@localhost
    DocumentRoot /var/www/element
    ErrorLog ${APACHE_LOG_DIR}/error.log
</VirtualHost>
"""


def recipe_root(root: Path, homeserver: str = HOMESERVER, site: str = ELEMENT_SITE) -> Path:
    """Write the files the recipe leaves behind under root."""
    files = {
        "etc/matrix-synapse/homeserver.yaml": homeserver,
        "etc/matrix-synapse/conf.d/report_stats.yaml": "report_stats: false\n",
        "etc/matrix-synapse/conf.d/server_name.yaml": f'server_name: "{SERVER}"\n',
        "etc/turnserver.conf": TURNSERVER,
        "etc/apache2/sites-available/element.conf": site,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "etc/matrix-synapse/homeserver.yaml").chmod(0o644)
    enabled = root / "etc/apache2/sites-enabled"
    enabled.mkdir(parents=True)
    (enabled / "element.conf").symlink_to("../sites-available/element.conf")
    return root


def test_the_recipe_is_planned_as_what_it_means(tmp_path: Path) -> None:
    found = adopt.detect(recipe_root(tmp_path))
    plan = adopt.plan(found, hostnames=("box.local",))

    assert plan.proposed == {
        "server_name": SERVER,
        "database": "sqlite",
        "database_path": "/etc/matrix-synapse/homeserver.db",
        "federation": "allow-list",
        "federation_domains": [PARTNER],
        "federation_key_servers": [PARTNER],
        "turn_enable": True,
        "turn_domain": "turn.exemple.fr",
        "turn_external_ip": "198.51.100.7",
        "turn_listening_ip": "192.168.0.100",
    }
    assert plan.secrets == SECRETS
    assert plan.tighten_homeserver
    text = "\n".join(plan.lines)
    assert plan.lines[0].startswith(f"server name {SERVER}; kept in place: signing key ")
    assert "database: SQLite /etc/matrix-synapse/homeserver.db, left where it is" in text
    assert "Synapse listened on 0.0.0.0:8008 without TLS" in text
    assert "matrix.org not kept as key server" in text
    assert "mode 0644): now owner matrix-synapse, mode 0600" in text
    assert "coturn: /etc/turnserver.conf (edited by hand) is kept untouched" in text
    assert "guests no longer get relay credentials" in text
    # No ServerName: Apache answers with the host's name, which is not one of the stack's.
    assert "site element (DocumentRoot /var/www/element) answers for box.local" in text


def test_an_element_site_with_a_server_name_proposes_it_and_is_disabled(tmp_path: Path) -> None:
    site = ELEMENT_SITE.replace("ServerAdmin", "ServerName chat.exemple.fr\n    ServerAdmin")
    found = adopt.detect(recipe_root(tmp_path, site=site))
    plan = adopt.plan(found, hostnames=("box.local",))

    assert plan.proposed["element_domain"] == "chat.exemple.fr"
    assert "answers for chat.exemple.fr, which matrix-stack now serves: disabled" in "\n".join(
        plan.lines
    )


def test_a_site_without_server_name_clashes_when_the_host_is_the_server(tmp_path: Path) -> None:
    found = adopt.detect(recipe_root(tmp_path))
    settings_names = adopt.proposed_names({"server_name": SERVER})
    [site] = found.sites
    assert site.served_names((SERVER,)) == (SERVER,)
    assert "disabled" in adopt.describe_site(site, settings_names, (SERVER,))


def test_matrix_stacks_own_file_is_not_read_as_made_by_hand(tmp_path: Path) -> None:
    recipe_root(tmp_path)
    ours = tmp_path / "etc/matrix-synapse/conf.d/50-matrix-stack.yaml"
    ours.write_text("federation_domain_whitelist: []\nserver_name: other.example\n")

    found = adopt.detect(tmp_path)

    assert found.server_name == SERVER
    assert found.config["federation_domain_whitelist"] == [PARTNER]


def test_a_stock_configuration_has_nothing_to_take_over(tmp_path: Path) -> None:
    stock = (
        "pid_file: /var/run/matrix-synapse.pid\n"
        "listeners:\n  - port: 8008\n    tls: false\n    bind_addresses: ['::1', '127.0.0.1']\n"
        "    type: http\n"
        "database:\n  name: sqlite3\n  args:\n    database: /var/lib/matrix-synapse/homeserver.db\n"
        "federation_domain_whitelist: []\n"
    )
    recipe_root(tmp_path, homeserver=stock)
    (tmp_path / "etc/turnserver.conf").write_text("# every option commented out\n#realm=x\n")
    (tmp_path / "etc/apache2/sites-enabled/element.conf").unlink()

    plan = adopt.plan(adopt.detect(tmp_path), hostnames=("box.local",))

    assert plan.empty and plan.secrets == {}
    # Only facts: every other answer keeps the package's default.
    assert plan.proposed == {"server_name": SERVER, "database": "sqlite",
                             "database_path": "/var/lib/matrix-synapse/homeserver.db"}


def test_no_whitelist_means_open_federation_kept_open(tmp_path: Path) -> None:
    homeserver = HOMESERVER.split("federation_domain_whitelist:")[0]
    plan = adopt.plan(adopt.detect(recipe_root(tmp_path, homeserver=homeserver)))

    assert plan.proposed["federation"] == "open"
    assert plan.proposed["federation_key_servers"] == [PARTNER]


def test_an_unreadable_configuration_is_refused_naming_the_file(tmp_path: Path) -> None:
    recipe_root(tmp_path, homeserver=HOMESERVER + ": [\n")

    with pytest.raises(MatrixStackError, match=r"homeserver.yaml is not valid YAML at line"):
        adopt.detect(tmp_path)


def test_a_local_postgresql_of_another_name_is_refused(tmp_path: Path) -> None:
    homeserver = HOMESERVER.replace(
        "  name: sqlite3\n  args:\n    database: /etc/matrix-synapse//homeserver.db\n",
        "  name: psycopg2\n  args:\n    user: synapse_user\n    database: synapse\n"
        "    host: /var/run/postgresql\n",
    )
    found = adopt.detect(recipe_root(tmp_path, homeserver=homeserver))

    with pytest.raises(MatrixStackError, match="database synapse as role synapse_user"):
        adopt.plan(found)


def test_a_postgresql_over_tcp_is_taken_as_a_remote_server(tmp_path: Path) -> None:
    homeserver = HOMESERVER.replace(
        "  name: sqlite3\n  args:\n    database: /etc/matrix-synapse//homeserver.db\n",
        "  name: psycopg2\n  args:\n    user: synapse_user\n    password: pw\n"
        "    database: synapse\n    host: localhost\n    cp_min: 5\n",
    )
    plan = adopt.plan(adopt.detect(recipe_root(tmp_path, homeserver=homeserver)))

    assert {key: plan.proposed[key] for key in plan.proposed if key.startswith("database")} == {
        "database": "postgresql", "database_host": "localhost", "database_port": 5432,
        "database_name": "synapse", "database_user": "synapse_user",
    }
    assert plan.database_password == "pw" and "pw" not in repr(plan)
    assert any(line.startswith("database password: moved to") for line in plan.lines)


def test_a_remote_postgresql_password_goes_to_the_passfile_not_debconf(tmp_path: Path) -> None:
    homeserver = HOMESERVER.replace(
        "  name: sqlite3\n  args:\n    database: /etc/matrix-synapse//homeserver.db\n",
        "  name: psycopg2\n  args:\n    user: synapse_user\n    password: s3cret\n"
        "    database: synapse\n    host: db.exemple.fr\n",
    )
    recipe_root(tmp_path, homeserver=homeserver)
    plan = adopt.plan(adopt.detect(tmp_path))
    debconf = Answers(debconf_from_yaml(plan.proposed))
    checked: list[str] = []

    configure(debconf, tmp_path, system=FakeSystem(),
              check_password=lambda settings, passfile: checked.append(passfile.read_text()))

    passfile = tmp_path / "etc/matrix-stack/secrets/database.pgpass"
    assert passfile.read_text() == "*:*:*:*:s3cret\n" and checked == ["*:*:*:*:s3cret\n"]
    assert "s3cret" not in "".join(debconf.values.values())
    assert "s3cret" not in (tmp_path / "etc/matrix-stack/stack.yaml").read_text()


def test_users_of_another_server_name_are_counted(tmp_path: Path) -> None:
    database = tmp_path / "homeserver.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
        connection.executemany("INSERT INTO users VALUES (?)", [
            (f"@a:{SERVER}",), ("@b:old.example",), ("@c:x" + SERVER,),
        ])
    connection.close()

    assert adopt.count_foreign_users(database, SERVER) == 2
    sqlite3.connect(tmp_path / "empty.db").close()  # no schema yet: no users
    assert adopt.count_foreign_users(tmp_path / "empty.db", SERVER) == 0


def test_debconf_lines_propose_the_answers_then_the_plan(tmp_path: Path) -> None:
    plan = adopt.plan(adopt.detect(recipe_root(tmp_path)), hostnames=("box.local",))
    lines = adopt.debconf_lines(plan)

    assert f"set matrix-stack/server-name {SERVER}" in lines
    assert f"set matrix-stack/federation-domains {PARTNER}" in lines
    assert "set matrix-stack/turn-enable true" in lines
    assert not any("database_path" in line or "key_servers" in line for line in lines)
    assert [line for line in lines if line.startswith("plan ")] == [
        f"plan {line}" for line in plan.lines
    ]


def test_the_first_configuration_takes_the_recipe_over(tmp_path: Path) -> None:
    recipe_root(tmp_path)
    homeserver = (tmp_path / "etc/matrix-synapse/homeserver.yaml").read_bytes()
    plan = adopt.plan(adopt.detect(tmp_path))
    debconf = Answers(debconf_from_yaml(plan.proposed))

    synapse_answers: list[str] = []
    configured = configure(debconf, tmp_path, system=FakeSystem(),
                           set_synapse_answer=synapse_answers.append)

    # matrix-synapse's postinst rewrites server_name.yaml from its answer at each upgrade.
    assert synapse_answers == [SERVER]
    secrets = tmp_path / "etc/matrix-stack/secrets"
    assert {name: (secrets / SECRET_FILES[name].name).read_text().strip()
            for name in SECRETS} == SECRETS
    stack = read_stack(tmp_path)
    assert stack["database_path"] == "/etc/matrix-synapse/homeserver.db"
    assert stack["federation_key_servers"] == [PARTNER]
    conf = yaml.safe_load((tmp_path / "etc/matrix-synapse/conf.d/50-matrix-stack.yaml").read_text())
    assert conf["database"]["args"]["database"] == "/etc/matrix-synapse/homeserver.db"
    for name in SECRETS:
        assert conf[name] is None and conf[f"{name}_path"] == str(SECRET_FILES[name])
    assert conf["listeners"][0]["bind_addresses"] == ["127.0.0.1"]
    assert conf["federation_domain_whitelist"] == [PARTNER]
    # homeserver.yaml is never edited; only closed to other users.
    path = tmp_path / "etc/matrix-synapse/homeserver.yaml"
    assert path.read_bytes() == homeserver and path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "var/lib/matrix-stack/adopted").exists()
    assert configured.lines[0].startswith(f"adopt: server name {SERVER}")


def test_a_failed_apply_puts_back_the_secrets_and_the_site(tmp_path: Path) -> None:
    site = ELEMENT_SITE.replace("ServerAdmin", f"ServerName element.{SERVER}\n    ServerAdmin")
    recipe_root(tmp_path, site=site)
    plan = adopt.plan(adopt.detect(tmp_path))
    debconf = Answers(debconf_from_yaml(plan.proposed))

    with pytest.raises(MatrixStackError):
        refused = FakeSystem(refusals={"validate_synapse": MatrixStackError("refused")})
        configure(debconf, tmp_path, system=refused)

    assert not (tmp_path / "etc/matrix-stack/secrets/macaroon_secret_key").exists()
    assert not (tmp_path / "etc/matrix-stack/stack.yaml").exists()
    assert (tmp_path / "etc/apache2/sites-enabled/element.conf").is_symlink()
    assert (tmp_path / "etc/matrix-synapse/homeserver.yaml").stat().st_mode & 0o777 == 0o644


def test_tighten_never_follows_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    target.chmod(0o644)
    link = tmp_path / "homeserver.yaml"
    link.symlink_to(target)

    with pytest.raises(OSError):
        adopt.tighten(link, tmp_path)
    assert target.stat().st_mode & 0o777 == 0o644
    os.chmod(target, 0o644)



def test_tighten_leaves_a_hard_link_alone(tmp_path: Path) -> None:
    elsewhere = tmp_path / "shadow"
    elsewhere.write_text("x")
    elsewhere.chmod(0o644)
    os.link(elsewhere, tmp_path / "homeserver.yaml")

    adopt.tighten(tmp_path / "homeserver.yaml", tmp_path)

    assert elsewhere.stat().st_mode & 0o777 == 0o644


def test_the_plan_is_refused_when_the_system_finds_users_of_another_name(tmp_path: Path) -> None:
    root = recipe_root(tmp_path)
    (root / "etc/matrix-synapse/homeserver.db").write_bytes(b"SQLite format 3\0")
    probed: list[tuple[Path, tuple[str, ...]]] = []

    class Probing(FakeSystem):
        def probe_sqlite(self, path: Path, probe: str, *arguments: str) -> str | None:
            probed.append((path, arguments))
            return "3"

    with pytest.raises(MatrixStackError, match="holds 3 users of another server name"):
        adopt.take_over_plan(root, ["host.example"], Probing())

    assert probed == [(root / "etc/matrix-synapse/homeserver.db", (SERVER,))]
    # A system that cannot look (a temporary root's) lets the plan through.
    assert adopt.take_over_plan(root, ["host.example"], FakeSystem()).proposed["server_name"]
