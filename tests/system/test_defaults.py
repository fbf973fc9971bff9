"""One booted target (Debian 13 + matrix-synapse-py3, or sid): install on defaults, check
from outside, apply, reconfigure, upgrade, purge.

The tests share one container and run in file order (each leaves the stack as it found it,
except the last ones, upgrade then purge).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_dns import fake_dns_server
from tests.system import stack
from tests.system.stack import SERVER, https, install, set_stack_value, unit_runs
from tests.system.testbed import Container, Target, http_request, wait_for

pytestmark = [pytest.mark.system, pytest.mark.every_target]

ELEMENT = f"element.{SERVER}"
GENERATED = {
    "/etc/matrix-synapse/conf.d/50-matrix-stack.yaml": "matrix-synapse:root 600",
    "/etc/matrix-stack/turnserver.conf": "root:turnserver 640",
    "/etc/apache2/sites-available/matrix-stack.conf": "root:root 644",
    "/etc/matrix-stack/element/config.json": "root:root 644",
    "/etc/matrix-stack/stack.yaml": "root:root 644",
    "/etc/matrix-stack/secrets/registration_shared_secret": "matrix-synapse:root 600",
    "/etc/matrix-stack/secrets/turn_shared_secret": "matrix-synapse:root 600",
    "/etc/matrix-stack/secrets": "root:root 755",
    "/etc/matrix-stack/tls/self-signed.key": "root:turnserver 640",
}
SERVICES = ("matrix-synapse", "coturn", "apache2")


def file_list(container: Container) -> set[str]:
    # /opt exists only while matrix-synapse-py3 is installed (its virtualenv).
    roots = [path for path in ("/etc", "/usr", "/var/lib", "/opt") if container.path(path).exists()]
    result = container.run(["find", *roots, "-xdev", "-not", "-type", "d"])
    return set(result.stdout.split())


@pytest.fixture(scope="module")
def booted(base_tarball: Path) -> Iterator[Container]:
    container = Container(base_tarball, name="defaults", hostname=SERVER)
    try:
        container.boot()
        yield container
    finally:
        container.close()


@pytest.fixture(scope="module")
def before_install(booted: Container) -> set[str]:
    return file_list(booted)


@pytest.fixture(scope="module")
def ct(booted: Container, before_install: set[str], deb_path: Path) -> Container:
    """The container with matrix-stack installed on its defaults (no preseed)."""
    install(booted, deb_path)
    stack.wait_for_client_api(booted)
    return booted


def test_client_api_answers_through_apache_over_verified_https(ct: Container) -> None:
    response = https(ct, "/_matrix/client/versions")
    assert response.status == 200
    assert "v1.1" in response.json()["versions"]
    assert response.tls_version in ("TLSv1.2", "TLSv1.3")


def test_self_signed_certificate_covers_server_element_and_turn_names(ct: Container) -> None:
    names = {value for kind, value in https(ct, "/").peer_cert["subjectAltName"] if kind == "DNS"}
    assert names == {SERVER, ELEMENT}  # the TURN domain defaults to the server name
    # Element's own vhost answers with the same certificate, verified for its name.
    assert https(ct, "/", server_name=ELEMENT).status == 200


def test_federation_port_serves_a_key_signed_by_the_server_key(ct: Container) -> None:
    from signedjson.key import decode_verify_key_bytes
    from signedjson.sign import verify_signed_json
    from unpaddedbase64 import decode_base64

    keys = https(ct, "/_matrix/key/v2/server", port=8448).json()
    assert keys["server_name"] == SERVER
    assert keys["verify_keys"], keys
    for key_id, key in keys["verify_keys"].items():
        verify_key = decode_verify_key_bytes(key_id, decode_base64(key["key"]))
        verify_signed_json(keys, SERVER, verify_key)  # raises SignatureVerifyException
    signing_key = ct.read_file("/etc/matrix-synapse/homeserver.signing.key").split()
    assert f"ed25519:{signing_key[1]}" in keys["verify_keys"]


def test_federation_port_answers_the_version_endpoint(ct: Container) -> None:
    response = https(ct, "/_matrix/federation/v1/version", port=8448)
    assert response.status == 200
    assert response.json()["server"]["name"] == "Synapse"


@pytest.mark.parametrize("name", ["server", "client"])
def test_well_known_is_json_with_cors(ct: Container, name: str) -> None:
    response = https(ct, f"/.well-known/matrix/{name}")
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["access-control-allow-origin"] == "*"
    expected = (
        {"m.server": f"{SERVER}:8448"}
        if name == "server"
        else {"m.homeserver": {"base_url": f"https://{SERVER}"}}
    )
    assert response.json() == expected


@pytest.mark.parametrize("port", [443, 8448])
def test_synapse_admin_api_is_not_reachable_through_apache(ct: Container, port: int) -> None:
    assert https(ct, "/_synapse/admin/v1/server_version", port=port).status == 404
    inside = ct.run(["curl", "-sf", "http://127.0.0.1:8008/_synapse/admin/v1/server_version"])
    assert "server_version" in json.loads(inside.stdout)


def test_synapse_listens_on_loopback_only(ct: Container) -> None:
    listening = ct.run(["ss", "-Htlnp", "sport = :8008"]).stdout
    addresses = {line.split()[3] for line in listening.splitlines()}
    assert addresses == {"127.0.0.1:8008"}


@pytest.mark.parametrize("name", [SERVER, ELEMENT])
def test_plain_http_redirects_to_https(ct: Container, name: str) -> None:
    response = http_request("GET", "127.0.0.1", 80, "/some/path", server_name=name)
    assert response.status == 301
    assert response.headers["location"] == f"https://{name}/some/path"


def test_coturn_runs_on_the_rendered_config_through_the_drop_in(ct: Container) -> None:
    assert ct.run(["systemctl", "is-active", "coturn"]).stdout.strip() == "active"
    exec_start = ct.run(["systemctl", "show", "-p", "ExecStart", "coturn"]).stdout
    assert "-c /etc/matrix-stack/turnserver.conf" in exec_start
    pid = ct.run(["systemctl", "show", "-p", "MainPID", "--value", "coturn"]).stdout.strip()
    cmdline = ct.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
    assert "/etc/matrix-stack/turnserver.conf" in cmdline
    listening = ct.run(["ss", "-Hulnp", "sport = :3478"]).stdout
    assert "turnserver" in listening
    # The secret coturn checks is the one Synapse hands out credentials with.
    secret = ct.read_file("/etc/matrix-stack/secrets/turn_shared_secret").strip()
    assert f"static-auth-secret={secret}\n" in ct.read_file("/etc/matrix-stack/turnserver.conf")
    # coturn's own conffile is untouched (dpkg's recorded checksum still matches).
    conffiles = ct.run(["dpkg-query", "-W", "-f=${Conffiles}", "coturn"]).stdout
    recorded = next(
        line.split()[1] for line in conffiles.splitlines() if "/etc/turnserver.conf" in line
    )
    assert ct.run(["md5sum", "/etc/turnserver.conf"]).stdout.split()[0] == recorded


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_generated_paths_have_documented_owner_and_mode(ct: Container, path: str) -> None:
    assert stack.stat(ct, path) == GENERATED[path]


def test_synapse_package_files_are_untouched_and_its_code_is_not_copied(
    ct: Container, target: Target
) -> None:
    # dpkg --verify prints every file (conffiles included) whose content differs.
    assert ct.run(["dpkg", "--verify", target.synapse_package]).stdout == ""
    if target.synapse_package == "matrix-synapse-py3":
        # Synapse's code is in its virtualenv only: nothing installed a second copy.
        second = ct.run(["/usr/bin/python3", "-c", "import synapse"], check=False)
        assert second.returncode == 1 and "No module named 'synapse'" in second.stderr


def test_generated_files_are_registered_with_ucf(ct: Container) -> None:
    registry = ct.read_file("/var/lib/ucf/registry")
    for path in GENERATED:
        if path.endswith((".yaml", ".conf", ".json")) and "stack.yaml" not in path:
            assert re.search(rf"^matrix-stack\s+{re.escape(path)}$", registry, re.M), path


def test_autopkgtest_smoke_passes_on_the_installed_stack(ct: Container) -> None:
    smoke = Path(__file__).resolve().parents[2] / "debian" / "tests" / "smoke"
    ct.copy_in(smoke, "/root/smoke", mode=0o755)
    result = ct.run(["/root/smoke"])
    assert result.stdout.count("ok: ") == 6, result.stdout


# The federation check looks SRV records up with Synapse's own DNS client (Twisted's, in
# Synapse's Python: the venv of matrix-synapse-py3, or python3-twisted with Debian's package).
SRV_LOOKUP = (
    "import sys; sys.path.insert(0, '/usr/share/matrix-stack')\n"
    "from matrix_stack.features.federation.resolve import lookup_srv\n"
    "for name in ('_matrix-fed._tcp.example.org', '_matrix._tcp.example.org'):\n"
    "    found = lookup_srv(name, 5, sys.argv[1])\n"
    "    print(name, found and [(r.priority, r.weight, r.port, r.target) for r in found])\n"
)


def test_srv_records_are_looked_up_with_synapses_own_dns_client(ct: Container) -> None:
    with fake_dns_server() as server:  # on the host's loopback, which the container shares
        found = ct.run(["python3", "-c", SRV_LOOKUP, server]).stdout.splitlines()

    assert found == [
        "_matrix-fed._tcp.example.org [(10, 5, 8448, 'fed.example.org'), "
        "(20, 0, 8449, 'backup.example.org')]",
        "_matrix._tcp.example.org None",
    ]


def test_doctor_checks_everything_and_fails_on_what_is_wrong(ct: Container) -> None:
    status, checks = stack.doctor(ct)
    failed = sorted(name for name, check in checks.items() if not check["ok"])
    assert (status, failed) == (1, ["element"])  # offline: Element could not be fetched
    for name in ("service matrix-synapse", "service apache2", "service coturn",
                 "port 127.0.0.1:8008/tcp", "port 8448/tcp", "port 3478/udp", "certificate",
                 "synapse", "turn test", "disk",
                 "file /etc/matrix-synapse/conf.d/50-matrix-stack.yaml"):
        assert checks[name]["ok"] is True, checks[name]
    # A self-signed certificate only federates with servers told to trust it: a warning.
    assert checks["federation"]["ok"] is True and checks["federation"]["warning"] is True
    text = ct.run(["matrix-stack-admin", "doctor"], check=False, timeout=300).stdout
    assert all(line[:2] in ("✓ ", "✗ ", "! ") for line in text.splitlines()), text
    ct.run(["systemctl", "stop", "coturn"])
    try:
        status, checks = stack.doctor(ct)
        assert status == 1
        assert checks["service coturn"]["ok"] is False
        assert checks["turn test"]["ok"] is False
    finally:
        ct.run(["systemctl", "start", "coturn"])


def test_turn_off_stops_and_disables_coturn_and_on_brings_it_back(ct: Container) -> None:
    set_stack_value(ct, "turn_enable", "false")
    result = ct.run(["matrix-stack-admin", "apply"])
    assert "stop and disable coturn (TURN is off)" in result.stdout
    assert ct.run(["systemctl", "is-enabled", "coturn"], check=False).stdout.strip() == "disabled"
    assert ct.run(["systemctl", "is-active", "coturn"], check=False).stdout.strip() == "inactive"
    assert "turn_uris: []" in ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
    set_stack_value(ct, "turn_enable", "true")
    result = ct.run(["matrix-stack-admin", "apply"])
    assert "enable and start coturn (TURN is on)" in result.stdout
    assert ct.run(["systemctl", "is-enabled", "coturn"]).stdout.strip() == "enabled"
    wait_for(lambda: ct.run(["systemctl", "is-active", "coturn"], check=False).stdout.strip()
             == "active", timeout=30, what="coturn active again")
    stack.wait_for_client_api(ct)


def test_apply_without_changes_restarts_nothing(ct: Container) -> None:
    with unit_runs(ct, SERVICES) as changed:
        result = ct.run(["matrix-stack-admin", "apply"])
    assert result.stdout.strip() == "nothing changed"
    assert changed == dict.fromkeys(SERVICES, False)


def test_apply_dry_run_prints_a_diff_and_changes_nothing(ct: Container) -> None:
    synapse_conf = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
    set_stack_value(ct, "registration", "token")
    try:
        result = ct.run(["matrix-stack-admin", "apply", "--dry-run"])
        assert "-enable_registration: false" in result.stdout
        assert "+registration_requires_token: true" in result.stdout
        assert ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml") == synapse_conf
    finally:
        set_stack_value(ct, "registration", "disabled")


def test_apply_restarts_only_synapse_when_only_synapse_settings_change(ct: Container) -> None:
    set_stack_value(ct, "registration", "token")
    with unit_runs(ct, SERVICES) as changed:
        result = ct.run(["matrix-stack-admin", "apply"])
    assert "updated /etc/matrix-synapse/conf.d/50-matrix-stack.yaml" in result.stdout
    assert changed == {"matrix-synapse": True, "coturn": False, "apache2": False}
    stack.wait_for_client_api(ct)
    flows = https(ct, "/_matrix/client/v3/register", method="POST", body={}).json()["flows"]
    assert any("m.login.registration_token" in flow["stages"] for flow in flows)
    set_stack_value(ct, "registration", "disabled")
    ct.run(["matrix-stack-admin", "apply"])
    stack.wait_for_client_api(ct)


def test_apply_refused_by_synapse_keeps_the_previous_files_live(ct: Container) -> None:
    synapse_conf = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
    ct.write_file("/etc/matrix-synapse/conf.d/60-broken.yaml", "listeners: not-a-list\n")
    set_stack_value(ct, "registration", "open")
    try:
        with unit_runs(ct, SERVICES) as changed:
            result = ct.run(["matrix-stack-admin", "apply"], check=False)
        assert result.returncode == 1
        assert result.stderr.startswith("matrix-stack-admin: Synapse refuses the new configuration")
        assert len(result.stderr.strip().splitlines()) == 1
        assert ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml") == synapse_conf
        assert changed == dict.fromkeys(SERVICES, False)
    finally:
        ct.run(["rm", "-f", "/etc/matrix-synapse/conf.d/60-broken.yaml"])
        set_stack_value(ct, "registration", "disabled")


def test_apply_refused_by_apache_configtest_restores_every_file(ct: Container) -> None:
    site = ct.read_file("/etc/apache2/sites-available/matrix-stack.conf")
    element = ct.read_file("/etc/matrix-stack/element/config.json")
    ct.write_file("/etc/apache2/conf-enabled/zz-broken.conf", "NotAnApacheDirective on\n")
    set_stack_value(ct, "element_domain", f"web.{SERVER}")
    try:
        with unit_runs(ct, SERVICES) as changed:
            result = ct.run(["matrix-stack-admin", "apply"], check=False)
        assert result.returncode == 1
        assert result.stderr.startswith("matrix-stack-admin: Apache refuses the configuration")
        assert len(result.stderr.strip().splitlines()) == 1
        assert ct.read_file("/etc/apache2/sites-available/matrix-stack.conf") == site
        assert ct.read_file("/etc/matrix-stack/element/config.json") == element
        assert changed == dict.fromkeys(SERVICES, False)
        assert https(ct, "/_matrix/client/versions").status == 200
    finally:
        ct.run(["rm", "-f", "/etc/apache2/conf-enabled/zz-broken.conf"])
        set_stack_value(ct, "element_domain", ELEMENT)
    assert ct.run(["matrix-stack-admin", "apply"]).stdout.strip() == "nothing changed"


def test_certificate_that_is_not_pem_is_refused_before_anything_changes(ct: Container) -> None:
    site = ct.read_file("/etc/apache2/sites-available/matrix-stack.conf")
    ct.write_file("/root/not-a-cert.pem", "not a certificate\n")
    set_stack_value(ct, "tls", "files")
    set_stack_value(ct, "tls_cert", "/root/not-a-cert.pem")
    set_stack_value(ct, "tls_key", "/etc/matrix-stack/tls/self-signed.key")
    try:
        result = ct.run(["matrix-stack-admin", "apply"], check=False)
        assert result.returncode == 1
        assert result.stderr == (
            "matrix-stack-admin: tls_cert: /root/not-a-cert.pem is not a PEM certificate; "
            "give the certificate file\n"
        )
        assert ct.read_file("/etc/apache2/sites-available/matrix-stack.conf") == site
    finally:
        set_stack_value(ct, "tls", "self-signed")
        set_stack_value(ct, "tls_cert", "''")
        set_stack_value(ct, "tls_key", "''")
    assert ct.run(["matrix-stack-admin", "apply"]).stdout.strip() == "nothing changed"


def test_interactive_reconfigure_reasks_an_invalid_answer_and_applies_changes(
    ct: Container,
) -> None:
    import pexpect

    prompts = [
        (r"Matrix server name: ", ["Bad Name!", SERVER]),
        (r"Domain name for the Element web client: ", [ELEMENT]),
        (r"TLS certificate: ", ["self-signed"]),
        (r"Run a TURN server for voice and video calls\? ", ["yes"]),
        (r"Domain name of the TURN server: ", [SERVER]),
        (r"Public IP address of the TURN server: ", [""]),
        (r"IP address the TURN server listens on: ", [""]),
        (r"Federation with other Matrix servers: ", ["allow-list"]),
        (r"Servers to federate with: ", [""]),
        (r"Account registration: ", ["token"]),
        (r"Is this host behind another reverse proxy\? ", ["no"]),
        (r"Element version to install: ", ["latest"]),
        (r"Location of the Element release tarballs: ", [""]),
        (r"Database for Synapse: ", ["sqlite"]),
        (r"Synapse worker processes: ", ["off"]),
        (r"First administrator account \(optional\): ", [""]),
        (r"How Synapse sends mail: ", ["off"]),
        (r"Contact e-mail address of the server's administrator \(optional\): ",
         ["admin", f"admin@{SERVER}"]),
    ]
    child = pexpect.spawn(
        "nsenter",
        ["-t", str(ct.pid1), "-a", "env", "TERM=dumb", "DEBIAN_FRONTEND=readline",
         "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "dpkg-reconfigure", "matrix-stack"],
        encoding="utf-8",
        timeout=60,
    )
    transcript: list[str] = []
    asked: dict[str, int] = {}
    with unit_runs(ct, SERVICES) as changed:
        while True:
            index = child.expect([pattern for pattern, _ in prompts] + [pexpect.EOF])
            transcript.append(child.before + (child.after if isinstance(child.after, str) else ""))
            if index == len(prompts):
                break
            pattern, answers = prompts[index]
            count = asked.get(pattern, 0)
            asked[pattern] = count + 1
            child.sendline(answers[min(count, len(answers) - 1)])
        child.close()
    text = "".join(transcript)
    assert child.exitstatus == 0, text
    assert asked[prompts[0][0]] == 2, text
    assert 'The answer "Bad Name!" to the question "server-name" is not valid' in text
    assert "A DNS name is needed" in text
    assert "registration: token" in stack.read_stack(ct)
    # The mail questions come last; a bad address is asked again with the reason.
    assert asked[prompts[-1][0]] == 2, text
    assert "An e-mail address is needed, such as admin@example.org, or nothing." in text
    assert f"admin_email: admin@{SERVER}" in stack.read_stack(ct)
    assert changed == {"matrix-synapse": True, "coturn": False, "apache2": False}
    stack.wait_for_client_api(ct)
    flows = https(ct, "/_matrix/client/v3/register", method="POST", body={}).json()["flows"]
    assert any("m.login.registration_token" in flow["stages"] for flow in flows)
    set_stack_value(ct, "registration", "disabled")
    set_stack_value(ct, "admin_email", "''")
    ct.run(["matrix-stack-admin", "apply"])
    stack.wait_for_client_api(ct)


def test_invalid_stack_value_is_refused_in_one_line(ct: Container) -> None:
    set_stack_value(ct, "federation", "sometimes")
    try:
        result = ct.run(["matrix-stack-admin", "apply"], check=False)
        assert result.returncode == 2
        assert result.stderr == (
            "matrix-stack-admin: federation in /etc/matrix-stack/stack.yaml: 'sometimes' is not "
            "one of: allow-list, open, off; fix the file, then run: matrix-stack-admin apply\n"
        )
    finally:
        set_stack_value(ct, "federation", "allow-list")


def test_noninteractive_reconfigure_with_an_invalid_answer_fails_and_changes_nothing(
    ct: Container,
) -> None:
    before = {path: ct.read_file(path) for path in GENERATED if "." in Path(path).name}
    set_stack_value(ct, "turn_domain", "not a domain!")
    try:
        result = ct.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-stack"], check=False)
        assert result.returncode != 0
        ours = [line for line in result.stderr.splitlines() if line.startswith("matrix-stack:")]
        assert ours == [
            "matrix-stack: matrix-stack/turn-domain: 'not a domain!' is not a DNS name (letters, "
            "digits and hyphens in dot-separated labels); change it with: dpkg-reconfigure "
            "matrix-stack"
        ]
        after = {
            path: ct.read_file(path) for path in before if path != "/etc/matrix-stack/stack.yaml"
        }
        assert after == {p: t for p, t in before.items() if p != "/etc/matrix-stack/stack.yaml"}
    finally:
        set_stack_value(ct, "turn_domain", SERVER)
        ct.run(["dpkg", "--configure", "-a"])


def test_server_name_cannot_change_once_synapse_has_a_database(ct: Container) -> None:
    assert int(ct.run(["stat", "-c", "%s", "/var/lib/matrix-synapse/homeserver.db"]).stdout) > 0
    set_stack_value(ct, "server_name", "other.example.test")
    try:
        result = ct.run(["matrix-stack-admin", "apply"], check=False)
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"matrix-stack-admin: the server name cannot change from {SERVER} to "
            "other.example.test: Synapse's database /var/lib/matrix-synapse/homeserver.db"
        )
        written = ct.read_file("/etc/matrix-synapse/conf.d/server_name.yaml")
        assert re.search(rf"^server_name: '?{re.escape(SERVER)}'?$", written, re.M), written
    finally:
        set_stack_value(ct, "server_name", SERVER)


def test_edited_generated_file_is_kept_and_apply_says_so(ct: Container) -> None:
    path = "/etc/matrix-stack/turnserver.conf"
    edited = ct.read_file(path) + "# my own tuning\nverbose\n"
    ct.write_file(path, edited, mode=0o640)
    ct.run(["chgrp", "turnserver", path])
    set_stack_value(ct, "turn_listening_ip", "127.0.0.1")
    result = ct.run(["matrix-stack-admin", "apply"])
    assert f"kept your edited {path}; the new version is in {path}.ucf-dist" in result.stdout
    assert ct.read_file(path) == edited
    assert "listening-ip=127.0.0.1" in ct.read_file(f"{path}.ucf-dist")
    assert stack.stat(ct, f"{path}.ucf-dist") == "root:turnserver 640"


def repack_next_version(deb: Path, workdir: Path) -> Path:
    """Return a copy of the .deb as version +next whose Synapse template gained a comment."""
    tree = workdir / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = next(line.split()[1] for line in text.splitlines() if line.startswith("Version:"))
    control.write_text(text.replace(f"Version: {version}", f"Version: {version}+next"))
    template = tree / "usr/share/matrix-stack/templates/synapse.yaml.j2"
    template.write_text(template.read_text() + "# rendered by the next build\n")
    new = workdir / f"matrix-stack_{version}+next_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree), str(new)],
        check=True,
        capture_output=True,
    )
    return new


def test_upgrade_keeps_secrets_and_edits_and_re_renders_the_rest(
    ct: Container, deb_path: Path, tmp_path: Path
) -> None:
    secrets = {
        name: ct.read_file(f"/etc/matrix-stack/secrets/{name}")
        for name in ("registration_shared_secret", "turn_shared_secret")
    }
    edited_turn = ct.read_file("/etc/matrix-stack/turnserver.conf")
    install(ct, repack_next_version(deb_path, tmp_path))
    for name, value in secrets.items():
        assert ct.read_file(f"/etc/matrix-stack/secrets/{name}") == value
    assert ct.read_file("/etc/matrix-stack/turnserver.conf") == edited_turn
    synapse_conf = ct.read_file("/etc/matrix-synapse/conf.d/50-matrix-stack.yaml")
    assert synapse_conf.endswith("# rendered by the next build\n")
    stack.wait_for_client_api(ct)


def test_purge_removes_everything_of_ours_and_keeps_synapse_data(
    ct: Container, before_install: set[str]
) -> None:
    # Another site that needs mod_ssl, which matrix-stack enabled: purge must leave it on.
    ct.run(["a2ensite", "-q", "default-ssl"])
    ct.run(["systemctl", "reload", "apache2"])
    purged = ct.run([*stack.APT, "purge", "matrix-stack"])
    assert "matrix-stack: Apache module ssl kept: /etc/apache2/sites-enabled/default-ssl.conf " \
        "uses it" in purged.stdout
    test_setup = "/etc/apt/apt.conf.d/99matrix-stack-tests"  # the testbed's, not the package's
    assert [p for p in file_list(ct) if "matrix-stack" in p and p != test_setup] == []
    assert ct.run(["ls", "/var/lib/matrix-synapse/homeserver.db"]).returncode == 0
    assert ct.run(["debconf-show", "matrix-stack"]).stdout.strip() == ""
    for path in ("/var/lib/ucf/hashfile", "/var/lib/ucf/registry"):
        assert "matrix-stack" not in ct.read_file(path)
    enabled = set(ct.run(["ls", "/etc/apache2/mods-enabled"]).stdout.split())
    assert not {"proxy_http.load", "headers.load"} & enabled
    assert {"ssl.load", "socache_shmcb.load"} <= enabled  # ssl depends on socache_shmcb
    assert "000-default.conf" in ct.run(["ls", "/etc/apache2/sites-enabled"]).stdout.split()
    wait_for(lambda: ct.run(["systemctl", "is-active", "apache2"], check=False).stdout.strip()
             == "active", timeout=30, what="apache2 active after purge")
    # The other site goes, and with it what kept mod_ssl on: the admin's to turn off.
    ct.run(["a2dissite", "-q", "default-ssl"])
    ct.run(["a2dismod", "-q", "ssl", "socache_shmcb"])
    # What apt installed for matrix-stack alone goes with autoremove; then only Synapse's
    # own data and the package system's bookkeeping differ from before the install.
    ct.run([*stack.APT, "autoremove", "--purge"])
    left = file_list(ct) - before_install
    synapse_owned = (
        "/var/lib/matrix-synapse/",
        "/etc/matrix-synapse/homeserver.signing.key",
        "/etc/matrix-synapse/conf.d/server_name.yaml",
        "/etc/matrix-synapse/conf.d/report_stats.yaml",  # matrix-synapse-py3's postinst's
    )
    bookkeeping = ("/var/lib/dpkg/", "/var/lib/apt/", "/var/lib/systemd/", "/var/lib/ucf/",
                   "/var/lib/apache2/", "/var/lib/debconf/", "/var/cache/", "/etc/ld.so.cache",
                   "/var/lib/python")
    candidates = sorted(
        path for path in left
        if not path.startswith(synapse_owned + bookkeeping) and "/__pycache__/" not in path
    )
    # Files of packages apt keeps (a dependency another package recommends) are theirs.
    owned = ct.run(["dpkg", "-S", *candidates], check=False).stdout if candidates else ""
    owned_paths = {line.split(": ", 1)[1] for line in owned.splitlines() if ": " in line}
    assert [path for path in candidates if path not in owned_paths] == []
