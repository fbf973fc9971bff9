"""The Synapse project's ``matrix-synapse-py3``, rebuilt by the test bed for Debian 13.

Its packaging is not in the sdist and its repository cannot be reached from here, so the test
bed builds a stand-in the way the Synapse project does (``debian/build_virtualenv`` there): a
virtualenv at ``/opt/venvs/matrix-synapse`` from Synapse's released wheel, pinned by version
and SHA-256, with the extras ``all``; ``generate_config``'s output with the same path tweaks as
``homeserver.yaml``; the same unit, links, debconf questions, postinst and statoverrides.  The
maintainer scripts and unit are in ``synapse_py3/`` beside this file (written from the facts
in issue 14, not copied).

Two releases go into one flat apt repository, cached like the base image: the newest (what
``apt install`` picks) and the one before it, to test an upgrade of Synapse.  The Debian 13
base root carries that repository as ``/srv/matrix-synapse-py3`` with an apt source, as a real
server carries the Synapse project's repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.system.testbed import BaseImageError, _locked, _log, run_mmdebstrap

SOURCE_DIR = Path(__file__).with_name("synapse_py3")
REPOSITORY_IN_ROOT = "/srv/matrix-synapse-py3"
SUITE = "trixie"
# Debian's version suffix, as the Synapse project's repository spells it per release.
VERSION_SUFFIX = "trixie1"
# Compilers and headers for the extras without wheels (psycopg2, systemd-python).
BUILD_PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-venv",
    "python3-dev",
    "gcc",
    "libpq-dev",
    "libsystemd-dev",
    "pkg-config",
    "dpkg-dev",
    "apt-utils",
    "ca-certificates",
)
# Debian 13's Python; Synapse's wheels are abi3, built for CPython >= 3.10.
WHEEL_PLATFORM = ("--python-version", "3.13", "--platform", "manylinux_2_28_x86_64")


@dataclass(frozen=True)
class Wheel:
    """One released Synapse wheel, pinned by its SHA-256."""

    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"matrix_synapse-{self.version}-cp310-abi3-manylinux_2_28_x86_64.whl"

    @property
    def debian_version(self) -> str:
        return f"{self.version}+{VERSION_SUFFIX}"


# What `apt install` gets, and the release an upgrade starts from.
NEWEST = Wheel("1.163.2", "6cecae98b6e1b55dd68e689329cf1677cba103d4160c320f04b26bd081ff1558")
PREVIOUS = Wheel("1.162.0", "ea122be63a088f0e3993cf35019c9b6ca4a9baf0bc26019c4549317c5342ee99")


def repository_key(mirror: str) -> str:
    """12 hex digits over the wheels, the stand-in's files, the build root and the mirror."""
    recipe = {
        "wheels": [NEWEST.sha256, PREVIOUS.sha256],
        "suite": SUITE,
        "mirror": mirror,
        "build_packages": sorted(BUILD_PACKAGES),
        "files": {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(SOURCE_DIR.iterdir())
            if path.is_file()
        },
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def download_wheel(wheel: Wheel, directory: Path) -> Path:
    """Download one Synapse wheel with pip and check its pinned SHA-256."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--only-binary", ":all:", *WHEEL_PLATFORM,
            f"matrix-synapse=={wheel.version}", "-d", str(directory),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    path = directory / wheel.filename
    if proc.returncode != 0 or not path.is_file():
        raise BaseImageError(
            f"pip could not download Synapse {wheel.version}'s wheel: {proc.stderr.strip()}"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        raise BaseImageError(
            f"{wheel.filename} has SHA-256 {digest}, pinned {wheel.sha256}: refusing it"
        )
    return path


def ensure_repository(cache_dir: Path, mirror: str) -> Path:
    """Return the cached flat repository of matrix-synapse-py3 .debs, building it if missing.

    The build runs in a throw-away Debian 13 root (mmdebstrap to /dev/null) that trusts what
    this host trusts, so pip reaches the package index through this machine's egress.
    """
    repository = cache_dir / f"synapse-py3-{repository_key(mirror)}"
    if (repository / "Release").is_file():
        return repository
    with _locked(cache_dir / ".lock"):
        if (repository / "Release").is_file():
            return repository
        log_path = repository.with_suffix(".log")
        _log(
            f"building matrix-synapse-py3 {NEWEST.version} and {PREVIOUS.version} in a Debian 13 "
            f"root (a few minutes; log: {log_path}) ..."
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="synapse-py3-") as work:
            source = Path(work) / "source"
            shutil.copytree(SOURCE_DIR, source)
            for wheel in (NEWEST, PREVIOUS):
                download_wheel(wheel, source)
            output = Path(work) / "out"
            inside = "/tmp/synapse-py3"
            run_mmdebstrap(
                SUITE,
                "/dev/null",
                mirror,
                BUILD_PACKAGES,
                [
                    # Build roots only: pip must trust this machine's TLS egress.
                    "upload /etc/ssl/certs/ca-certificates.crt "
                    "/etc/ssl/certs/ca-certificates.crt",
                    f'mkdir -p "$1{inside}"',
                    f"sync-in {source} {inside}",
                    f'chroot "$1" sh {inside}/build.sh {NEWEST.filename} {PREVIOUS.filename} '
                    f"{VERSION_SUFFIX}",
                    f"sync-out {inside}/out {output}",
                ],
                log_path,
                "matrix-synapse-py3",
            )
            names = {wheel.debian_version for wheel in (NEWEST, PREVIOUS)}
            built = {path.name.split("_")[1] for path in output.glob("*.deb")}
            if built != names or not (output / "Release").is_file():
                raise BaseImageError(
                    f"the matrix-synapse-py3 build left {sorted(built)} (expected "
                    f"{sorted(names)}); see {log_path}"
                )
            tmp = repository.with_name(repository.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(output, tmp)
            os.replace(tmp, repository)
        _log(f"matrix-synapse-py3 built in {time.monotonic() - started:.1f}s: {repository}")
    return repository


def repository_hooks(repository: Path) -> list[str]:
    """mmdebstrap hooks that put the repository into a root, with its apt source."""
    source = (
        "Types: deb\\n"
        f"URIs: file:{REPOSITORY_IN_ROOT}\\n"
        "Suites: ./\\n"
        "Trusted: yes\\n"
    )
    return [
        f'mkdir -p "$1{REPOSITORY_IN_ROOT}"',
        f"sync-in {repository} {REPOSITORY_IN_ROOT}",
        f"printf '{source}' > \"$1/etc/apt/sources.list.d/matrix-synapse-py3.sources\"",
    ]
