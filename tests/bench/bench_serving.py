"""make bench (serving): Apache in front of Synapse against Synapse direct, and Element's bytes.

Side by side in one booted stack: GET /_matrix/client/versions and an authenticated /sync of
a room with 50 messages, at concurrency 1 and 32, through Apache (HTTPS, HTTP/1.1 keep-alive
with wrk, h2 with h2load) and direct on 127.0.0.1:8008. Then Element's first load (compressed
and not) and second load. Printed, never asserted.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.bench import machine
from tests.element_release import TestKey, entry, publish, release_members, serving
from tests.system import stack
from tests.system.testbed import Container, cleanup_stale, ensure_base_tarball

SERVER = stack.SERVER
ELEMENT = f"element.{SERVER}"
DIRECT = "http://127.0.0.1:8008"
SECONDS = 5


def client(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    """One request to Synapse direct; anything but 200 stops the bench."""
    status, answer = stack.synapse_request(method, path, body, token)
    if status != 200:
        raise SystemExit(f"bench: {method} {path} answered {status}: {answer}")
    return answer


def prepare_room(container: Container) -> str:
    """Create a user with a room holding 50 messages; return its access token."""
    # Bench only: no message rate limit while the room is filled. Never in the package.
    container.write_file("/etc/matrix-synapse/conf.d/90-bench-only.yaml",
                         "rc_message: {per_second: 1000, burst_count: 1000}\n")
    container.run(["systemctl", "restart", "matrix-synapse"])
    stack.wait_for_client_api(container)
    container.run(["matrix-stack-admin", "user", "add", "bench", "--password-file", "-"],
                  input="bench-password")
    token = client("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bench"},
        "password": "bench-password"})["access_token"]
    room = client("POST", "/_matrix/client/v3/createRoom", {"name": "bench"}, token)["room_id"]
    for index in range(50):
        client("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{index}",
               {"msgtype": "m.text", "body": f"message {index}"}, token)
    return str(token)


# With pinning: Synapse alone on CPU 0; Apache and the load generator on CPU 1, as on a
# server whose other cores carry Apache and whose clients are elsewhere. Without it all three
# share both cores and the load generator's own cycles are taken from Synapse.
LOAD_CPU: list[str] = []


def pin(container: Container) -> None:
    """Pin every Synapse thread to CPU 0 and every Apache process and thread to CPU 1."""
    container.run(["sh", "-c", "for pid in $(pgrep -f synapse.app.homeserver); do "
                   "taskset -a -cp 0 $pid; done; for pid in $(pgrep apache2) $(pgrep nginx); do "
                   "taskset -a -cp 1 $pid; done"])
    LOAD_CPU[:] = ["taskset", "-c", "1"]


def unpin(container: Container) -> None:
    container.run(["sh", "-c", "for pid in $(pgrep -f synapse.app.homeserver) "
                   "$(pgrep apache2) $(pgrep nginx); do taskset -a -cp 0,1 $pid; done"])
    LOAD_CPU[:] = []


def wrk(url: str, connections: int, token: str | None) -> tuple[float, float, float]:
    """Return (p50 ms, p99 ms, requests/s) from wrk --latency."""
    argv = [*LOAD_CPU, "wrk", f"-t{min(connections, 2)}", f"-c{connections}",
            f"-d{SECONDS}s", "--latency"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    output = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)", output, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return latency("50%"), latency("99%"), rate


def h2load(url: str, connections: int, token: str | None) -> tuple[float, float, float]:
    """Return (p50 ms, p99 ms, requests/s) from h2load's per-request log."""
    with tempfile.NamedTemporaryFile("r") as log:
        argv = [*LOAD_CPU, "h2load", "-c", str(connections), "-m", "1", "-D", str(SECONDS),
                "--log-file", log.name]
        if token:
            argv += ["-H", f"Authorization: Bearer {token}"]
        output = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
        durations = sorted(int(line.split()[2]) / 1000 for line in log if line.strip())
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    return statistics.median(durations), durations[int(len(durations) * 0.99)], rate


ROUNDS = 3


def medians(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Return the median of each figure over the rounds."""
    p50, p99, rate = (statistics.median(run[index] for run in runs) for index in range(3))
    return p50, p99, rate


# nginx beside Apache, for comparison only (never in the package): Debian's nginx on 8443 of
# the same stack, the same certificate, HTTP/2 and kept-alive connections to Synapse.
NGINX_PORT = 8443
NGINX_SITE = """upstream synapse {{ server 127.0.0.1:8008; keepalive 32; }}
server {{
    listen {port} ssl;
    http2 on;
    server_name {server};
    ssl_certificate {certificate};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location /_matrix {{
        proxy_pass http://synapse;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto https;
    }}
}}
"""


def start_nginx(container: Container) -> None:
    """Install Debian's nginx in the stack and serve Synapse on NGINX_PORT with its certificate."""
    stack.apt_install(container, "nginx")
    site = container.read_file("/etc/apache2/sites-available/matrix-stack.conf")
    certificate, key = (next(line.split()[1] for line in site.splitlines()
                             if line.strip().startswith(directive))
                        for directive in ("SSLCertificateFile", "SSLCertificateKeyFile"))
    container.write_file("/etc/nginx/sites-enabled/default", NGINX_SITE.format(
        port=NGINX_PORT, server=SERVER, certificate=certificate, key=key))
    container.run(["systemctl", "restart", "nginx"])


def api_table(token: str, layout: str) -> None:
    print(f"API latency and throughput, {layout} (median of {ROUNDS} interleaved rounds of "
          f"{SECONDS} s; ms; req/s):")
    for name, path, auth in (("versions", "/_matrix/client/versions", None),
                             ("sync (50 messages)", "/_matrix/client/v3/sync", token)):
        for connections in (1, 32):
            rounds: list[list[tuple[float, float, float]]] = [[], [], [], []]
            for _ in range(ROUNDS):  # interleaved, so that drift of the machine hits all four
                rounds[0].append(wrk(f"{DIRECT}{path}", connections, auth))
                rounds[1].append(wrk(f"https://{SERVER}{path}", connections, auth))
                rounds[2].append(h2load(f"https://{SERVER}{path}", connections, auth))
                rounds[3].append(wrk(f"https://{SERVER}:{NGINX_PORT}{path}", connections, auth))
            direct, apache, h2, nginx = (medians(runs) for runs in rounds)
            print(f"  {name:18} c={connections:<2} direct p50 {direct[0]:7.2f} p99 {direct[1]:7.2f}"
                  f" {direct[2]:7.0f}/s | apache h1 p50 {apache[0]:7.2f} p99 {apache[1]:7.2f}"
                  f" {apache[2]:7.0f}/s | apache h2 p50 {h2[0]:7.2f} p99 {h2[1]:7.2f}"
                  f" {h2[2]:7.0f}/s | nginx h1 p50 {nginx[0]:7.2f} p99 {nginx[1]:7.2f}"
                  f" {nginx[2]:7.0f}/s")
            print(f"  {'':18}      added to direct p50: apache {apache[0] - direct[0]:+.2f} ms, "
                  f"nginx {nginx[0] - direct[0]:+.2f} ms; rate of direct: apache "
                  f"{100 * apache[2] / direct[2]:.0f}%, nginx {100 * nginx[2] / direct[2]:.0f}%;"
                  f" spread of direct rate {min(r[2] for r in rounds[0]):.0f}-"
                  f"{max(r[2] for r in rounds[0]):.0f}/s")
    # The floor of any answer through Apache: TLS and one request, no proxy (a static file).
    floor = medians([wrk(f"https://{SERVER}/.well-known/matrix/client", 1, None)
                     for _ in range(ROUNDS)])
    print(f"  floor: Apache alone over TLS (static .well-known), c=1: p50 {floor[0]:.2f} "
          f"p99 {floor[1]:.2f} {floor[2]:.0f}/s")


def realistic_release(directory: Path, version: str) -> list[Any]:
    """Return release members whose bundles are real JavaScript (from npm: matrix-js-sdk,
    react-dom), so that compression ratios are realistic."""
    subprocess.run(["npm", "pack", "--silent", "matrix-js-sdk@latest", "react-dom@18"],
                   cwd=directory, check=True, capture_output=True)
    scripts = b""
    for packed in sorted(directory.glob("*.tgz")):
        with tarfile.open(packed) as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.endswith(".js"):
                    scripts += archive.extractfile(member).read()  # type: ignore[union-attr]
    top = f"element-v{version}"
    half = len(scripts) // 2
    page = (b'<!DOCTYPE html><html><head><link rel="stylesheet" href="bundles/f00d/app.css">'
            b'<script src="bundles/f00d/vendor.js"></script><script src="bundles/f00d/app.js">'
            b"</script></head><body></body></html>\n")
    css = b"".join(b".mx_Room%d { display: flex; margin: %dpx; }\n" % (i, i % 9)
                   for i in range(3000))
    members = [m for m in release_members(version) if not m[0].name.endswith("index.html")]
    return members + [
        entry(f"{top}/index.html", page),
        entry(f"{top}/bundles/f00d/", kind=tarfile.DIRTYPE),
        entry(f"{top}/bundles/f00d/vendor.js", scripts[:half]),
        entry(f"{top}/bundles/f00d/app.js", scripts[half:]),
        entry(f"{top}/bundles/f00d/app.css", css),
    ]


def element_bytes(container: Container) -> None:
    """Print the bytes of Element's first load, compressed or not, and of a second load."""
    def fetch(path: str, encoding: str | None, headers: dict[str, str] | None = None) -> Any:
        sent = dict(headers or {})
        if encoding:
            sent["Accept-Encoding"] = encoding
        return stack.https(container, path, server_name=ELEMENT, headers=sent)

    index = fetch("/", None)
    assets = ["/", "/config.json"] + [
        "/" + path for path in re.findall(r'(?:src|href)="([^"]+)"', index.text)]
    for label, encoding in (("uncompressed", None), ("gzip", "gzip"), ("br + gzip", "br, gzip")):
        total = sum(len(fetch(path, encoding).body) for path in assets)
        print(f"  first load, {label:12}: {total / 1024:8.1f} KiB in {len(assets)} files")
    second = 0
    travelled = []
    for path in assets:
        first = fetch(path, "br, gzip")
        if "immutable" in first.headers.get("cache-control", ""):
            continue  # served from the browser's cache without asking
        conditional = {"If-None-Match": first.headers.get("etag", ""),
                       "If-Modified-Since": first.headers.get("last-modified", "")}
        again = fetch(path, "br, gzip", conditional)
        second += len(again.body)
        travelled.append(f"{path} ({again.status})")
    print(f"  second load: {second} bytes of bodies; asked again: {', '.join(travelled)}")


def main() -> int:
    cleanup_stale()
    deb = Path(os.environ["MATRIX_STACK_DEB"])
    print(f"machine: {machine()}")
    with TestKey.generate("Bench Element Releases") as key, \
            Container(ensure_base_tarball(), name="bench-serving", hostname=SERVER) as container, \
            tempfile.TemporaryDirectory() as scratch:
        container.boot()
        stack.install(container, deb)
        stack.wait_for_client_api(container)
        token = prepare_room(container)
        start_nginx(container)
        mirror_dir = Path(scratch)
        (mirror_dir / "key.asc").write_bytes(key.public())
        with serving(mirror_dir) as mirror, stack.host_resolves(SERVER, ELEMENT):
            publish(mirror_dir, key, "1.11.99", realistic_release(mirror_dir, "1.11.99"))
            for name, value in (("element_source", f"{mirror.url}element-v{{version}}.tar.gz"),
                                ("element_key_url", f"{mirror.url}key.asc"),
                                ("element_key_fingerprint", f'"{key.fingerprint}"')):
                stack.set_stack_value(container, name, value)
            container.run(["matrix-stack-admin", "element", "fetch", "1.11.99"])
            api_table(token, "unpinned: Synapse, Apache and the load generator share 2 cores")
            pin(container)
            api_table(token, "pinned: Synapse alone on CPU 0; Apache and the load generator "
                      "on CPU 1")
            unpin(container)
            print("Element (a release whose bundles are real JavaScript from npm):")
            element_bytes(container)
        print("reproduce: make bench (as root)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
