"""Adoption of a hand-made box: the French wiki recipe's Synapse + coturn + Element, then
``apt install matrix-stack`` on its defaults.

One booted container of the current target serves every test, in file order:

1. the recipe is replayed as written (tests/system/recipe.py): Synapse configured in
   /etc/matrix-synapse with its database there, 8008 on every address, coturn on its own
   /etc/turnserver.conf, Element under /var/www behind Apache's element.conf, one federation
   partner in the whitelist; two users talk in a room;
2. a first install, with homeserver.yaml made unreadable as YAML, must refuse in one line and
   change nothing; the file is put back and the install completed;
3. the takeover is checked from outside (logins and history through Apache, the same server
   key on 8448, TURN with the old secret, doctor) and inside (files kept byte for byte,
   secrets carried over, the allow-list, 8008 on loopback);
4. purge, last: the box runs on its hand-made configuration again.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.element_release import TestKey, publish, release_members, serving
from tests.system import recipe, stack
from tests.system.recipe import (
    DATABASE,
    ELEMENT_DIR,
    HOMESERVER_YAML,
    PARTNER,
    SIGNING_KEY,
    TURNSERVER_CONF,
    USERS,
    RecipeBox,
)
from tests.system.stack import SERVER, https
from tests.system.testbed import Container, Target, http_request, wait_for

pytestmark = [pytest.mark.system, pytest.mark.every_target]

OUR_SYNAPSE_FILE = "/etc/matrix-synapse/conf.d/50-matrix-stack.yaml"
ELEMENT_ENABLED = "/etc/apache2/sites-enabled/element.conf"
SECRETS = "/etc/matrix-stack/secrets"
ELEMENT_VERSION = "1.11.0"


def log(message: str) -> None:
    print(f"[adopt test] {message}", file=sys.stderr, flush=True)


@dataclass
class Refusal:
    """What the first install, on an unreadable homeserver.yaml, did and left."""

    returncode: int
    output: str
    our_synapse_file: bool
    synapse_listeners: set[str]
    synapse_answers: bool
    synapse_restarted: bool
    coturn_state: str
    coturn_cmdline: list[str]
    homeserver_yaml_kept: bool
    turnserver_conf_kept: bool
    element_enabled: bool


@dataclass
class Adopted:
    """The container after the completed install, with the output that completed it."""

    ct: Container
    box: RecipeBox
    output: str
    element_enabled_after_install: bool


def listeners(ct: Container, port: int) -> set[str]:
    lines = ct.run(["ss", "-ltnH", f"sport = :{port}"]).stdout.splitlines()
    return {line.split()[3] for line in lines if line.strip()}


def site_enabled(ct: Container) -> bool:
    """Whether Apache's element.conf is enabled (its link in sites-enabled exists)."""
    return ct.run(["test", "-L", ELEMENT_ENABLED], check=False).returncode == 0


def package_status(ct: Container) -> str:
    result = ct.run(["dpkg-query", "-W", "-f=${Status}", "matrix-stack"], check=False)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def booted(base_tarball: Path) -> Iterator[Container]:
    with Container(base_tarball, name="adopt", hostname=SERVER) as container:
        container.boot()
        yield container


@pytest.fixture(scope="module")
def box(booted: Container, target: Target) -> RecipeBox:
    """The recipe's box, replayed in the container (no matrix-stack yet)."""
    replayed = recipe.replay(booted, target)
    log(f"recipe replayed on {target.name}: {replayed.timings}")
    return replayed


@pytest.fixture(scope="module")
def refusal(booted: Container, box: RecipeBox, deb_path: Path) -> Refusal:
    """Install once with homeserver.yaml made unreadable as YAML; record what happened."""
    ct = booted
    original = box.files[HOMESERVER_YAML]
    mode = os.stat(ct.path(HOMESERVER_YAML)).st_mode & 0o7777
    broken = original + b": [\n"
    ct.write_file(HOMESERVER_YAML, broken, mode=mode)
    synapse_before = stack.unit_start(ct, "matrix-synapse")
    started = time.monotonic()
    try:
        result = stack.install(ct, deb_path, check=False)
        log(f"refused install: exit {result.returncode} in {time.monotonic() - started:.1f}s")
        time.sleep(1)
        coturn_pid = ct.run(
            ["systemctl", "show", "-p", "MainPID", "--value", "coturn"]
        ).stdout.strip()
        cmdline = (
            ct.run(["cat", f"/proc/{coturn_pid}/cmdline"], check=False).stdout.split("\0")
            if coturn_pid not in ("", "0")
            else []
        )
        refused = Refusal(
            returncode=result.returncode,
            output=result.stdout + result.stderr,
            our_synapse_file=ct.path(OUR_SYNAPSE_FILE).exists(),
            synapse_listeners=listeners(ct, 8008),
            synapse_answers=recipe.client_versions_answer(ct),
            synapse_restarted=stack.unit_start(ct, "matrix-synapse") != synapse_before,
            coturn_state=ct.run(["systemctl", "is-active", "coturn"],
                                check=False).stdout.strip(),
            coturn_cmdline=cmdline,
            homeserver_yaml_kept=ct.read_bytes(HOMESERVER_YAML) == broken,
            turnserver_conf_kept=ct.read_bytes(TURNSERVER_CONF) == box.files[TURNSERVER_CONF],
            element_enabled=site_enabled(ct),
        )
    finally:
        # Put the file back as it was (whatever the assertions on the refusal say).
        ct.write_file(HOMESERVER_YAML, original, mode=mode)
    return refused


def completing_install(ct: Container, deb_path: Path) -> str:
    """Finish the install the refusal left: dpkg --configure -a when the package is unpacked,
    the install again when nothing of it was unpacked. Returns the output (stdout, stderr)."""
    status = package_status(ct)
    log(f"after the refusal matrix-stack is: {status or 'not installed'}")
    if status.endswith(("half-configured", "unpacked", "triggers-pending", "triggers-awaited")):
        result = ct.run(["dpkg", "--configure", "-a"], check=False, timeout=900)
    else:
        result = stack.install(ct, deb_path, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the completing install failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def adopted(booted: Container, box: RecipeBox, refusal: Refusal, deb_path: Path) -> Adopted:
    started = time.monotonic()
    output = completing_install(booted, deb_path)
    assert package_status(booted) == "install ok installed"
    log(f"install completed in {time.monotonic() - started:.1f}s")
    stack.wait_for_client_api(booted)
    for line in output.splitlines():
        if line.startswith("matrix-stack:"):
            log(f"install said: {line.strip()}")
    return Adopted(booted, box, output, site_enabled(booted))


def apache_login(ct: Container, user: str, password: str) -> str:
    response = https(ct, "/_matrix/client/v3/login", method="POST", body={
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    })
    assert response.status == 200, (user, response.status, response.text)
    return str(response.json()["access_token"])


def read_secret(ct: Container, name: str) -> str:
    return ct.read_file(f"{SECRETS}/{name}").rstrip("\n")


# -- 1. the refusal ------------------------------------------------------------------------


def test_install_on_an_unreadable_homeserver_yaml_refuses_in_one_line(refusal: Refusal) -> None:
    assert refusal.returncode != 0, refusal.output[-4000:]
    reasons = [line for line in refusal.output.splitlines()
               if line.startswith("matrix-stack:") and "homeserver.yaml" in line]
    assert reasons, refusal.output[-4000:]


def test_refused_install_changes_nothing(refusal: Refusal) -> None:
    assert refusal.our_synapse_file is False
    assert refusal.homeserver_yaml_kept and refusal.turnserver_conf_kept
    # Synapse still runs on the recipe's listener, not restarted.
    assert refusal.synapse_listeners == {"0.0.0.0:8008"}
    assert refusal.synapse_answers and not refusal.synapse_restarted
    # coturn still runs on the recipe's configuration.
    assert refusal.coturn_state == "active"
    assert TURNSERVER_CONF in refusal.coturn_cmdline, refusal.coturn_cmdline
    assert refusal.element_enabled


# -- 2. the takeover -----------------------------------------------------------------------


def test_install_reports_the_takeover(adopted: Adopted) -> None:
    lines = [line for line in adopted.output.splitlines() if line.startswith("matrix-stack: adopt")]
    text = "\n".join(lines)
    for said in (
        f"adopt: server name {SERVER}; kept in place: ",
        "database: SQLite /etc/matrix-synapse/homeserver.db, left where it is",
        "secrets registration_shared_secret, macaroon_secret_key, form_secret, "
        "turn_shared_secret: moved to /etc/matrix-stack/secrets/",
        "Synapse listened on 0.0.0.0:8008 without TLS",
        f"federation: allow-list of {PARTNER}; key servers {PARTNER}",
        "coturn: /etc/turnserver.conf (edited by hand) is kept untouched",
        # The container's host name is the server name: the site without ServerName answers it.
        f"site element (DocumentRoot /var/www/element) answers for {SERVER}, which "
        "matrix-stack now serves: disabled",
    ):
        assert said in text, (said, adopted.output[-6000:])


def test_both_users_log_in_with_their_old_passwords_through_apache(adopted: Adopted) -> None:
    for user, password in USERS.items():
        apache_login(adopted.ct, user, password)


def test_the_room_history_is_there_through_apache(adopted: Adopted) -> None:
    ct, box = adopted.ct, adopted.box
    token = apache_login(ct, *next(iter(USERS.items())))
    room = urllib.parse.quote(box.room_id)
    response = https(ct, f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100",
                     headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, response.text
    bodies = [event["content"].get("body") for event in response.json()["chunk"]
              if event["type"] == "m.room.message"]
    assert sorted(bodies) == sorted(box.messages)


def test_federation_port_serves_the_same_server_key(adopted: Adopted) -> None:
    response = https(adopted.ct, "/_matrix/key/v2/server", port=8448)
    assert response.status == 200, response.text
    keys = response.json()
    assert keys["server_name"] == SERVER
    served = {key_id: key["key"] for key_id, key in keys["verify_keys"].items()}
    assert served == adopted.box.server_keys


def test_the_allow_list_holds_the_partner(adopted: Adopted) -> None:
    settings = yaml.safe_load(stack.read_stack(adopted.ct))
    assert settings["federation"] == "allow-list"
    assert PARTNER in settings["federation_domains"]
    listed = adopted.ct.run(["matrix-stack-admin", "federation", "list"])
    assert PARTNER in listed.stdout.split(), listed.stdout


def test_synapse_listens_on_loopback_only(adopted: Adopted) -> None:
    addresses = listeners(adopted.ct, 8008)
    assert addresses, "nothing listens on 8008"
    assert addresses <= {"127.0.0.1:8008", "[::1]:8008"}, addresses


def test_turn_test_passes_with_the_old_secret(adopted: Adopted) -> None:
    ct, box = adopted.ct, adopted.box
    result = ct.run(["matrix-stack-admin", "turn", "test"], check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_secret(ct, "turn_shared_secret") == box.secret_coturn


@pytest.mark.parametrize(
    "name", ["registration_shared_secret", "macaroon_secret_key", "form_secret"]
)
def test_inline_secrets_are_carried_over(adopted: Adopted, name: str) -> None:
    assert read_secret(adopted.ct, name) == adopted.box.inline_secrets[name]


def test_doctor_is_green(adopted: Adopted, tmp_path: Path) -> None:
    # Online, the install fetches Element itself; here nothing outside answers, so the release
    # comes from a signed mirror on loopback (the recipe's unverified /var/www copy is not used).
    ct = adopted.ct
    with TestKey.generate("Adopt Test Releases") as key, serving(tmp_path) as mirror:
        (tmp_path / "key.asc").write_bytes(key.public())
        publish(tmp_path, key, ELEMENT_VERSION, release_members(ELEMENT_VERSION))
        stack.set_stack_value(ct, "element_source", f"{mirror.url}element-v{{version}}.tar.gz")
        stack.set_stack_value(ct, "element_key_url", f"{mirror.url}key.asc")
        stack.set_stack_value(ct, "element_key_fingerprint", f'"{key.fingerprint}"')
        ct.run(["matrix-stack-admin", "element", "fetch", ELEMENT_VERSION], timeout=300)
    status, checks = stack.doctor(ct)
    failed = {name: check for name, check in checks.items() if not check["ok"]}
    assert (status, failed) == (0, {}), json.dumps(failed, indent=1)


def test_hand_made_files_are_kept_byte_for_byte(adopted: Adopted) -> None:
    ct, box = adopted.ct, adopted.box
    for path in (HOMESERVER_YAML, TURNSERVER_CONF, SIGNING_KEY):
        assert ct.read_bytes(path) == box.files[path], path


def test_homeserver_yaml_is_no_longer_readable_by_others(adopted: Adopted) -> None:
    mode = os.stat(adopted.ct.path(HOMESERVER_YAML)).st_mode
    assert mode & 0o007 == 0, oct(mode)


def test_element_under_var_www_is_kept(adopted: Adopted) -> None:
    for path in ("/var/www/element", ELEMENT_DIR):
        assert adopted.ct.path(path).is_dir(), path


def test_the_database_stays_in_etc_matrix_synapse(adopted: Adopted) -> None:
    ct = adopted.ct
    settings = yaml.safe_load(stack.read_stack(ct))
    assert settings["database_path"] == DATABASE
    assert ct.path(DATABASE).is_file()
    other = "/var/lib/matrix-synapse/homeserver.db"
    if ct.path(other).exists():
        count = ct.run(["sqlite3", other, "SELECT count(*) FROM users"], check=False)
        assert count.returncode != 0 or count.stdout.strip() == "0", (
            f"{other} was made and holds users: {count.stdout}"
        )


def test_adopt_dry_run_after_the_install_succeeds(adopted: Adopted) -> None:
    result = adopted.ct.run(["matrix-stack-admin", "adopt", "--dry-run"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("already taken over"), result.stdout
    # A second takeover is refused: stack.yaml is the admin's now.
    again = adopted.ct.run(["matrix-stack-admin", "adopt"], check=False)
    assert again.returncode == 1 and "already run by matrix-stack" in again.stderr, again.stderr


# -- 3. purge, last ------------------------------------------------------------------------


def test_purge_leaves_the_box_on_its_hand_made_configuration(adopted: Adopted) -> None:
    ct, box = adopted.ct, adopted.box
    result = ct.run([*stack.APT, "purge", "matrix-stack"], check=False, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    recipe.wait_for_synapse(ct)
    first, password = next(iter(USERS.items()))
    stack.login(first, password)
    assert ct.path(DATABASE).is_file()
    assert ct.read_bytes(SIGNING_KEY) == box.files[SIGNING_KEY]
    assert set(box.media) <= set(recipe.media_files(ct))
    assert ct.read_bytes(TURNSERVER_CONF) == box.files[TURNSERVER_CONF]
    if not adopted.element_enabled_after_install:
        assert site_enabled(ct), "element.conf was not enabled again"
    assert ct.run(["systemctl", "is-active", "coturn"], check=False).stdout.strip() == "active"
    wait_for(lambda: ct.run(["systemctl", "is-active", "apache2"], check=False).stdout.strip()
             == "active", timeout=30, what="apache2 active after purge")
    page = http_request("GET", "127.0.0.1", 80, "/", server_name="element.exemple.fr")
    assert page.status == 200 and "fake Element" in page.text, (page.status, page.text)

