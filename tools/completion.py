"""Print bash completion for matrix-stack-admin, generated from its argparse tree.

Run at package build time (debian/rules), so the completion always matches --help.
"""

from __future__ import annotations

import argparse
import sys

from matrix_stack.base.paths import USER_NAMES_PATH as CACHE_PATH
from matrix_stack.cli.main import build_parser


def walk(
    parser: argparse.ArgumentParser,
    path: str,
    table: dict[str, list[str]],
    user_paths: set[str] | None = None,
) -> None:
    """Fill table with 'command path' -> words that may follow it, and user_paths with the
    paths whose first argument names an existing user."""
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                walk(child, f"{path} {name}".strip(), table, user_paths)
        else:
            words.extend(option for option in action.option_strings if option.startswith("--"))
            if getattr(action, "completes_users", False) and user_paths is not None:
                user_paths.add(path)
    table[path] = sorted(set(words))


def render(table: dict[str, list[str]], user_paths: set[str] | None = None) -> str:
    cases = "\n".join(
        f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(table.items())
    )
    users = "|".join(f'"{path}"' for path in sorted(user_paths or ())) or '""'

    cache = CACHE_PATH
    return f"""# bash completion for matrix-stack-admin (generated from its --help; do not edit)
_matrix_stack_admin() {{
    local current path word words index given
    current="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    given=0
    for ((index = 1; index < COMP_CWORD; index++)); do
        word="${{COMP_WORDS[index]}}"
        case "$word" in -*) continue ;; esac
        case " $(_matrix_stack_admin_words "$path") " in
            *" $word "*) path="${{path:+$path }}$word" ;;
            *) given=$((given + 1)) ;;
        esac
    done
    words="$(_matrix_stack_admin_words "$path")"
    # Local user names, from the cache the user commands keep (readable by root only).
    case "$path" in
        {users})
            if [ "$given" = 0 ] && [ -r {cache} ]; then
                words="$words $(cat {cache})"
            fi ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$current"))
}}
_matrix_stack_admin_words() {{
    local words=""
    case "$1" in
{cases}
    esac
    printf '%s' "$words"
}}
complete -F _matrix_stack_admin matrix-stack-admin
"""


def main() -> int:
    table: dict[str, list[str]] = {}
    user_paths: set[str] = set()
    walk(build_parser(), "", table, user_paths)
    sys.stdout.write(render(table, user_paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
