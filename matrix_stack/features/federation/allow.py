"""Federation choices in stack.yaml: the mode, the allow-list and the trusted key servers.

The commands edit /etc/matrix-stack/stack.yaml (the debconf config script reads it back, so
dpkg-reconfigure shows the same answers) and then run the apply pipeline, which re-renders
Synapse's settings and Element's config.json and restarts Synapse only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix_stack.base.errors import MatrixStackError
from matrix_stack.core.settings import (
    FederationMode,
    Settings,
    check_choice,
    check_server_name_with_port,
    split_list,
)

DOMAINS_KEY = "federation_domains"
KEY_SERVERS_KEY = "federation_key_servers"
MODE_KEY = "federation"

Stack = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """A new stack.yaml content and one line per thing it changes (or does not)."""

    stack: Stack
    notes: tuple[str, ...]


def check_domains(domains: Iterable[str], question: str = "DOMAIN") -> list[str]:
    """Return the server names (with an optional port) in canonical form, or raise."""
    return list(dict.fromkeys(check_server_name_with_port(question, d) for d in domains))


def _listed(stack: Mapping[str, Any], key: str) -> list[str]:
    return check_domains(split_list(stack.get(key)), key)


def current_mode(stack: Mapping[str, Any]) -> FederationMode:
    """Return the federation mode stack.yaml holds (allow-list when it holds none)."""
    value = stack.get(MODE_KEY)
    if value in (None, ""):
        return FederationMode.ALLOW_LIST
    mode: FederationMode = check_choice(MODE_KEY, value, FederationMode)
    return mode


def _mode_note(mode: FederationMode) -> tuple[str, ...]:
    if mode is FederationMode.OPEN:
        return ("note: federation is open, so every server is admitted; the list applies once "
                "you run: matrix-stack-admin federation mode allow-list",)
    if mode is FederationMode.OFF:
        return ("note: federation is off; the list applies once you run: "
                "matrix-stack-admin federation mode allow-list",)
    return ()


def allow(stack: Mapping[str, Any], domains: Iterable[str], key_server: bool = False) -> Change:
    """Return stack with domains on the allow-list (and trusted as key servers if asked)."""
    names = check_domains(domains)
    own = str(stack.get("server_name") or "").lower()
    if own in names:
        raise MatrixStackError(f"{own} is this server itself: it needs no allow-list entry")
    allowed = _listed(stack, DOMAINS_KEY)
    key_servers = _listed(stack, KEY_SERVERS_KEY)
    notes = []
    for name in names:
        if name in allowed:
            notes.append(f"{name} is already allowed")
        else:
            allowed.append(name)
            notes.append(f"allowed {name}")
        if key_server and name not in key_servers:
            key_servers.append(name)
            notes.append(f"trusting {name} as a key server")
    new = dict(stack)
    new[DOMAINS_KEY] = allowed
    if key_servers:
        new[KEY_SERVERS_KEY] = key_servers
    return Change(new, (*notes, *_mode_note(current_mode(stack))))


def deny(stack: Mapping[str, Any], domains: Iterable[str]) -> Change:
    """Return stack without domains on the allow-list or among the key servers."""
    names = check_domains(domains)
    allowed = _listed(stack, DOMAINS_KEY)
    key_servers = _listed(stack, KEY_SERVERS_KEY)
    notes = []
    for name in names:
        notes.append(f"denied {name}" if name in allowed else f"{name} was not allowed")
    new = dict(stack)
    new[DOMAINS_KEY] = [name for name in allowed if name not in names]
    if KEY_SERVERS_KEY in stack:
        new[KEY_SERVERS_KEY] = [name for name in key_servers if name not in names]
    mode = current_mode(stack)
    if mode is FederationMode.OPEN:
        notes.append("note: federation is open, which admits every server; to refuse these, "
                     "run: matrix-stack-admin federation mode allow-list")
    return Change(new, tuple(notes))


def set_mode(stack: Mapping[str, Any], mode: str) -> Change:
    """Return stack with the federation mode changed."""
    new_mode: FederationMode = check_choice("MODE", mode, FederationMode)
    old_mode = current_mode(stack)
    new = dict(stack)
    new[MODE_KEY] = new_mode.value
    if new_mode is old_mode:
        return Change(new, (f"federation is already {new_mode}",))
    notes = [f"federation: {old_mode} -> {new_mode}"]
    if new_mode is FederationMode.ALLOW_LIST and not split_list(stack.get(DOMAINS_KEY)):
        notes.append("note: the allow-list is empty, so no server is admitted yet; add one "
                     "with: matrix-stack-admin federation allow DOMAIN")
    if new_mode is FederationMode.OPEN:
        notes.append("note: matrix.org is now trusted as a key server")
    return Change(new, tuple(notes))


def describe(settings: Settings) -> dict[str, Any]:
    """Return the federation settings in force, for `federation list` (and its --json)."""
    return {
        "server_name": settings.server_name,
        "mode": settings.federation.value,
        "allowed": list(settings.federation_domains),
        "key_servers": list(settings.trusted_key_servers),
    }


def describe_lines(settings: Settings) -> list[str]:
    """Return `federation list` as lines a person reads."""
    lines = [f"mode: {settings.federation}"]
    if settings.federation is FederationMode.OPEN:
        lines.append("allowed: every server (the list below applies in allow-list mode)")
    elif settings.federation is FederationMode.OFF:
        lines.append("allowed: none (the list below applies in allow-list mode)")
    trusted = set(settings.trusted_key_servers)
    for name in settings.federation_domains:
        lines.append(f"  {name}" + ("  (key server)" if name in trusted else ""))
    if not settings.federation_domains:
        lines.append("  (no server listed)")
    return lines


def change_stack(
    edit: Callable[[Stack], Change],
    *,
    root: Path = Path("/"),
    apply_settings: Callable[[Settings], list[str]] | None = None,
) -> tuple[Change, list[str]]:
    """Change stack.yaml with edit and apply it (stack.change); a no-op edit applies nothing.

    Return the change and the apply report's lines.
    """
    from matrix_stack.core.stack import change

    changes: list[Change] = []

    def edit_stack(stack: Stack) -> Stack:
        changes.append(edit(stack))
        return changes[-1].stack

    changed = change(edit_stack, root=root, apply_settings=apply_settings, only_if_changed=True)
    if not changed.applied:
        return changes[-1], []
    warnings = [f"warning: {warning}" for warning in changed.settings.warnings]
    return changes[-1], [*warnings, *changed.lines]
