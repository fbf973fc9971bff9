"""matrix-stack-admin element …: status, fetch, install, rollback; and the postinst's fetch."""

from __future__ import annotations

import argparse

from matrix_stack.base.errors import MatrixStackError, UsageError

TYPE_CHECKING = False  # typing costs the command line milliseconds (see cli.py)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from matrix_stack.core.settings import Settings

DOWNGRADE_HELP = (
    "install a release older than the one served (refused otherwise: a stale mirror or a "
    "tampered download can offer an old, validly signed release)"
)


def add_commands(commands: Any) -> None:
    """Register the element command and its actions on the top-level subparsers."""
    element = commands.add_parser(
        "element",
        help="install, upgrade or roll back Element web (GPG-verified releases)",
        description="Manage the Element web client served at https://ELEMENT-DOMAIN/. Releases "
        "are accepted only with a valid signature by Element's release key, whose fingerprint "
        "is pinned; the release served stays in place when anything fails.",
    )
    actions = element.add_subparsers(dest="element_command", metavar="ACTION", required=True)

    status = actions.add_parser(
        "status", help="show the installed, previous and configured versions",
        description="Show the Element release served, the one kept for rollback, the "
        "configured version and source, and the signing key's fingerprint and URL.",
    )
    status.set_defaults(handler=run_status)

    fetch = actions.add_parser(
        "fetch", help="download, verify and install a release",
        description="Download the release tarball and its .asc signature from element_source, "
        "verify them with gpgv against the pinned key (see ELEMENT RELEASES in "
        "matrix-stack-admin(8)), unpack and serve the release. VERSION is X.Y.Z or latest; "
        "without it, the configured element_version. A progress line is shown on a terminal. "
        "Nothing is downloaded when that version is already served, nor when it is older than "
        "the one served, unless --allow-downgrade.",
    )
    fetch.add_argument("version", metavar="VERSION", nargs="?", help="X.Y.Z or latest")
    fetch.add_argument("--allow-downgrade", action="store_true", help=DOWNGRADE_HELP)
    fetch.set_defaults(handler=run_fetch)

    install = actions.add_parser(
        "install", help="verify and install a release tarball already on this host",
        description="Verify a release tarball already on this host (air-gapped servers) with "
        "its detached signature (default TARBALL.asc) and serve it; a release older than the "
        "one served only with --allow-downgrade.",
    )
    install.add_argument("tarball", metavar="TARBALL", help="the release tarball")
    install.add_argument(
        "--signature", metavar="F", help="the detached signature (default: TARBALL.asc)"
    )
    install.add_argument("--allow-downgrade", action="store_true", help=DOWNGRADE_HELP)
    install.set_defaults(handler=run_install)

    rollback = actions.add_parser(
        "rollback", help="serve the previous release again",
        description="Serve the release that was served before the last install again; the "
        "current one is kept, so a second rollback undoes the first.",
    )
    rollback.set_defaults(handler=run_rollback)


def _settings() -> Settings:
    from matrix_stack.core.stack import current_settings

    return current_settings()


def _downloader() -> Any:
    from matrix_stack.features.element.download import Downloader, Progress

    return Downloader(progress=Progress())


def status_lines(settings: Settings, root: Path | None = None) -> list[str]:
    """Return what element status prints: served, previous, configured."""
    from pathlib import Path

    from matrix_stack.features.element import install as element
    from matrix_stack.features.element.download import latest_url

    state = element.installed(root or Path("/"))
    served = (
        f"installed: Element {state.current}"
        if state.current
        else "installed: none (a page saying how to install Element is served); run: "
        "matrix-stack-admin element fetch"
    )
    lines = [served, f"previous:  {state.previous or 'none'}"]
    lines.append(f"configured: {settings.element_version} from {settings.element_source}")
    if settings.element_version == "latest":
        try:
            where = latest_url(settings)
        except MatrixStackError as error:
            where = str(error)
        lines.append(f"latest is looked up at: {where}")
    lines.append(f"signing key: {settings.element_key_fingerprint} from {settings.element_key_url}")
    return lines


def run_status(arguments: argparse.Namespace) -> int:
    for line in status_lines(_settings()):
        print(line)
    return 0


def run_fetch(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.core.settings import check_version
    from matrix_stack.features.element import install as element

    # A SettingsError: a usage error, exit 2.
    requested = None if arguments.version is None else check_version("VERSION", arguments.version)
    ensure_root()
    outcome = element.fetch(
        _settings(), requested, downloader=_downloader(),
        allow_downgrade=arguments.allow_downgrade,
    )
    print(element.installed_line(outcome))
    return 0


def run_install(arguments: argparse.Namespace) -> int:
    from pathlib import Path

    from matrix_stack.base.errors import ensure_root
    from matrix_stack.features.element import install as element

    tarball = Path(arguments.tarball)
    signature = Path(arguments.signature or f"{arguments.tarball}.asc")
    for path in (tarball, signature):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    ensure_root()
    outcome = element.install(_settings(), tarball.resolve(), signature.resolve(),
                              downloader=_downloader(), allow_downgrade=arguments.allow_downgrade)
    print(element.installed_line(outcome))
    return 0


def run_rollback(arguments: argparse.Namespace) -> int:
    from matrix_stack.base.errors import ensure_root
    from matrix_stack.features.element import install as element

    ensure_root()
    now, before = element.rollback()
    print(f"serving Element {now} again; {before or 'the placeholder'} kept for another rollback")
    return 0
