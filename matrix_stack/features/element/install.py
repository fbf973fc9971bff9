"""Element web releases: verify, unpack, switch 'current' atomically, keep one for rollback.

Layout under /var/lib/matrix-stack/element: element-vX.Y.Z/ release directories, the
'current' symlink Apache serves (the placeholder page until a release is installed),
'previous' (what 'element rollback' returns to), keyring.gpg (the pinned signing key).
A failure at any step leaves the served release as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.base.files import exclusive_lock, host_path
from matrix_stack.base.paths import ELEMENT_DIR, ELEMENT_ROOT
from matrix_stack.core.settings import Settings
from matrix_stack.features.element.archive import Release, parse_version, unpack_release
from matrix_stack.features.element.compress import precompress
from matrix_stack.features.element.download import (
    Downloader,
    DownloadError,
    resolve_latest,
    tarball_url,
)
from matrix_stack.features.element.signature import (
    KeyMismatchError,
    keyring_matches,
    pinned_keyring,
    verify,
    write_keyring,
)

PREVIOUS_LINK = ELEMENT_DIR / "previous"
KEYRING_PATH = ELEMENT_DIR / "keyring.gpg"
LOCK_PATH = ELEMENT_DIR / ".lock"
SIGNATURE_LIMIT = 1 << 20
_RELEASE_DIR = re.compile(r"element-v(\d+\.\d+\.\d+(?:-rc\.?\d+)?)")
_SCRATCH_PREFIXES = (".unpack-", ".download-", ".trash-", ".current-", ".previous-", ".keyring-")


@dataclass(frozen=True)
class Outcome:
    """What an install did: the version now served, the one before, whether it changed."""

    version: str
    replaced: str | None
    changed: bool = True


@dataclass(frozen=True)
class Installed:
    """The release served now and the one kept for rollback (None: none)."""

    current: str | None
    previous: str | None


def _linked_version(link: Path) -> str | None:
    """Return the version of the release directory link points at, if it is one."""
    if not link.is_symlink():
        return None
    match = _RELEASE_DIR.fullmatch(os.readlink(link))
    if match is None or not (link.parent / match.group(0) / "index.html").is_file():
        return None
    return match.group(1)


def installed(root: Path = Path("/")) -> Installed:
    """Return the installed and the previous release versions."""
    return Installed(
        _linked_version(host_path(ELEMENT_ROOT, root)),
        _linked_version(host_path(PREVIOUS_LINK, root)),
    )


@contextmanager
def locked(root: Path) -> Iterator[Path]:
    """Hold the Element directory's lock (one fetch, install or rollback at a time)."""
    directory = host_path(ELEMENT_DIR, root)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    with exclusive_lock(
        host_path(LOCK_PATH, root),
        "another Element fetch, install or rollback is running; try again later",
    ):
        yield directory


def refuse_downgrade(version: str, current: str | None, *, allow_downgrade: bool) -> None:
    """Raise unless version is at least the one served (or a downgrade is allowed).

    A stale mirror, or a download over http:// changed on the way, can offer an older release
    that is still validly signed, and with it the holes fixed since.
    """
    if allow_downgrade or current is None or parse_version(version) >= parse_version(current):
        return
    shown = version.removeprefix("v")
    raise MatrixStackError(
        f"Element {shown} is older than the installed {current}: refused (a stale mirror or a "
        "tampered download can offer an old release); add --allow-downgrade to install it anyway"
    )


def _set_link(link: Path, target: str) -> None:
    """Point link at target atomically (a new symlink renamed over the old one)."""
    temporary = link.with_name(f".{link.name}-{secrets.token_hex(4)}")
    os.symlink(target, temporary)
    os.replace(temporary, link)
    descriptor = os.open(link.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune(directory: Path) -> list[str]:
    """Remove releases other than current and previous, and leftovers; return their names.

    Called with the lock held and no download or unpacking under way.
    """
    keep = {os.readlink(directory / link) for link in ("current", "previous")
            if (directory / link).is_symlink()}
    removed = []
    for entry in directory.iterdir():
        if entry.name in keep:
            continue
        if _RELEASE_DIR.fullmatch(entry.name) or entry.name.startswith(_SCRATCH_PREFIXES):
            _remove(entry)
            removed.append(entry.name)
    return sorted(removed)


def _switch(directory: Path, release: Release) -> str | None:
    """Move an unpacked release in, serve it, keep the one served before; return that one."""
    before = _linked_version(directory / "current")
    final = directory / release.path.name
    if final.exists() or final.is_symlink():
        trash = directory / f".trash-{secrets.token_hex(4)}"
        os.rename(final, trash)
    os.rename(release.path, final)
    _set_link(directory / "current", final.name)
    if before is not None:
        _set_link(directory / "previous", f"element-v{before}")
    return before


def _ensure_keyring(settings: Settings, root: Path, downloader: Downloader, *, fresh: bool) -> Path:
    """Return the kept keyring, downloading the key (accepted only if pinned) when needed."""
    path = host_path(KEYRING_PATH, root)
    pin = settings.element_key_fingerprint
    if fresh or not keyring_matches(path, pin):
        data, _ = downloader.read(settings.element_key_url)
        write_keyring(pinned_keyring(data, pin, settings.element_key_url), path)
    return path


def _verify(
    settings: Settings, root: Path, downloader: Downloader, tarball: Path, signature: Path
) -> None:
    """Check the signature; a kept key that fails to match is refreshed once (new subkey)."""
    pin = settings.element_key_fingerprint
    had_key = keyring_matches(host_path(KEYRING_PATH, root), pin)
    keyring = _ensure_keyring(settings, root, downloader, fresh=False)
    try:
        verify(tarball, signature, keyring, pin)
    except KeyMismatchError:
        if not had_key:
            raise
        with contextlib.suppress(DownloadError):  # offline: the first refusal stands
            keyring = _ensure_keyring(settings, root, downloader, fresh=True)
        verify(tarball, signature, keyring, pin)


def _install_locked(
    settings: Settings,
    root: Path,
    directory: Path,
    downloader: Downloader,
    tarball: Path,
    signature: Path,
    expected: str | None,
    allow_downgrade: bool,
) -> Outcome:
    _verify(settings, root, downloader, tarball, signature)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".unpack-"))
    try:
        release = unpack_release(tarball, staging, expected)
        current = installed(root).current
        if release.version == current:
            return Outcome(current, current, changed=False)
        refuse_downgrade(release.version, current, allow_downgrade=allow_downgrade)
        precompress(release.path)
        return Outcome(release.version, _switch(directory, release))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install(
    settings: Settings,
    tarball: Path,
    signature: Path,
    *,
    root: Path = Path("/"),
    downloader: Downloader | None = None,
    allow_downgrade: bool = False,
) -> Outcome:
    """Verify and install a local release tarball; an older one only if allowed."""
    with locked(root) as directory:
        outcome = _install_locked(
            settings, root, directory, downloader or Downloader(), tarball, signature, None,
            allow_downgrade,
        )
        prune(directory)
    return outcome


def fetch(
    settings: Settings,
    requested: str | None = None,
    *,
    root: Path = Path("/"),
    downloader: Downloader | None = None,
    allow_downgrade: bool = False,
) -> Outcome:
    """Download, verify and install a version ('latest' resolved) unless it is served already.

    A version older than the one served is refused before any download, unless allowed.
    """
    downloader = downloader or Downloader()
    wanted = requested or settings.element_version
    version = resolve_latest(settings, downloader) if wanted == "latest" else wanted
    with locked(root) as directory:
        current = installed(root).current
        if current == version:
            return Outcome(version, version, changed=False)
        refuse_downgrade(version, current, allow_downgrade=allow_downgrade)
        url = tarball_url(settings.element_source, version)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as work:
            tarball = Path(work) / f"element-v{version}.tar.gz"
            signature = Path(work) / f"{tarball.name}.asc"
            downloader.download(url, tarball)
            downloader.download(f"{url}.asc", signature, limit=SIGNATURE_LIMIT, show=False)
            outcome = _install_locked(
                settings, root, directory, downloader, tarball, signature, version,
                allow_downgrade,
            )
        prune(directory)
    return outcome


def rollback(root: Path = Path("/")) -> tuple[str, str | None]:
    """Serve the previous release again and keep the current one as previous."""
    with locked(root) as directory:
        state = installed(root)
        if state.previous is None:
            raise MatrixStackError("there is no previous Element release to roll back to")
        _set_link(directory / "current", f"element-v{state.previous}")
        if state.current is not None:
            _set_link(directory / "previous", f"element-v{state.current}")
        return state.previous, state.current


# How long the postinst waits for a release before going on without Element.
POSTINST_SECONDS = 60.0


def installed_line(outcome: Outcome) -> str:
    """Return the one line that says what an install or fetch did."""
    if not outcome.changed:
        return f"Element {outcome.version} is already installed"
    kept = (
        f"; {outcome.replaced} kept for: matrix-stack-admin element rollback"
        if outcome.replaced
        else ""
    )
    return f"installed Element {outcome.version} (signature verified){kept}"


def postinst_lines(root: Path = Path("/"), settings: Settings | None = None) -> list[str]:
    """Install the configured Element if none (or another pinned version) is served.

    settings: those the postinst just applied (default: stack.yaml's). Never raises: the
    package configuration must not fail for lack of a network.
    """
    from matrix_stack.core.stack import current_settings
    from matrix_stack.features.element.download import Deadline

    try:
        settings = settings or current_settings(root)
        current = installed(root).current
        if current is not None and settings.element_version in ("latest", current):
            return []
        downloader = Downloader(Deadline(POSTINST_SECONDS))
        return [installed_line(fetch(settings, root=root, downloader=downloader))]
    except Exception as error:  # noqa: BLE001 - any failure is one warning, never a failed install
        reason = str(error) if isinstance(error, MatrixStackError) else repr(error)
        return [f"Element not installed ({reason}); retry with: matrix-stack-admin element fetch"]
