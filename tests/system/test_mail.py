"""Mail on a booted stack: a real MTA (exim4) delivers Synapse's password reset mail locally.

The stack is installed with matrix-stack/mail=local next to Debian's exim4-daemon-light
(local delivery only, to /var/mail/USER); the tests then share it in file order.
"""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.system import stack
from tests.system.stack import SERVER, apt_install, install, preseed
from tests.system.stack import synapse_request as client_api
from tests.system.testbed import Container, wait_for

pytestmark = [pytest.mark.system]

ALICE = "alice"
ADDRESS = f"{ALICE}@{SERVER}"
OLD_PASSWORD = "Old-Passw0rd-alice"
NEW_PASSWORD = "New-Passw0rd-alice"
MAILBOX = f"/var/mail/{ALICE}"


@pytest.fixture(scope="module")
def ct(base_tarball: Path, deb_path: Path) -> Iterator[Container]:
    container = Container(base_tarball, name="mail", hostname=SERVER)
    try:
        container.boot()
        # Debian's default exim4 configuration: local delivery only, on 127.0.0.1:25, for
        # this host's name; alice's mail goes to /var/mail/alice.
        apt_install(container, "exim4-daemon-light")
        container.run(["useradd", "--create-home", ALICE])
        preseed(container, {"mail": "local"})
        install(container, deb_path)
        stack.wait_for_client_api(container)
        yield container
    finally:
        container.close()


def admin(ct: Container, *args: str, stdin: str | None = None, check: bool = True) -> Any:
    return ct.run(["matrix-stack-admin", *args], input=stdin, check=check, timeout=120)


def messages(ct: Container) -> list[EmailMessage]:
    path = ct.path(MAILBOX)
    if not path.exists():
        return []
    found = []
    for message in mailbox.mbox(path):
        parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append(parsed)
    return found


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, message
    return str(part.get_content())


def https_json(ct: Container, method: str, path: str, body: Any = None,
               token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    response = stack.https(ct, path, method=method, body=body, headers=headers)
    return response.status, response.json() if response.body else {}


def login(password: str) -> tuple[int, str | None]:
    status, body = client_api("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": ALICE},
        "password": password,
    })
    return status, body.get("access_token")


def test_the_rendered_email_block_points_synapse_at_the_local_mta(ct: Container) -> None:
    text = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")

    assert 'smtp_host: "127.0.0.1"\n  smtp_port: 25\n' in text
    assert stack.stat(ct, "/etc/matrix-synapse/conf.d/50-matrix-stack.yaml") == (
        "matrix-synapse:root 600"
    )
    config = stack.https(ct, "/config.json", server_name=f"element.{SERVER}").json()
    assert config["setting_defaults"]["UIFeature.passwordReset"] is True


def test_user_add_with_email_binds_it_and_show_and_list_find_it(ct: Container) -> None:
    added = admin(ct, "user", "add", ALICE, "--email", ADDRESS, "--password-file", "-",
                  stdin=OLD_PASSWORD)

    assert added.stdout.splitlines() == [f"created @{ALICE}:{SERVER}",
                                         f"bound {ADDRESS} to @{ALICE}:{SERVER}"]
    assert f"emails:       {ADDRESS}\n" in admin(ct, "user", "show", ALICE).stdout
    listed = admin(ct, "user", "list", "--email", ADDRESS, "--json").stdout
    assert [row["user_id"] for row in json.loads(listed)] == [
        f"@{ALICE}:{SERVER}"
    ]


def test_mail_test_is_delivered_by_the_mta_and_says_each_step(ct: Container) -> None:
    result = admin(ct, "mail", "test", ADDRESS)

    assert re.fullmatch(
        rf"sent: connected to 127\.0\.0\.1:25, no TLS, no login; accepted for {ADDRESS}: "
        r"250 OK id=\S+\n", result.stdout
    ), result.stdout
    wait_for(lambda: any("Test message from matrix-stack-admin" in str(m["Subject"])
                         for m in messages(ct)),
             timeout=60, what=f"the test message in {MAILBOX}")


def test_mail_test_of_a_bad_address_is_refused_in_one_line(ct: Container) -> None:
    result = admin(ct, "mail", "test", "not an address", check=False)

    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1


def test_doctor_reaches_the_mail_server_without_sending(ct: Container) -> None:
    before = len(messages(ct))
    _status, checks = stack.doctor(ct)

    assert checks["mail"]["ok"] is True, checks["mail"]
    assert checks["mail"]["detail"] == "connected to 127.0.0.1:25, no TLS"
    assert len(messages(ct)) == before


def test_password_reset_by_mail_through_apache_ends_the_other_sessions(ct: Container) -> None:
    assert login(OLD_PASSWORD)[0] == 200
    _status, other_session = login(OLD_PASSWORD)
    client_secret = secrets.token_hex(16)
    before = len(messages(ct))

    status, body = https_json(ct, "POST", "/_matrix/client/v3/account/password/email/requestToken",
                              {"client_secret": client_secret, "email": ADDRESS,
                               "send_attempt": 1})
    assert status == 200, body
    sid = body["sid"]
    wait_for(lambda: len(messages(ct)) > before, timeout=60,
             what=f"Synapse's password reset mail in {MAILBOX}")
    mail = messages(ct)[-1]
    assert str(mail["To"]) == ADDRESS
    link = re.search(r"https://\S+/_synapse/client/password_reset/email/submit_token\?\S+",
                     text_of(mail))
    assert link is not None, text_of(mail)
    url = urllib.parse.urlsplit(link.group(0))
    assert url.hostname == SERVER

    # The link, followed through Apache: a confirmation page, whose form posts it back.
    path = f"{url.path}?{url.query}"
    page = stack.https(ct, path)
    assert page.status == 200, page.body[:300]
    confirmed = stack.https(ct, path, method="POST", body=b"",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert confirmed.status == 200, confirmed.body[:300]

    status, body = https_json(ct, "POST", "/_matrix/client/v3/account/password", {
        "new_password": NEW_PASSWORD,
        "auth": {"type": "m.login.email.identity",
                 "threepid_creds": {"sid": sid, "client_secret": client_secret}},
    })
    assert status == 200, body

    assert login(NEW_PASSWORD)[0] == 200
    assert login(OLD_PASSWORD)[0] == 403
    status, body = client_api("GET", "/_matrix/client/v3/account/whoami", token=other_session)
    assert status == 401, body


# --- relay: exim4 as an authenticating smarthost with STARTTLS on 587 (a test CA) ----------

RELAY_USER = "relayuser"
RELAY_PASSWORD = "Relay-S3cret-pw"
WRONG_PASSWORD = "Wrong-S3cret-pw"
SYNAPSE_CONF = "/etc/matrix-synapse/conf.d/50-matrix-stack.yaml"
# Appended to Debian's exim4.conf.template, whose last section is begin authenticators.
RELAY_AUTHENTICATOR = """
relay_plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and {{eq{$auth2}{USER}}{eq{$auth3}{PASSWORD}}}}
  server_set_id = $auth2
  server_advertise_condition = ${if def:tls_in_cipher}
""".replace("USER", RELAY_USER).replace("PASSWORD", RELAY_PASSWORD)
MAKE_CERTIFICATES = f"""
cd /etc/exim4
openssl req -x509 -newkey rsa:2048 -nodes -keyout test-ca.key -out test-ca.crt -days 2 \
    -subj /CN=matrix-stack-test-CA -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout relay.key -out relay.csr -subj /CN={SERVER} \
    2>/dev/null
# Python 3.13 verifies strictly (VERIFY_X509_STRICT): key usages and key identifiers.
cat > relay.ext <<EOF
subjectAltName=DNS:{SERVER}
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
openssl x509 -req -in relay.csr -CA test-ca.crt -CAkey test-ca.key -CAcreateserial \
    -out relay.crt -days 2 -extfile relay.ext 2>/dev/null
chown root:Debian-exim relay.key relay.crt
chmod 640 relay.key
cp test-ca.crt /usr/local/share/ca-certificates/matrix-stack-test-ca.crt
update-ca-certificates >/dev/null
"""


def reconfigure_relay(ct: Container, password: str) -> None:
    """Point the stack at the relay as an administrator would, password through debconf."""
    for key, value in (("mail", "relay"), ("mail_relay_host", SERVER),
                       ("mail_relay_port", "587"), ("mail_relay_security", "starttls"),
                       ("mail_relay_user", RELAY_USER)):
        stack.set_stack_value(ct, key, value)
    preseed(ct, {"mail-relay-password": password})
    ct.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-stack"], timeout=300)
    stack.wait_for_client_api(ct)


@pytest.fixture(scope="module")
def relay(ct: Container) -> Container:
    ct.run(["sh", "-ec", MAKE_CERTIFICATES])
    ct.write_file("/etc/exim4/exim4.conf.localmacros",
                  "MAIN_TLS_ENABLE = yes\n"
                  "MAIN_TLS_CERTIFICATE = /etc/exim4/relay.crt\n"
                  "MAIN_TLS_PRIVATEKEY = /etc/exim4/relay.key\n")
    template = ct.read_file("/etc/exim4/exim4.conf.template")
    ct.write_file("/etc/exim4/exim4.conf.template", template + RELAY_AUTHENTICATOR)
    settings = ct.read_file("/etc/exim4/update-exim4.conf.conf")
    ct.write_file("/etc/exim4/update-exim4.conf.conf", re.sub(
        r"^dc_local_interfaces=.*$", "dc_local_interfaces='<; 127.0.0.1.25 ; 127.0.1.1.587'",
        settings, flags=re.M))
    ct.run(["update-exim4.conf"])
    ct.run(["systemctl", "restart", "exim4"])
    reconfigure_relay(ct, WRONG_PASSWORD)
    return ct


def test_relay_password_is_kept_root_only_and_forgotten_by_debconf(relay: Container) -> None:
    assert stack.stat(relay, "/etc/matrix-stack/secrets/mail_relay_password") == "root:root 600"
    assert stack.stat(relay, SYNAPSE_CONF) == "matrix-synapse:root 600"
    assert f'smtp_pass: "{WRONG_PASSWORD}"' in relay.read_file(SYNAPSE_CONF)
    debconf_db = (relay.read_file("/var/cache/debconf/passwords.dat")
                  + relay.read_file("/var/cache/debconf/config.dat"))
    assert WRONG_PASSWORD not in debconf_db
    assert WRONG_PASSWORD not in relay.read_file("/etc/matrix-stack/stack.yaml")


def test_mail_test_with_a_refused_login_gives_the_relays_reply_and_changes_nothing(
    relay: Container,
) -> None:
    before = relay.read_file(SYNAPSE_CONF)

    result = admin(relay, "mail", "test", ADDRESS, check=False)

    assert result.returncode == 1
    assert result.stderr == (
        f"matrix-stack-admin: not sent: connected to {SERVER}:587, STARTTLS; {SERVER}:587 "
        f"refused the login {RELAY_USER}: 535 Incorrect authentication data\n"
    )
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    assert relay.read_file(SYNAPSE_CONF) == before


def test_apply_dry_run_masks_the_relay_password(relay: Container) -> None:
    stack.set_stack_value(relay, "mail_from", "'Chat <chat@example.test>'")
    try:
        shown = admin(relay, "apply", "--dry-run").stdout
    finally:
        stack.set_stack_value(relay, "mail_from", f"'Matrix <noreply@{SERVER}>'")

    assert "+  notif_from:" in shown
    assert "  smtp_pass: '***'\n" in shown
    assert WRONG_PASSWORD not in shown


def test_mail_test_through_the_relay_uses_starttls_and_the_login(relay: Container) -> None:
    reconfigure_relay(relay, RELAY_PASSWORD)

    result = admin(relay, "mail", "test", ADDRESS)

    assert re.fullmatch(
        rf"sent: connected to {re.escape(SERVER)}:587, STARTTLS, authenticated as "
        rf"{RELAY_USER}; accepted for {ADDRESS}: 250 OK id=\S+\n", result.stdout
    ), result.stdout
    assert "✓ mail: connected to" in admin(relay, "doctor", check=False).stdout


def test_synapse_sends_the_reset_mail_through_the_relay_with_starttls_and_login(
    relay: Container,
) -> None:
    before = len(messages(relay))
    status, body = https_json(relay, "POST",
                              "/_matrix/client/v3/account/password/email/requestToken",
                              {"client_secret": secrets.token_hex(16), "email": ADDRESS,
                               "send_attempt": 1})
    assert status == 200, body

    wait_for(lambda: len(messages(relay)) > before, timeout=60,
             what=f"Synapse's password reset mail, through the relay, in {MAILBOX}")
    received = [line for line in relay.read_file("/var/log/exim4/mainlog").splitlines()
                if " <= " in line and f"A=relay_plain:{RELAY_USER}" in line]
    assert received, "no mail was received with the relay login"
    assert " P=esmtpsa " in received[-1] and " X=TLS" in received[-1], received[-1]
