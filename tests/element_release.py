"""Fake Element releases for the tests: a gpg key of their own, signed tarballs, a loopback
HTTP server. Shared by tests/unit/test_element.py and tests/system/test_element.py.
"""

from __future__ import annotations

import http.server
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

GPG = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]


@dataclass
class TestKey:
    """A signing key in a throw-away GNUPGHOME: certify-only primary plus a signing subkey."""

    home: Path
    fingerprint: str = ""

    __test__ = False  # not a pytest test class

    def gpg(self, *args: str, input_bytes: bytes | None = None) -> bytes:
        environment = {**os.environ, "GNUPGHOME": str(self.home)}
        result = subprocess.run(
            [*GPG, *args], input=input_bytes, capture_output=True, env=environment, check=True
        )
        return result.stdout

    @classmethod
    def generate(cls, name: str) -> TestKey:
        """Make a key in a short temporary home (gpg-agent's socket path must stay short)."""
        home = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))
        key = cls(home)
        key.gpg("--quick-gen-key", f"{name} <releases@example.test>", "ed25519", "cert", "0")
        listing = key.gpg("--with-colons", "--list-keys").decode()
        key.fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        key.add_signing_subkey()
        return key

    def add_signing_subkey(self) -> None:
        self.gpg("--quick-add-key", self.fingerprint, "ed25519", "sign", "0")

    def newest_subkey(self) -> str:
        listing = self.gpg("--with-colons", "--list-keys", self.fingerprint).decode()
        return [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")][-1]

    def public(self, *, armor: bool = True) -> bytes:
        return self.gpg(*(["--armor"] if armor else []), "--export", self.fingerprint)

    def sign(self, data: Path, signature: Path | None = None, *, subkey: str | None = None) -> Path:
        """Write an armored detached signature (by the newest subkey unless told) of data."""
        target = signature or data.with_name(data.name + ".asc")
        user = f"{subkey}!" if subkey else self.newest_subkey() + "!"
        target.unlink(missing_ok=True)
        self.gpg("--local-user", user, "--armor", "--detach-sign", "-o", str(target), str(data))
        return target

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(self.home)},
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> TestKey:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


Member = tuple[tarfile.TarInfo, bytes | None]


def entry(
    name: str, data: bytes | None = b"", *, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> Member:
    """Return one tar member: a file with data, or another kind (directory, link, device)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o600
    info.uid, info.uname = 1000, "builder"
    if kind == tarfile.REGTYPE:
        info.size = len(data or b"")
        return info, data or b""
    return info, None


def release_members(version: str, *, index: bool = True) -> list[Member]:
    """Return the members of a fake release laid out as Element's scripts/package.sh does."""
    top = f"element-v{version}"
    members = [
        entry(f"{top}/", kind=tarfile.DIRTYPE),
        entry(f"{top}/version", f"{version}\n".encode()),
        entry(f"{top}/config.sample.json", b'{"default_server_name": "matrix.org"}\n'),
        entry(f"{top}/bundles/", kind=tarfile.DIRTYPE),
        entry(f"{top}/bundles/app.js", f"console.log('Element {version}');\n".encode()),
    ]
    if index:
        page = f"<!DOCTYPE html><title>Element</title><p>fake Element {version}</p>\n"
        members.insert(1, entry(f"{top}/index.html", page.encode()))
    return members


def write_tarball(path: Path, members: Sequence[Member]) -> Path:
    """Write members as a gzip tarball at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def publish(directory: Path, key: TestKey, version: str, members: Sequence[Member] | None = None,
            *, name: str | None = None) -> Path:
    """Write element-vVERSION.tar.gz (or name) and its signature into a mirror directory."""
    tarball = write_tarball(
        directory / (name or f"element-v{version}.tar.gz"),
        release_members(version) if members is None else members,
    )
    key.sign(tarball)
    return tarball


# Bad releases: each signed by the good key unless the name says otherwise, and each refused.
def bad_release_members(version: str) -> dict[str, list[Member]]:
    top = f"element-v{version}"
    good = release_members(version)
    return {
        "dotdot": [*good, entry(f"{top}/../../escaped", b"x")],
        "absolute": [*good, entry("/tmp/matrix-stack-absolute", b"x")],
        "symlink": [*good, entry(f"{top}/etc", kind=tarfile.SYMTYPE, link="../../../../etc")],
        "hardlink": [*good, entry(f"{top}/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd")],
        "device": [*good, entry(f"{top}/null", kind=tarfile.CHRTYPE)],
        "no-index": release_members(version, index=False),
    }


@dataclass
class Route:
    """A canned answer of the loopback server."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # a Content-Length other than the body's: truncation


class Mirror:
    """A loopback HTTP server: files of a directory (with listings) plus canned routes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.routes: dict[str, Route | Callable[[], Route]] = {}
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(mirror.directory), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                mirror.requests.append(self.path)
                route = mirror.routes.get(self.path)
                if route is None:
                    super().do_GET()
                    return
                answer = route() if callable(route) else route
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                length = answer.declared_length
                length = len(answer.body) if length is None else length
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(answer.body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def truncate(self, path: str) -> None:
        """Serve the file at path cut in half, announcing its full length."""
        data = (self.directory / path.lstrip("/")).read_bytes()
        self.routes[path] = Route(body=data[: len(data) // 2], declared_length=len(data))


@contextmanager
def serving(directory: Path) -> Iterator[Mirror]:
    """Run a Mirror of directory on a free loopback port for the duration of the block."""
    mirror = Mirror(directory)
    mirror.thread.start()
    try:
        yield mirror
    finally:
        mirror.server.shutdown()
        mirror.server.server_close()
