"""Synapse on PostgreSQL: a fresh install preseeded with it, and a migration from SQLite.

On Debian 13, matrix-synapse-py3's postinst starts Synapse on SQLite before matrix-stack is
configured: the fresh install takes that order (Synapse installed and running first), the
remote one installs both in one apt transaction.

Both check through PostgreSQL itself, not only through Synapse's configuration, and log in
with the client API on loopback (the container shares the host's network).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.system import stack
from tests.system.stack import SERVER, add_user, apt_install, install, login, preseed
from tests.system.stack import synapse_request as client_api
from tests.system.synapse_py3 import NEWEST, PREVIOUS
from tests.system.testbed import Container, Target, wait_for

pytestmark = [pytest.mark.system, pytest.mark.every_target]

PSQL = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "matrix_synapse", "-c"]


def install_postgresql(ct: Container) -> None:
    apt_install(ct, "postgresql", "python3-psycopg2")


def psql(ct: Container, sql: str) -> str:
    return ct.run([*PSQL, sql]).stdout.strip()


def boot(base_tarball: Path, name: str) -> Container:
    container = Container(base_tarball, name=name, hostname=SERVER)
    container.boot()
    return container


def install_synapse_first(ct: Container, target: Target) -> bool:
    """Install matrix-synapse-py3 alone, the release before the newest (a test upgrades it),
    and wait until its first start made a SQLite database; return whether it did.

    Debian's matrix-synapse (in the sid root already) cannot start on its own homeserver.yaml
    (a TLS listener on 8448 without a certificate), so there it makes none.
    """
    if target.synapse_package != "matrix-synapse-py3":
        return False
    preseed(ct, {"matrix-synapse/server-name": SERVER})
    apt_install(ct, f"{target.synapse_package}={PREVIOUS.debian_version}")
    wait_for(lambda: ct.path("/var/lib/matrix-synapse/homeserver.db").exists(), timeout=120,
             what="Synapse's first start to create homeserver.db")
    return True


@pytest.fixture()
def fresh(base_tarball: Path, deb_path: Path, target: Target) -> Iterator[Container]:
    container = boot(base_tarball, "pg")
    try:
        install_postgresql(container)
        synapse_first = install_synapse_first(container, target)
        preseed(container, {"database": "postgresql"})
        installed = install(container, deb_path)
        if synapse_first:
            # Its first start made an empty SQLite database: set aside, not refused as data.
            assert "matrix-stack: set aside Synapse's unused SQLite database (no users, rooms " \
                "or events; made when Synapse first started) as /var/lib/matrix-synapse/" \
                "homeserver.db.unused-" in installed.stdout  # apt: dpkg's output is on stdout
            assert not container.path("/var/lib/matrix-synapse/homeserver.db").exists()
            assert list(container.path("/var/lib/matrix-synapse").glob("homeserver.db.unused-*"))
        stack.wait_for_client_api(container)
        yield container
    finally:
        container.close()


def test_fresh_install_with_postgresql_runs_synapse_on_it_and_backs_up(
    fresh: Container, target: Target
) -> None:
    ct = fresh
    assert "database: postgresql" in stack.read_stack(ct)
    add_user(ct, "alice", "alice-pw-1")

    assert psql(ct, "select count(*) from users where name = '@alice:" + SERVER + "'") == "1"
    login("alice", "alice-pw-1")

    ct.run(["systemctl", "stop", "matrix-synapse"])
    result = ct.run(
        ["matrix-stack-admin", "passwd", "alice", "--offline", "--password-file", "-"],
        input="alice-pw-2",
    )
    assert result.stdout.startswith(f"password of @alice:{SERVER} changed offline; ")
    ct.run(["systemctl", "start", "matrix-synapse"])
    stack.wait_for_client_api(ct)
    login("alice", "alice-pw-2")

    # backup with pg_dump, then a user added later, then restore: the archive's state is back
    # and the database it replaced is kept under another name.
    written = ct.run(["matrix-stack-admin", "backup", "/root/backups"], timeout=600).stdout
    assert "dumping the PostgreSQL database matrix_synapse (pg_dump -Fc)" in written
    add_user(ct, "dave", "dave-pw")
    [archive] = sorted(ct.path("/root/backups").glob("matrix-stack-backup-*.tar"))
    restored = ct.run(
        ["matrix-stack-admin", "restore", "--yes", f"/root/backups/{archive.name}"], timeout=900
    ).stdout
    kept = next(line.split()[-1] for line in restored.splitlines()
                if line.startswith("kept: PostgreSQL database "))
    stack.wait_for_client_api(ct)
    login("alice", "alice-pw-2")
    dave = f"select count(*) from users where name = '@dave:{SERVER}'"
    assert psql(ct, dave) == "0"
    assert ct.run(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", kept, "-c", dave]
                  ).stdout.strip() == "1"
    owner = "select pg_get_userbyid(relowner) from pg_class where relname = 'users'"
    assert psql(ct, owner) == "matrix-synapse"

    if target.synapse_package == "matrix-synapse-py3":
        # A newer Synapse release from its repository: our conf.d file stays, the stack works.
        ours = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
        apt_install(ct, target.synapse_package)
        version = ct.run(["dpkg-query", "-W", "-f", "${Version}", target.synapse_package])
        assert version.stdout == NEWEST.debian_version
        assert ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml") == ours
        stack.wait_for_client_api(ct)
        login("alice", "alice-pw-2")
        doctor = ct.run(["matrix-stack-admin", "doctor"], check=False)
        assert f"✓ synapse: Synapse {NEWEST.version} answers" in doctor.stdout, doctor.stdout


@pytest.fixture()
def on_sqlite(base_tarball: Path, deb_path: Path) -> Iterator[Container]:
    container = boot(base_tarball, "pgmig")
    try:
        install(container, deb_path)
        stack.wait_for_client_api(container)
        install_postgresql(container)
        yield container
    finally:
        container.close()


def test_migrate_to_postgresql_keeps_users_and_messages(on_sqlite: Container) -> None:
    ct = on_sqlite
    add_user(ct, "bob", "bob-pw")
    add_user(ct, "carol", "carol-pw")
    token = login("bob", "bob-pw")
    status, room = client_api("POST", "/_matrix/client/v3/createRoom", {"name": "migrate"}, token)
    assert status == 200, room
    room_id = urllib.parse.quote(room["room_id"])
    for number in range(3):
        status, _ = client_api(
            "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{number}",
            {"msgtype": "m.text", "body": f"message {number}"}, token,
        )
        assert status == 200

    stack.set_stack_value(ct, "database", "postgresql")
    refused = ct.run(["matrix-stack-admin", "apply"], check=False)
    assert refused.returncode == 1
    assert refused.stderr.rstrip().endswith("use: matrix-stack-admin db migrate-to-postgresql")
    stack.set_stack_value(ct, "database", "sqlite")

    # Forced to fail half-way: the port script copies everything, then exits 1.
    script = next(
        path for path in ("/usr/bin/synapse_port_db",
                          "/opt/venvs/matrix-synapse/bin/synapse_port_db")
        if ct.path(path).exists()
    )
    ct.run(["mv", script, f"{script}.real"])
    ct.write_file(script, f'#!/bin/sh\n"{script}.real" "$@"\nexit 1\n', mode=0o755)
    failed = ct.run(
        ["matrix-stack-admin", "db", "migrate-to-postgresql"], check=False, timeout=1800
    )
    assert failed.returncode == 1
    assert "Synapse runs on SQLite again" in failed.stderr
    assert "database: sqlite" in stack.read_stack(ct)
    stack.wait_for_client_api(ct)
    login("carol", "carol-pw")
    ct.run(["mv", f"{script}.real", script])
    ct.run(["runuser", "-u", "postgres", "--", "dropdb", "matrix_synapse"])

    result = ct.run(["matrix-stack-admin", "db", "migrate-to-postgresql"], timeout=1800)

    assert "Synapse runs on PostgreSQL with 2 users" in result.stdout  # bob, carol
    assert "database: postgresql" in stack.read_stack(ct)
    assert psql(ct, "select count(*) from users") == "2"
    assert not ct.path("/var/lib/matrix-synapse/homeserver.db").exists()
    assert list(ct.path("/var/lib/matrix-synapse").glob("homeserver.db.migrated-*"))
    assert "set aside the SQLite database /var/lib/matrix-synapse/homeserver.db as " in \
        result.stdout
    stack.wait_for_client_api(ct)
    login("carol", "carol-pw")
    token = login("bob", "bob-pw")
    status, page = client_api(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=20", token=token
    )
    assert status == 200, page
    bodies = {event["content"].get("body") for event in page["chunk"]}
    assert {"message 0", "message 1", "message 2"} <= bodies


# A password with the characters a password file must escape.
REMOTE_PASSWORD = "pa:ss\\word one"
REMOTE_PASSWORD_2 = "second:password"


def test_remote_postgresql_by_tcp_and_password(base_tarball: Path, deb_path: Path) -> None:
    """"Remote" is this host's PostgreSQL reached over TCP with a password (not the socket and
    peer authentication): the same connection a PostgreSQL on another machine gets."""
    with boot(base_tarball, "pgremote") as ct:
        install_postgresql(ct)
        sql = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1"]
        ct.run([*sql, "-c", f"CREATE ROLE synapse_user LOGIN PASSWORD '{REMOTE_PASSWORD}'"])
        ct.run([*sql, "-c", "CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE 'C' "
                "LC_CTYPE 'C' TEMPLATE template0 OWNER synapse_user"])
        preseed(ct, {"database": "postgresql", "database-host": "127.0.0.1",
                     "database-name": "synapse", "database-user": "synapse_user",
                     "database-password": REMOTE_PASSWORD})
        install(ct, deb_path)
        stack.wait_for_client_api(ct)

        config = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
        assert yaml.safe_load(config)["database"]["args"] == {
            "host": "127.0.0.1", "port": 5432, "database": "synapse", "user": "synapse_user",
            "passfile": "/etc/matrix-stack/secrets/database.pgpass", "cp_min": 5, "cp_max": 10,
        }
        assert "word one" not in config
        assert stack.stat(ct, "/etc/matrix-stack/secrets/database.pgpass") == \
            "matrix-synapse:root 600"
        debconf_db = ct.read_file("/var/cache/debconf/passwords.dat") + ct.read_file(
            "/var/cache/debconf/config.dat")
        assert REMOTE_PASSWORD not in debconf_db and "word one" not in debconf_db
        add_user(ct, "erin", "erin-pw")
        login("erin", "erin-pw")
        counted = ct.run([*sql, "-d", "synapse", "-c",
                          f"select count(*) from users where name = '@erin:{SERVER}'"])
        assert counted.stdout.strip() == "1"
        connections = ct.run([*sql, "-c", "select count(*) from pg_stat_activity where "
                              "usename = 'synapse_user' and client_addr = '127.0.0.1'"])
        assert int(connections.stdout) >= 1, "Synapse connects over TCP as synapse_user"

        refused = ct.run(["matrix-stack-admin", "backup", "/root/b"], check=False)
        assert refused.returncode == 1
        assert "back it up where it runs (pg_dump -Fc)" in refused.stderr
        doctor = ct.run(["matrix-stack-admin", "doctor"], check=False).stdout
        assert "✓ database: postgresql on 127.0.0.1:5432, " in doctor

        # A new password through dpkg-reconfigure: stored, never kept in debconf.
        ct.run([*sql, "-c", f"ALTER ROLE synapse_user PASSWORD '{REMOTE_PASSWORD_2}'"])
        preseed(ct, {"database-password": REMOTE_PASSWORD_2})
        ct.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-stack"], timeout=600)
        assert "second\\:password" in ct.read_file("/etc/matrix-stack/secrets/database.pgpass")
        assert REMOTE_PASSWORD_2 not in ct.read_file("/var/cache/debconf/passwords.dat")
        ct.run(["systemctl", "restart", "matrix-synapse"])
        stack.wait_for_client_api(ct)
        login("erin", "erin-pw")
