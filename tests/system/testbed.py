"""Booted-system test bed: real Debian sid roots booted with systemd-nspawn.

The recipe (see shared TESTBED.md):

* ``ensure_base_tarball()`` builds, once, a sid root with mmdebstrap that already has the real
  ``matrix-synapse``, ``coturn`` and ``apache2`` packages, cached under
  ``/var/cache/matrix-stack-tests`` and keyed on the package list and the mirror.
* ``Container`` gives every test a fresh, writable copy of that root (an overlayfs over a
  once-extracted lower tree, or a plain tar extraction when overlayfs is not usable), boots it
  with ``systemd-nspawn --boot`` and runs commands in it with ``nsenter``.  ``close()`` always
  removes the container: processes, mounts and directories.
* ``https_request()`` / ``http_request()`` talk to the booted stack from the host like a user
  would (TCP to an address, TLS with SNI, no redirect following).

Only the standard library is used: the harness runs with the host's ``/usr/bin/python3``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self, TypeVar

__all__ = [
    "BASE_PACKAGES",
    "CACHE_DIR",
    "DEFAULT_SUITE",
    "DEFAULT_TARGET",
    "TARGETS",
    "WORK_DIR",
    "BaseImageError",
    "Container",
    "Response",
    "Target",
    "current_target",
    "debian_mirror",
    "cleanup_stale",
    "ensure_base_tarball",
    "ensure_base_tree",
    "http_request",
    "https_request",
    "missing_prerequisites",
    "wait_for",
]

# Packages of every base root, on top of what mmdebstrap's "apt" variant brings (Essential: yes
# plus apt).  mod_md ships inside apache2 itself, so there is no separate package for it.
# "mount" keeps systemd's own .mount units from failing at boot (it is not Essential in sid).
COMMON_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "coturn",
    "apache2",
    "ca-certificates",
    "curl",
    # matrix-stack's own dependencies are left out on purpose: apt resolves them from the
    # archive when a test installs the .deb, so its Depends line is exercised for real.
    "iproute2",
    "openssl",
    "procps",
    "ssl-cert",
    "mount",
)


@dataclass(frozen=True)
class Target:
    """A Debian release and the Synapse package a booted test runs on."""

    name: str
    suite: str
    synapse_package: str
    description: str
    # Installed in the base root; matrix-synapse-py3 is not: it comes from its repository,
    # as on a real server, when the test installs matrix-stack.
    packages: tuple[str, ...]


TARGETS: dict[str, Target] = {
    "trixie-py3": Target(
        name="trixie-py3",
        suite="trixie",
        synapse_package="matrix-synapse-py3",
        description="Debian 13 with the Synapse project's matrix-synapse-py3",
        # sid's root has both through matrix-synapse; tzdata configured at test time fails
        # (nspawn binds /etc/localtime), and every server has python3.
        packages=(*COMMON_PACKAGES, "tzdata", "python3"),
    ),
    "sid": Target(
        name="sid",
        suite="sid",
        synapse_package="matrix-synapse",
        description="Debian sid with Debian's matrix-synapse",
        packages=(*COMMON_PACKAGES, "matrix-synapse"),
    ),
}
DEFAULT_TARGET = "trixie-py3"
TARGET_VAR = "MATRIX_STACK_TARGET"


def current_target() -> Target:
    """The target named by $MATRIX_STACK_TARGET (Debian 13 + matrix-synapse-py3 by default)."""
    name = os.environ.get(TARGET_VAR, "") or DEFAULT_TARGET
    try:
        return TARGETS[name]
    except KeyError:
        raise TestbedError(
            f"{TARGET_VAR}={name}: unknown target (known: {', '.join(TARGETS)})"
        ) from None


# The sid root of earlier rounds, kept under its old names for the callers that pass them.
BASE_PACKAGES = TARGETS["sid"].packages
DEFAULT_SUITE = "sid"
MIRROR_VAR = "MATRIX_STACK_TEST_MIRROR"


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this host's apt uses (TESTBED.md §1), or $MATRIX_STACK_TEST_MIRROR.

    Read from the ``URIs:`` lines of ``sources.list.d/*.sources`` or the ``deb`` lines of
    ``sources.list``: the first address whose path ends in ``/debian``.
    """
    if os.environ.get(MIRROR_VAR):
        return os.environ[MIRROR_VAR].rstrip("/")
    candidates: list[str] = []
    for sources in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for line in sources.read_text(errors="replace").splitlines():
            if line.startswith("URIs:"):
                candidates += line.split()[1:]
    for path in (sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*.list"))):
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 2 and words[0] == "deb":
                    candidates.append(words[1])
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise BaseImageError(
        f"no Debian archive found in {sources_dir}/sources.list(.d): set {MIRROR_VAR}"
    )


CACHE_DIR = Path("/var/cache/matrix-stack-tests")
WORK_DIR = Path("/var/tmp/matrix-stack-tests")
# Held by the process whose container uses the host's network (ports 80, 443, 8448, 3478).
HOST_NETWORK_LOCK = Path("/run/lock/matrix-stack-testbed.lock")

# Bump when the way the base image is made changes (hooks, options), to invalidate caches.
_RECIPE_VERSION = "1"
# The archive mirror here serves a snapshot whose Release files have expired.
_APT_CONF_NAME = "99matrix-stack-tests"
_APT_CONF = 'Acquire::Check-Valid-Until "false";\n'

_CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DEFAULT_ENV: dict[str, str] = {
    "PATH": _CONTAINER_PATH,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
}
_HOST_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
_TAIL_CHARS = 4000

T = TypeVar("T")


class BaseImageError(RuntimeError):
    """The base root could not be built: the Debian archive (or snapshot) looks broken."""


class TestbedError(RuntimeError):
    """The test bed itself (nspawn, mounts, cleanup) failed."""


def _log(message: str) -> None:
    print(f"[matrix-stack testbed] {message}", file=sys.stderr, flush=True)


def _tail(text: str, limit: int = _TAIL_CHARS) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


# --------------------------------------------------------------------------------------------
# prerequisites


def missing_prerequisites() -> list[str]:
    """What this host lacks to run booted-system tests (empty when everything is there)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("must run as root (systemd-nspawn, mounts, nsenter)")
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("nsenter", "util-linux"),
        ("tar", "tar"),
    ):
        if shutil.which(tool, path=_HOST_ENV["PATH"]) is None:
            problems.append(f"{tool} not found (apt-get install {package})")
    return problems


# --------------------------------------------------------------------------------------------
# base image


def _base_key(packages: Sequence[str], suite: str, mirror: str, extra: str = "") -> str:
    recipe = {
        "recipe": _RECIPE_VERSION,
        "variant": "apt",
        "suite": suite,
        "mirror": mirror,
        "packages": sorted(set(packages)),
        "apt_conf": _APT_CONF,
    }
    if extra:
        recipe["extra"] = extra
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return digest[:12]


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_mmdebstrap(
    suite: str,
    output: str,
    mirror: str,
    packages: Sequence[str],
    hooks: Sequence[str],
    log_path: Path,
    what: str,
) -> None:
    """Run mmdebstrap (variant apt, the expired-Release option) with customize hooks.

    Raises ``BaseImageError`` with the log's tail when it fails: nearly always a broken
    archive or snapshot.
    """
    argv = [
        "mmdebstrap",
        "--variant=apt",
        "--aptopt=" + _APT_CONF.strip().rstrip(";"),
        "--include=" + ",".join(packages),
        *(f"--customize-hook={hook}" for hook in hooks),
        suite,
        output,
        mirror,
    ]
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**_HOST_ENV, "TMPDIR": "/var/tmp"},
            check=False,
        )
    if proc.returncode != 0:
        output_text = log_path.read_text(errors="replace")
        raise BaseImageError(
            f"mmdebstrap failed (exit {proc.returncode}) building {what} from {mirror}: the "
            "Debian archive/snapshot looks broken (unsatisfiable or missing packages, or an "
            f"unreachable mirror). Packages: {', '.join(packages)}.\nFull log: {log_path}\n"
            f"Last output:\n{_tail(output_text)}"
        )


def ensure_base_tarball(
    cache_dir: Path = CACHE_DIR,
    *,
    target: Target | None = None,
    mirror: str | None = None,
) -> Path:
    """Return the cached base root tarball of a target, building it with mmdebstrap if missing.

    The file is ``<cache_dir>/<suite>-<key>.tar`` where ``key`` is 12 hex digits of a sha256
    over the package list, suite, mirror, recipe and (Debian 13) the matrix-synapse-py3
    repository it carries.  Raises ``BaseImageError`` when mmdebstrap fails, which nearly
    always means the archive or its snapshot is broken.
    """
    target = target or current_target()
    mirror = mirror or debian_mirror()
    hooks = [
        f"printf '%s' '{_APT_CONF}' > \"$1/etc/apt/apt.conf.d/{_APT_CONF_NAME}\""
        ' && echo localhost > "$1/etc/hostname"'
    ]
    extra = ""
    if target.synapse_package == "matrix-synapse-py3":
        from tests.system.synapse_py3 import ensure_repository, repository_hooks

        repository = ensure_repository(cache_dir, mirror)
        hooks += repository_hooks(repository)
        extra = repository.name
    key = _base_key(target.packages, target.suite, mirror, extra)
    tarball = cache_dir / f"{target.suite}-{key}.tar"
    if tarball.is_file():
        return tarball
    with _locked(cache_dir / ".lock"):
        if tarball.is_file():  # built meanwhile by another process
            return tarball
        # mmdebstrap picks the output format from the name: keep ".tar" at the end.
        tmp = tarball.with_name(f"{target.suite}-{key}.tmp-{os.getpid()}.tar")
        log_path = tarball.with_suffix(".log")
        _log(
            f"building base image {tarball.name} ({target.description}) with mmdebstrap "
            f"from {mirror} (about a minute; log: {log_path}) ..."
        )
        started = time.monotonic()
        try:
            run_mmdebstrap(
                target.suite, str(tmp), mirror, target.packages, hooks, log_path,
                f"the {target.name} base image",
            )
            if not tmp.is_file():
                raise BaseImageError(f"mmdebstrap left no {tmp}; see {log_path}")
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                tmp.unlink()
            raise
        os.replace(tmp, tarball)
        _log(f"base image built in {time.monotonic() - started:.1f}s: {tarball}")
    return tarball


def _extract(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            str(tarball),
            "-C",
            str(dest),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_HOST_ENV,
        check=False,
    )
    if proc.returncode != 0:
        raise TestbedError(f"extracting {tarball} into {dest} failed:\n{_tail(proc.stderr)}")


def ensure_base_tree(tarball: Path) -> Path:
    """Return a once-extracted, read-only-by-convention copy of ``tarball`` next to it.

    It serves as the overlayfs lower layer of every container; nothing writes into it.
    """
    tree = tarball.with_suffix(".d")
    if tree.is_dir():
        return tree
    with _locked(tarball.parent / ".lock"):
        if tree.is_dir():
            return tree
        tmp = tree.with_name(tree.name + f".tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            _extract(tarball, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, tree)
    return tree


# --------------------------------------------------------------------------------------------
# mounts and processes


def _unescape_mountinfo(field_: str) -> str:
    return (
        field_.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def _mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` in our mount namespace, deepest first."""
    prefix = str(directory).rstrip("/")
    found: list[Path] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = _unescape_mountinfo(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _umount(point: Path) -> None:
    proc = subprocess.run(
        ["umount", str(point)], capture_output=True, text=True, env=_HOST_ENV, check=False
    )
    if proc.returncode != 0 and point in _mounts_under(point):
        # Busy: detach it now so that nothing can reach the tree any longer.
        subprocess.run(
            ["umount", "--lazy", str(point)],
            capture_output=True,
            text=True,
            env=_HOST_ENV,
            check=False,
        )


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                children.extend(int(c) for c in (task / "children").read_text().split())
    return children


def _nspid(pid: int) -> list[int]:
    """The NSpid line of /proc/PID/status: the pid in each pid namespace, outermost first."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def _container_init(nspawn_pid: int) -> int | None:
    """PID (on the host) of the container's PID 1 below a systemd-nspawn process."""
    for child in _children(nspawn_pid):
        ids = _nspid(child)
        if len(ids) >= 2 and ids[-1] == 1:
            return child
    return None


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _nspawn_directory(pid: int) -> Path | None:
    """The -D/--directory argument of a systemd-nspawn process, or None for anything else."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    args = [a.decode(errors="replace") for a in argv if a]
    if not args or Path(args[0]).name != "systemd-nspawn":
        return None
    for i, arg in enumerate(args):
        if arg in ("-D", "--directory") and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--directory="):
            return Path(arg.split("=", 1)[1])
        if arg.startswith("-D") and len(arg) > 2:
            return Path(arg[2:])
    return None


def _nspawn_processes_under(directory: Path) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        root = _nspawn_directory(int(entry.name))
        if root is not None and (root == directory or directory in root.parents):
            found.append(int(entry.name))
    return found


def _kill_nspawn(pid: int, wait: float = 20.0) -> None:
    init = _container_init(pid)
    if init is not None:
        _kill(init)  # SIGKILL to a pid namespace's init kills the whole namespace
    deadline = time.monotonic() + wait
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _kill(pid)


def _owner_alive(container_dir: Path) -> bool:
    try:
        owner = int((container_dir / "owner.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    return owner != os.getpid() and _pid_alive(owner)


def _remove_tree(directory: Path) -> None:
    """Unmount everything below ``directory``, then delete it; refuse while mounts remain."""
    for point in _mounts_under(directory):
        _umount(point)
    left = _mounts_under(directory)
    if left:
        raise TestbedError(f"cannot remove {directory}: still mounted: {left}")
    shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():
        # One more go (e.g. files created while we removed); then report.
        shutil.rmtree(directory)


def cleanup_stale(work_dir: Path = WORK_DIR) -> list[str]:
    """Remove what a crashed earlier run left under ``work_dir``; return what was done.

    Containers whose owning test process is still alive are left alone.
    """
    done: list[str] = []
    if not work_dir.is_dir():
        return done
    for container_dir in sorted(p for p in work_dir.iterdir() if p.is_dir()):
        if _owner_alive(container_dir) or container_dir in _LIVE_DIRS:
            continue
        for pid in _nspawn_processes_under(container_dir):
            _kill_nspawn(pid)
            done.append(f"killed systemd-nspawn {pid} ({container_dir})")
        for point in _mounts_under(container_dir):
            _umount(point)
            done.append(f"unmounted {point}")
        _remove_tree(container_dir)
        done.append(f"removed {container_dir}")
    for line in done:
        _log(f"stale: {line}")
    return done


# --------------------------------------------------------------------------------------------
# containers

_LIVE: list[Container] = []
_LIVE_DIRS: set[Path] = set()
_LIVE_LOCK = threading.Lock()
_SIGTERM_INSTALLED = False
_OVERLAY_WORKS: bool | None = None


def _close_all_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(reversed(_LIVE))
    for container in live:
        try:
            container.close()
        except Exception as exc:  # noqa: BLE001 - at exit: report and go on with the rest
            _log(f"cleanup of {container.name} at exit failed: {exc}")


atexit.register(_close_all_at_exit)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an interrupt so that finalizers, context managers and atexit run.
    raise KeyboardInterrupt(f"signal {signum}")


def _install_sigterm_handler() -> None:
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    _SIGTERM_INSTALLED = True


def _overlay_wanted() -> bool:
    return os.environ.get("MATRIX_STACK_TESTBED_OVERLAY", "1") != "0"


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower()).strip("-")
    return (cleaned or "ct")[:40]


class Container:
    """A fresh copy of the base root, bootable with systemd-nspawn.

    The root is prepared on construction (so files can be written before ``boot()``);
    ``close()`` (also via ``with`` and at interpreter exit) removes everything again.
    """

    def __init__(
        self,
        tarball: Path,
        *,
        name: str = "ct",
        hostname: str = "matrix.example.test",
        network_bridge: str | None = None,
        work_dir: Path = WORK_DIR,
        overlay: bool | None = None,
    ) -> None:
        global _OVERLAY_WORKS
        self.name = _safe_name(name)
        self.hostname = hostname
        self.network_bridge = network_bridge
        self.tarball = tarball
        self.timings: dict[str, float] = {}
        self.boot_state: str | None = None
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self._closed = False
        self._console: Any = None
        self.machine = f"mst-{self.name}-{secrets.token_hex(4)}"
        self.dir = work_dir / self.machine
        self.root = self.dir / "root"
        self.console_log = self.dir / "console.log"
        self.uses_overlay = False
        self._host_lock: IO[str] | None = None

        work_dir.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700)
        (self.dir / "owner.pid").write_text(f"{os.getpid()}\n")
        with _LIVE_LOCK:
            _LIVE.append(self)
            _LIVE_DIRS.add(self.dir)
        _install_sigterm_handler()
        try:
            started = time.monotonic()
            use_overlay = _overlay_wanted() if overlay is None else overlay
            if use_overlay and _OVERLAY_WORKS is not False:
                lower = ensure_base_tree(tarball)
                self.timings["lower_tree"] = time.monotonic() - started
                started = time.monotonic()
                self.uses_overlay = self._mount_overlay(lower)
                if overlay is None:
                    _OVERLAY_WORKS = self.uses_overlay
            if not self.uses_overlay:
                _extract(tarball, self.root)
            self.timings["root_setup"] = time.monotonic() - started
            self._set_hostname()
        except BaseException:
            self.close()
            raise

    # -- preparation ----------------------------------------------------------------------

    def _mount_overlay(self, lower: Path) -> bool:
        upper, work = self.dir / "upper", self.dir / "work"
        for d in (upper, work, self.root):
            d.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            capture_output=True,
            text=True,
            env=_HOST_ENV,
            check=False,
        )
        if proc.returncode != 0:
            _log(f"overlayfs unavailable ({proc.stderr.strip()}); extracting the tarball instead")
            for d in (upper, work):
                shutil.rmtree(d, ignore_errors=True)
            return False
        return True

    def _set_hostname(self) -> None:
        short = self.hostname.split(".", 1)[0]
        self.write_file("/etc/hostname", self.hostname + "\n")
        hosts = self.read_file("/etc/hosts") if self.path("/etc/hosts").exists() else ""
        kept = [line for line in hosts.splitlines() if not line.startswith("127.0.1.1")]
        names = self.hostname if short == self.hostname else f"{self.hostname} {short}"
        kept.insert(1 if kept else 0, f"127.0.1.1\t{names}")
        self.write_file("/etc/hosts", "\n".join(kept) + "\n")

    # -- paths and files ------------------------------------------------------------------

    def path(self, container_path: str) -> Path:
        """Host path of ``container_path``, resolving symlinks as the container would.

        Absolute symlinks inside the root are taken relative to the root, so the result never
        points outside it.
        """
        if not container_path.startswith("/"):
            raise ValueError(f"container path must be absolute: {container_path!r}")
        parts = [p for p in container_path.split("/") if p]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = self.root.joinpath(*resolved, part)
            if candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks resolving {container_path} in {self.root}")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            resolved.append(part)
        return self.root.joinpath(*resolved)

    def write_file(
        self, container_path: str, data: str | bytes, mode: int = 0o644, *, parents: bool = True
    ) -> Path:
        """Write a file into the root (owner root); returns its host path."""
        target = self.path(container_path)
        if parents:
            target.parent.mkdir(parents=True, exist_ok=True)
        payload = data.encode() if isinstance(data, str) else data
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(target, mode)
        return target

    def read_file(self, container_path: str) -> str:
        return self.path(container_path).read_text()

    def read_bytes(self, container_path: str) -> bytes:
        return self.path(container_path).read_bytes()

    def copy_in(self, host_path: Path | str, container_path: str, mode: int = 0o644) -> Path:
        """Copy a host file (e.g. the built .deb) into the root."""
        return self.write_file(container_path, Path(host_path).read_bytes(), mode)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.nspawn is not None and self.nspawn.poll() is None

    def boot(self, timeout: float = 120.0) -> str:
        """Boot with systemd; wait until the system is up.  Returns "running" or "degraded"."""
        if self._closed:
            raise TestbedError(f"{self.machine} is closed")
        if self.running:
            raise TestbedError(f"{self.machine} is already running")
        if self.network_bridge is None:
            with _LIVE_LOCK:
                others = [c for c in _LIVE if c is not self and c.running and not c.network_bridge]
            if others:
                raise TestbedError(
                    f"{others[0].machine} already runs on the host network; only one "
                    "host-network container may run at a time (ports 80/443/8448/3478)"
                )
            self.take_host_network()
        argv = [
            "systemd-nspawn",
            "-q",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            f"--machine={self.machine}",
            "-D",
            str(self.root),
        ]
        if self.network_bridge is not None:
            argv.append(f"--network-bridge={self.network_bridge}")
        argv.append("--boot")
        started = time.monotonic()
        self._console = open(self.console_log, "ab")  # noqa: SIM115 - closed in _reap()
        self.pid1 = None
        self.boot_state = None
        self.nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            env={**_HOST_ENV, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            start_new_session=True,
        )
        deadline = started + timeout
        nspawn = self.nspawn
        while self.pid1 is None:
            if nspawn.poll() is not None:
                raise TestbedError(
                    f"systemd-nspawn exited with {nspawn.returncode} while booting "
                    f"{self.machine}:\n{self.console_tail()}"
                )
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"no PID 1 appeared in {self.machine} within {timeout}s:\n{self.console_tail()}"
                )
            init = _container_init(nspawn.pid)
            # Wait for the exec of systemd itself, not the nspawn helper that precedes it.
            if init is not None and Path(f"/proc/{init}/comm").read_text().strip() == "systemd":
                self.pid1 = init
            else:
                time.sleep(0.05)
        state = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if nspawn.poll() is not None:
                raise TestbedError(
                    f"systemd-nspawn exited with {nspawn.returncode} while booting "
                    f"{self.machine}:\n{self.console_tail()}"
                )
            try:
                proc = self.run(
                    ["systemctl", "is-system-running", "--wait"],
                    check=False,
                    timeout=max(1.0, remaining),
                )
            except AssertionError:  # timed out
                break
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                self.boot_state = state
                self.timings["boot"] = time.monotonic() - started
                return state
            if state in ("maintenance", "stopping"):
                break
            # "offline"/"unknown" or no answer: systemd's bus is not up yet.
            time.sleep(0.3)
        journal = self.journal(None, lines=60) if self.running else ""
        failed = (
            self.run(["systemctl", "--failed", "--no-legend"], check=False, timeout=20).stdout
            if self.running
            else ""
        )
        raise TestbedError(
            f"{self.machine} did not reach running/degraded within {timeout}s "
            f"(last state: {state or 'unknown'}).\nFailed units:\n{failed}\n"
            f"Last journal lines:\n{journal}\nConsole:\n{self.console_tail(2000)}"
        )

    def poweroff(self, timeout: float = 60.0) -> None:
        """Shut the container down cleanly; SIGKILL it when that takes longer than timeout."""
        nspawn = self.nspawn
        if nspawn is None:
            return
        started = time.monotonic()
        if nspawn.poll() is None and self.pid1 is not None and _pid_alive(self.pid1):
            with contextlib.suppress(AssertionError):
                self.run(["systemctl", "--no-block", "poweroff"], check=False, timeout=20)
        try:
            nspawn.wait(timeout=max(0.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            _log(f"{self.machine} did not power off within {timeout}s; killing it")
            _kill_nspawn(nspawn.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                nspawn.wait(timeout=20)
        self.timings["poweroff"] = time.monotonic() - started
        self._reap()
        if self.nspawn is None:
            # Stopped, it no longer uses the host's ports: another container may boot there.
            self._release_host_network()

    def _reap(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is not None:
            self.nspawn = None
            self.pid1 = None
        if self.nspawn is None and self._console is not None:
            self._console.close()
            self._console = None

    def take_host_network(self) -> None:
        """Wait until no other process's container holds the host's ports (a file lock, held
        until close; boot takes it, a test may take it before to look at the ports first)."""
        if self._host_lock is not None:
            return
        HOST_NETWORK_LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._host_lock = open(HOST_NETWORK_LOCK, "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._host_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"{self.machine}: waiting for another run's container to free the host network")
            fcntl.flock(self._host_lock, fcntl.LOCK_EX)

    def _release_host_network(self) -> None:
        if self._host_lock is not None:
            self._host_lock.close()  # closing the descriptor releases the lock
            self._host_lock = None

    def close(self) -> None:
        """Stop the container and remove its root, mounts and directory.  Idempotent."""
        if self._closed:
            return
        errors: list[str] = []
        try:
            try:
                self.poweroff(timeout=60.0)
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                errors.append(f"poweroff: {exc}")
            if self.nspawn is not None:
                _kill_nspawn(self.nspawn.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.nspawn.wait(timeout=20)
                self._reap()
            for pid in _nspawn_processes_under(self.dir):
                _kill_nspawn(pid)
            if self._console is not None:
                self._console.close()
                self._console = None
            try:
                _remove_tree(self.dir)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"remove {self.dir}: {exc}")
        finally:
            self._closed = True
            self._release_host_network()
            with _LIVE_LOCK:
                if self in _LIVE:
                    _LIVE.remove(self)
                _LIVE_DIRS.discard(self.dir)
        if errors:
            raise TestbedError(f"cleanup of {self.machine} incomplete: " + "; ".join(errors))

    def detach(self) -> Path:
        """Leave the container running after this process exits (e.g. for a demo).

        It is no longer closed by ``close()``/``with``/atexit; its directory is returned.
        ``cleanup_stale()`` (which every system-test session runs first) removes it later.
        """
        self._closed = True
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
            _LIVE_DIRS.discard(self.dir)
        if self._console is not None:
            self._console.close()  # nspawn keeps its own copy of the descriptor
            self._console = None
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "owner.pid").unlink()
        return self.dir

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else ("closed" if self._closed else "stopped")
        return f"<Container {self.machine} {self.hostname} {state}>"

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 600.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the booted container (all namespaces of its PID 1).

        The environment is a clean one (PATH, LANG=C.UTF-8, HOME, DEBIAN_FRONTEND=
        noninteractive) updated with ``env``.  With ``check`` a non-zero exit raises
        AssertionError with the command, exit code and the tails of stdout and stderr; a
        timeout always raises AssertionError.
        """
        __tracebackhide__ = True  # pytest: show the caller, not this helper
        if self.pid1 is None or not self.running:
            raise TestbedError(f"{self.machine} is not booted; cannot run {list(argv)}")
        full_env = {**_DEFAULT_ENV, **(env or {})}
        cmd = ["nsenter", "-t", str(self.pid1), "-a", "--", *argv]
        payload = input.encode() if isinstance(input, str) else input
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if payload is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"in {self.machine}: {' '.join(argv)!s} timed out after {timeout}s\n"
                f"--- stdout (tail) ---\n{_tail(out.decode(errors='replace'))}\n"
                f"--- stderr (tail) ---\n{_tail(err.decode(errors='replace'))}"
            ) from None
        result = subprocess.CompletedProcess(
            list(argv),
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in {self.machine}: {' '.join(argv)} exited with {result.returncode}\n"
                f"--- stdout (tail) ---\n{_tail(result.stdout)}\n"
                f"--- stderr (tail) ---\n{_tail(result.stderr)}"
            )
        return result

    def journal(self, unit: str | None = None, lines: int = 50) -> str:
        """The last ``lines`` journal lines of this boot, of one unit or of everything."""
        argv = ["journalctl", "--no-pager", "-b", "-n", str(lines), "-o", "short-precise"]
        if unit is not None:
            argv += ["-u", unit]
        proc = self.run(argv, check=False, timeout=60)
        return proc.stdout + (proc.stderr if proc.returncode else "")

    def console_tail(self, limit: int = _TAIL_CHARS) -> str:
        try:
            return _tail(self.console_log.read_text(errors="replace"), limit)
        except FileNotFoundError:
            return "(no console output)"


# --------------------------------------------------------------------------------------------
# HTTP(S) from the host


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)
    peer_cert: dict[str, Any] = field(default_factory=dict)
    peer_cert_der: bytes = b""
    tls_version: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def _decode_der(der: bytes) -> dict[str, Any]:
    """Decode a certificate into getpeercert()'s dict form without verifying it."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None or not der:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
        pem.write(ssl.DER_cert_to_PEM_cert(der))
        pem.flush()
        try:
            decoded = decode(pem.name)
        except (ssl.SSLError, ValueError):
            return {}
    return dict(decoded) if isinstance(decoded, dict) else {}


def _encode_body(
    body: bytes | str | Mapping[str, Any] | list[Any] | None, headers: dict[str, str]
) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    return json.dumps(body).encode()


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    host_header: str,
    headers: Mapping[str, str] | None,
    body: bytes | str | Mapping[str, Any] | list[Any] | None,
) -> tuple[int, str, dict[str, str], list[tuple[str, str]], bytes]:
    all_headers = {"Host": host_header, "User-Agent": "matrix-stack-tests", "Connection": "close"}
    for key, value in (headers or {}).items():
        for existing in [k for k in all_headers if k.lower() == key.lower()]:
            del all_headers[existing]
        all_headers[key] = value
    payload = _encode_body(body, all_headers)
    conn.request(method, path, body=payload, headers=all_headers)
    resp = conn.getresponse()
    data = resp.read()
    header_list = [(k, v) for k, v in resp.getheaders()]
    merged: dict[str, str] = {}
    for key, value in header_list:
        lk = key.lower()
        merged[lk] = f"{merged[lk]}, {value}" if lk in merged else value
    return resp.status, resp.reason, merged, header_list, data


def _host_header(server_name: str, port: int, default_port: int) -> str:
    return server_name if port == default_port else f"{server_name}:{port}"


def https_request(
    method: str,
    host_ip: str,
    port: int,
    path: str,
    *,
    server_name: str,
    cafile: str | os.PathLike[str] | None,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One HTTPS request to ``host_ip:port`` with SNI and Host ``server_name``.

    With ``cafile`` the chain and the name ``server_name`` are verified against it (a failure
    raises ``ssl.SSLCertVerificationError``); with ``cafile=None`` nothing is verified.  The
    peer certificate is returned either way (``peer_cert_der``, and ``peer_cert`` decoded).
    Redirects are not followed.  A dict/list ``body`` is sent as JSON.
    """
    if cafile is not None:
        context = ssl.create_default_context(cafile=os.fspath(cafile))
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host_ip, port), timeout=timeout)
    try:
        tls = context.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise
    conn = http.client.HTTPConnection(host_ip, port, timeout=timeout)
    conn.sock = tls
    try:
        der = tls.getpeercert(binary_form=True) or b""
        version = tls.version()  # before the exchange: "Connection: close" closes the socket
        cert = tls.getpeercert() if cafile is not None else None
        status, reason, merged, header_list, data = _exchange(
            conn, method, path, _host_header(server_name, port, 443), headers, body
        )
        return Response(
            status=status,
            reason=reason,
            headers=merged,
            body=data,
            header_list=header_list,
            peer_cert=dict(cert) if cert else _decode_der(der),
            peer_cert_der=der,
            tls_version=version,
        )
    finally:
        conn.close()


def http_request(
    method: str,
    host_ip: str,
    port: int,
    path: str,
    *,
    server_name: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One plain HTTP request to ``host_ip:port`` (Host: ``server_name`` or the address)."""
    conn = http.client.HTTPConnection(host_ip, port, timeout=timeout)
    try:
        status, reason, merged, header_list, data = _exchange(
            conn, method, path, _host_header(server_name or host_ip, port, 80), headers, body
        )
        return Response(
            status=status, reason=reason, headers=merged, body=data, header_list=header_list
        )
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# waiting


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 1.0,
    what: str = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions from ``predicate`` count as "not yet".  On timeout raises AssertionError naming
    ``what`` and the last result or exception.
    """
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    last: str = "never evaluated"
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - keep trying, report the last one
            last = f"raised {type(exc).__name__}: {exc}"
        else:
            if value:
                return value
            last = f"returned {value!r}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last {last}")
        time.sleep(interval)
