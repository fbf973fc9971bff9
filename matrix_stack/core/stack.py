"""stack.yaml, the administrator's choices: read, write, validate, and change it.

Every writer of stack.yaml goes through change(): edit a copy of its mapping, validate it
into Settings, write it, apply it. On any failure stack.yaml is put back byte for byte (or
removed, if it did not exist), apply puts back every file it wrote, and the error goes on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from matrix_stack.base.errors import MatrixStackError, SettingsError
from matrix_stack.base.files import FileSpec, host_path, write_atomic
from matrix_stack.base.paths import STACK_PATH
from matrix_stack.base.undo import Undo, describe_problems
from matrix_stack.core import settings as settings_module
from matrix_stack.core.answers import ANSWERS, FILE_ONLY_KEYS, QUESTION_OF_KEY
from matrix_stack.core.settings import Settings

Stack = dict[str, Any]


def explain(error: SettingsError, source: str) -> MatrixStackError:
    """Return the error naming the debconf question or the stack.yaml key the admin must fix."""
    if source == "debconf":
        question = QUESTION_OF_KEY.get(error.question, error.question)
        return SettingsError(
            question,
            error.value,
            f"{error.reason}; change it with: dpkg-reconfigure matrix-stack",
        )
    return SettingsError(
        f"{error.question} in {source}", error.value, f"{error.reason}; fix the file, then run: "
        "matrix-stack-admin apply"
    )


def load_settings(raw: Mapping[str, Any], source: str, root: Path = Path("/")) -> Settings:
    """Validate raw stack.yaml content into Settings; errors name where to fix them."""
    try:
        return settings_module.from_mapping(raw, root)
    except SettingsError as error:
        raise explain(error, source) from None


def read_stack(root: Path = Path("/")) -> dict[str, Any]:
    """Return stack.yaml's content, or raise a one-line error when it is missing or unreadable."""
    path = host_path(STACK_PATH, root)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixStackError(
            f"{STACK_PATH} is missing; run: dpkg-reconfigure matrix-stack"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise MatrixStackError(f"{STACK_PATH}{where} is not valid YAML; fix it") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise MatrixStackError(f"{STACK_PATH} must be a mapping of setting: value")
    return content


STACK_HEADER = """\
# matrix-stack: the administrator's choices, one setting per line.
# debconf reads this file back before asking (dpkg-reconfigure matrix-stack),
# so edits here are kept. After editing, run: matrix-stack-admin apply
# Keep one 'key: value' per line (lists as [a, b]); see matrix-stack-admin(8).
"""


def _reads_back(line: str, expected: Mapping[str, Any]) -> bool:
    try:
        return bool(yaml.safe_load(line) == expected)
    except yaml.YAMLError:
        return False


def render_stack(stack: Mapping[str, Any]) -> str:
    """Return stack.yaml's text: the header, then one flat 'key: value' line per setting."""
    lines = [STACK_HEADER]
    for key in [answer.key for answer in ANSWERS] + list(FILE_ONLY_KEYS):
        if key not in stack:
            continue
        value = stack[key]
        if isinstance(value, (list, tuple)):
            value = list(value)
            # PyYAML quotes 'host:port' items although YAML reads them bare, and the config
            # script's sh reader only strips quotes around the whole value: write them bare
            # whenever that reads back the same.
            bare = f"{key}: [{', '.join(str(item) for item in value)}]"
            if _reads_back(bare, {key: value}):
                lines.append(bare + "\n")
                continue
        dumped = yaml.safe_dump(
            {key: value}, default_flow_style=True, width=10_000, sort_keys=False,
            allow_unicode=True,
        ).strip()
        # safe_dump in flow style wraps a single mapping in braces; keep the bare line.
        lines.append(dumped.removeprefix("{").removesuffix("}") + "\n")
    return "".join(lines)


def write_stack(stack: Mapping[str, Any], root: Path = Path("/")) -> bool:
    """Write stack.yaml (root:root 0644) if its settings changed; return whether it did."""
    path = host_path(STACK_PATH, root)
    if path.exists():
        try:
            if read_stack(root) == dict(stack):
                return False
        except MatrixStackError:
            pass
    spec = FileSpec(STACK_PATH, render_stack(stack), 0o644, "root", "root")
    write_atomic(spec, root)
    return True


def current_settings(root: Path = Path("/")) -> Settings:
    """Return the Settings stack.yaml holds; an invalid value names its key and the file."""
    return load_settings(read_stack(root), str(STACK_PATH), root)


@dataclass(frozen=True)
class Changed:
    """What a change put in force: the Settings, whether it was applied, the report lines."""

    settings: Settings
    applied: bool = False
    lines: list[str] = field(default_factory=list)


def change(
    edit: Callable[[Stack], Mapping[str, Any]],
    *,
    root: Path = Path("/"),
    source: str = str(STACK_PATH),
    apply_settings: Callable[[Settings], list[str]] | None = None,
    database_ready: bool = False,
    keeps: Sequence[Path] = (),
    missing_ok: bool = False,
    only_if_changed: bool = False,
) -> Changed:
    """Edit stack.yaml, validate, write and apply it, as one transaction.

    edit gets a copy of the mapping stack.yaml holds ({} when missing_ok and there is none)
    and returns the new one; an error there or in validation (named after source) changes
    nothing. apply_settings (default: apply, skipping postgres.prepare when database_ready)
    brings the system in line; if anything fails from the write on, stack.yaml and keeps
    (files apply_settings writes besides apply's) are put back exactly and the error goes on.
    With only_if_changed, an edit that changes nothing is validated, not applied.
    """
    exists = host_path(STACK_PATH, root).exists()
    current = read_stack(root) if exists or not missing_ok else {}
    new = dict(edit(copy.deepcopy(current)))
    settings = load_settings(new, source, root)
    if only_if_changed and new == current:
        return Changed(settings)
    undo = Undo(root)
    undo.save(STACK_PATH, *keeps)
    try:
        write_stack(new, root)
        if apply_settings is None:
            # Imported here: the commands that only read stack.yaml start without the renderer.
            from matrix_stack.core.apply import apply

            lines = apply(settings, root=root, database_ready=database_ready).lines()
        else:
            lines = apply_settings(settings)
    except BaseException as error:
        _reverted, problems = undo.put_back()
        if problems:
            stuck = describe_problems(problems)
            if isinstance(error, MatrixStackError):
                error.args = (f"{error}; and could not put back {stuck}",)
            else:
                error.add_note(f"matrix-stack: could not put back {stuck}")
        raise
    return Changed(settings, True, lines)
