"""Element web on a booted stack: offline install, verified fetch, refusals, upgrade, rollback.

Releases are fakes built and signed by the tests with their own key, served by an HTTP server
on the host's loopback (the container shares the host's network). The tests share one
container and run in file order.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.element_release import (
    Mirror,
    TestKey,
    bad_release_members,
    entry,
    publish,
    release_members,
    serving,
    write_tarball,
)
from tests.system import stack
from tests.system.stack import SERVER, https, install, set_stack_value
from tests.system.testbed import Container

pytestmark = pytest.mark.system

ELEMENT = f"element.{SERVER}"
CONFIG = "/etc/matrix-stack/element/config.json"
CURRENT = "/var/lib/matrix-stack/element/current"


@pytest.fixture(scope="module")
def key() -> Iterator[TestKey]:
    with TestKey.generate("System Test Element Releases") as made:
        yield made


@pytest.fixture(scope="module")
def other_key() -> Iterator[TestKey]:
    with TestKey.generate("Not Element") as made:
        yield made


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, key: TestKey) -> Iterator[Mirror]:
    directory = tmp_path_factory.mktemp("element-mirror")
    (directory / "key.asc").write_bytes(key.public())
    with serving(directory) as served:
        yield served


@pytest.fixture(scope="module")
def installed(base_tarball: Path, deb_path: Path) -> Iterator[tuple[Container, str]]:
    """The stack installed on its defaults, offline: (container, install output)."""
    container = Container(base_tarball, name="element", hostname=SERVER)
    try:
        container.boot()
        result = install(container, deb_path)
        stack.wait_for_client_api(container)
        yield container, result.stdout + result.stderr
    finally:
        container.close()


@pytest.fixture(scope="module")
def ct(installed: tuple[Container, str]) -> Container:
    return installed[0]


def admin(ct: Container, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return ct.run(["matrix-stack-admin", *args], check=check, timeout=300)


def served_page(ct: Container) -> str:
    response = https(ct, "/", server_name=ELEMENT)
    assert response.status == 200
    return response.text


def test_offline_install_warns_once_and_serves_the_placeholder(
    installed: tuple[Container, str],
) -> None:
    ct, output = installed
    warnings = [line for line in output.splitlines() if "Element not installed" in line]
    assert len(warnings) == 1, output
    assert re.fullmatch(
        r"matrix-stack: Element not installed \(cannot reach github\.com: [^()]+\); "
        r"retry with: matrix-stack-admin element fetch",
        warnings[0],
    ), warnings[0]
    assert "Element is not installed yet" in served_page(ct)
    assert "matrix-stack-admin element fetch" in served_page(ct)
    status = admin(ct, "element", "status").stdout
    assert status.startswith("installed: none (a page saying how to install Element is served)")


def test_fetch_installs_a_verified_release_served_with_our_config_and_headers(
    ct: Container, mirror: Mirror, key: TestKey
) -> None:
    publish(mirror.directory, key, "1.2.3")
    set_stack_value(ct, "element_source", f"{mirror.url}element-v{{version}}.tar.gz")
    set_stack_value(ct, "element_key_url", f"{mirror.url}key.asc")
    set_stack_value(ct, "element_key_fingerprint", f'"{key.fingerprint}"')

    result = admin(ct, "element", "fetch", "1.2.3")

    assert result.stdout == "installed Element 1.2.3 (signature verified)\n"
    assert result.stderr == "downloaded element-v1.2.3.tar.gz: 0.0 MB\n"
    assert "fake Element 1.2.3" in served_page(ct)
    response = https(ct, "/", server_name=ELEMENT)
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'self'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "same-origin"
    config = https(ct, "/config.json", server_name=ELEMENT)
    assert config.status == 200
    assert config.body == ct.read_bytes(CONFIG)
    assert config.json()["default_server_config"]["m.homeserver"] == {
        "base_url": f"https://{SERVER}", "server_name": SERVER}
    assert https(ct, "/version", server_name=ELEMENT).text == "1.2.3\n"
    assert stack.stat(ct, "/var/lib/matrix-stack/element/element-v1.2.3") == "root:root 755"
    assert stack.stat(ct, f"{CURRENT}/index.html") == "root:root 644"
    assert ct.run(["readlink", CURRENT]).stdout == "element-v1.2.3\n"


def tamper(tarball: Path) -> None:
    write_tarball(tarball, release_members("1.2.4") + [entry("element-v1.2.4/evil.js", b"x")])


REFUSALS = {
    "wrong-signature": "the signature does not match element-v1.2.4.tar.gz: the download is "
    "corrupt or tampered with",
    "other-key": "element-v1.2.4.tar.gz is signed by another key (",
    "tampered": "the signature does not match element-v1.2.4.tar.gz: the download is corrupt "
    "or tampered with",
    "truncated": "the download of element-v1.2.4.tar.gz was cut short (",
    "dotdot": "member element-v1.2.4/../../escaped leads outside the release directory (..)",
    "absolute": "member /tmp/matrix-stack-absolute has an absolute path",
    "symlink": "symlink element-v1.2.4/etc -> ../../../../etc leads outside the release "
    "directory",
    "no-index": "element-v1.2.4/index.html is missing: not an Element web release",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_release_is_refused_in_one_line_and_the_served_one_stays(
    ct: Container, mirror: Mirror, key: TestKey, other_key: TestKey, case: str
) -> None:
    mirror.routes.clear()
    tarball = publish(mirror.directory, key, "1.2.4", bad_release_members("1.2.4").get(case))
    if case == "wrong-signature":
        other = mirror.directory / "other-data"
        other.write_bytes(b"not the release")
        key.sign(other, tarball.with_name(tarball.name + ".asc"))
    elif case == "other-key":
        other_key.sign(tarball)
    elif case == "tampered":
        tamper(tarball)
    elif case == "truncated":
        mirror.truncate(f"/{tarball.name}")

    result = admin(ct, "element", "fetch", "1.2.4", check=False)

    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"matrix-stack-admin: {REFUSALS[case]}"), result.stderr
    assert "Traceback" not in result.stderr
    assert "fake Element 1.2.3" in served_page(ct)
    assert ct.run(["readlink", CURRENT]).stdout == "element-v1.2.3\n"
    assert not ct.path("/tmp/matrix-stack-absolute").exists()
    assert ct.run(["ls", "-A", "/var/lib/matrix-stack/element"]).stdout.split() == [
        ".lock", "current", "element-v1.2.3", "keyring.gpg"]


def test_upgrade_keeps_config_json_and_rollback_serves_the_previous_release(
    ct: Container, mirror: Mirror, key: TestKey
) -> None:
    mirror.routes.clear()
    publish(mirror.directory, key, "1.2.4")
    config_before = ct.run(["stat", "-c", "%Y %i", CONFIG]).stdout
    config_text = ct.read_file(CONFIG)

    upgraded = admin(ct, "element", "fetch", "1.2.4")

    assert upgraded.stdout == (
        "installed Element 1.2.4 (signature verified); 1.2.3 kept for: matrix-stack-admin "
        "element rollback\n"
    )
    assert "fake Element 1.2.4" in served_page(ct)
    assert https(ct, "/config.json", server_name=ELEMENT).text == config_text
    assert ct.run(["stat", "-c", "%Y %i", CONFIG]).stdout == config_before

    rolled = admin(ct, "element", "rollback")

    assert rolled.stdout == "serving Element 1.2.3 again; 1.2.4 kept for another rollback\n"
    assert "fake Element 1.2.3" in served_page(ct)
    status = admin(ct, "element", "status").stdout.splitlines()
    assert status[:2] == ["installed: Element 1.2.3", "previous:  1.2.4"]


def test_latest_picks_the_highest_release_of_the_mirror(
    ct: Container, mirror: Mirror, key: TestKey
) -> None:
    for version in ("1.9.9", "1.10.0", "1.10.1-rc.1"):
        publish(mirror.directory, key, version)

    result = admin(ct, "element", "fetch", "latest")

    assert result.stdout.startswith("installed Element 1.10.0 (signature verified)")
    assert "fake Element 1.10.0" in served_page(ct)
    assert admin(ct, "element", "fetch").stdout == "Element 1.10.0 is already installed\n"


def test_local_tarball_installs_with_its_signature_elsewhere(
    ct: Container, key: TestKey, tmp_path: Path
) -> None:
    tarball = publish(tmp_path, key, "1.11.0", name="download.tgz")
    ct.copy_in(tarball, "/root/download.tgz")
    ct.copy_in(tarball.with_name("download.tgz.asc"), "/root/signature.asc")

    result = admin(ct, "element", "install", "/root/download.tgz", "--signature",
                   "/root/signature.asc")

    assert result.stdout.startswith("installed Element 1.11.0 (signature verified); 1.10.0 kept")
    assert "fake Element 1.11.0" in served_page(ct)


def test_reconfigure_offline_never_fails_and_keeps_the_served_release(
    ct: Container, mirror: Mirror
) -> None:
    set_stack_value(ct, "element_source", "http://127.0.0.1:9/element-v{version}.tar.gz")
    set_stack_value(ct, "element_version", "1.12.0")
    result = ct.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-stack"], timeout=300)
    assert (
        "matrix-stack: Element not installed (cannot reach 127.0.0.1: Connection refused); "
        "retry with: matrix-stack-admin element fetch"
    ) in result.stderr.splitlines()
    assert "fake Element 1.11.0" in served_page(ct)
