"""The test bed itself: a booted root with real systemd, Apache answering, full cleanup."""

from __future__ import annotations

import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from tests.system.conftest import ContainerFactory
from tests.system.testbed import (
    _mounts_under,
    _nspawn_processes_under,
    _pid_alive,
    http_request,
    https_request,
    wait_for,
)

pytestmark = [pytest.mark.system, pytest.mark.every_target]

FQDN = "testbed.example.test"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_boot_run_http_and_cleanup(container_factory: ContainerFactory, tmp_path: Path) -> None:
    started = time.monotonic()
    ct = container_factory(name="testbed", hostname=FQDN)
    ct.take_host_network()  # another run's container may hold the ports until then
    assert not _port_open(80), "something on the host already listens on :80"

    root, directory = ct.root, ct.dir
    assert directory.is_dir() and (root / "etc/os-release").is_file()
    assert ct.read_file("/etc/hostname").strip() == FQDN

    # Files written before boot are seen inside; symlinks cannot escape the root.
    ct.write_file("/etc/matrix-stack-testbed/marker", "hello\n", mode=0o600)
    (root / "tmp/escape").symlink_to("/etc")
    assert ct.path("/tmp/escape/passwd") == root / "etc/passwd"

    state = ct.boot(timeout=120)
    assert state in ("running", "degraded")
    assert ct.pid1 is not None and _pid_alive(ct.pid1)

    # systemd is PID 1 inside, and the system came up.
    assert ct.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert ct.run(["readlink", "/proc/1/exe"]).stdout.strip().endswith("/systemd")
    running = ct.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert running in ("running", "degraded"), ct.run(["systemctl", "--failed"], check=False)
    assert ct.run(["hostname", "--fqdn"]).stdout.strip() == FQDN
    assert ct.run(["cat", "/etc/matrix-stack-testbed/marker"]).stdout == "hello\n"
    assert ct.run(["stat", "-c", "%a %U", "/etc/matrix-stack-testbed/marker"]).stdout.split() == [
        "600",
        "root",
    ]
    # apt in the root must accept the (expired) snapshot Release files.
    apt_conf = ct.run(["apt-config", "dump", "Acquire::Check-Valid-Until"]).stdout
    assert '"false"' in apt_conf

    # run(): input, env, failure reporting.
    assert ct.run(["cat"], input="piped").stdout == "piped"
    assert ct.run(["sh", "-c", "echo $FOO $LANG"], env={"FOO": "bar"}).stdout.split() == [
        "bar",
        "C.UTF-8",
    ]
    with pytest.raises(AssertionError) as failure:
        ct.run(["sh", "-c", "echo to-out; echo to-err >&2; exit 3"])
    message = str(failure.value)
    assert "exited with 3" in message and "to-out" in message and "to-err" in message
    with pytest.raises(AssertionError, match="timed out"):
        ct.run(["sleep", "30"], timeout=1)

    # Apache is a real unit and answers on the host's loopback.
    assert ct.run(["systemctl", "is-active", "apache2"]).stdout.strip() == "active"
    resp = wait_for(
        lambda: http_request("GET", "127.0.0.1", 80, "/", server_name=FQDN),
        timeout=30,
        interval=0.5,
        what="apache2 answering on 127.0.0.1:80",
    )
    assert resp.status == 200, resp
    assert b"Apache2 Debian Default Page" in resp.body
    assert resp.headers["content-type"].startswith("text/html")
    assert "apache" in ct.journal("apache2").lower()

    # HTTPS: a certificate for FQDN, SNI, verification against it, no verification.
    ct.run(["make-ssl-cert", "generate-default-snakeoil", "--force-overwrite"])
    ct.run(["a2enmod", "-q", "ssl"])
    ct.run(["a2ensite", "-q", "default-ssl"])
    ct.run(["systemctl", "restart", "apache2"])
    cafile = tmp_path / "snakeoil.pem"
    cafile.write_bytes(ct.read_bytes("/etc/ssl/certs/ssl-cert-snakeoil.pem"))
    tls = wait_for(
        lambda: https_request("GET", "127.0.0.1", 443, "/", server_name=FQDN, cafile=str(cafile)),
        timeout=30,
        interval=0.5,
        what="apache2 answering on 127.0.0.1:443",
    )
    assert tls.status == 200 and b"Apache2 Debian Default Page" in tls.body
    assert ("DNS", FQDN) in tls.peer_cert.get("subjectAltName", ())
    unverified = https_request("GET", "127.0.0.1", 443, "/", server_name=FQDN, cafile=None)
    assert unverified.status == 200 and unverified.peer_cert_der == tls.peer_cert_der
    assert ("DNS", FQDN) in unverified.peer_cert.get("subjectAltName", ())
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request("GET", "127.0.0.1", 443, "/", server_name="other.test", cafile=str(cafile))

    nspawn_pid = ct.nspawn.pid if ct.nspawn is not None else -1
    pid1 = ct.pid1
    ct.close()

    # Nothing is left: no process, no mount, no directory; the ports are free again.
    assert not _pid_alive(nspawn_pid)
    assert pid1 is not None and not _pid_alive(pid1)
    assert not directory.exists()
    assert _mounts_under(directory) == []
    assert _nspawn_processes_under(directory) == []
    assert not _port_open(80) and not _port_open(443)
    ct.close()  # idempotent

    timings = {k: round(v, 2) for k, v in ct.timings.items()}
    print(
        f"\ntestbed timings: {timings}, whole test {time.monotonic() - started:.1f}s, "
        f"overlay={ct.uses_overlay}, boot state={state}",
        file=sys.stderr,
    )
