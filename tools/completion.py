"""Print bash completion for matrix-stack-admin, generated from its argparse tree.

Run at package build time (debian/rules), so the completion always matches --help.
"""

from __future__ import annotations

import argparse
import sys

from matrix_stack.cli import build_parser


def walk(parser: argparse.ArgumentParser, path: str, table: dict[str, list[str]]) -> None:
    """Fill table with 'command path' -> words that may follow it."""
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                walk(child, f"{path} {name}".strip(), table)
        else:
            words.extend(option for option in action.option_strings if option.startswith("--"))
    table[path] = sorted(set(words))


def render(table: dict[str, list[str]]) -> str:
    cases = "\n".join(
        f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(table.items())
    )
    return f"""# bash completion for matrix-stack-admin (generated from its --help; do not edit)
_matrix_stack_admin() {{
    local current path word words index
    current="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for ((index = 1; index < COMP_CWORD; index++)); do
        word="${{COMP_WORDS[index]}}"
        case "$word" in -*) continue ;; esac
        case " $(_matrix_stack_admin_words "$path") " in
            *" $word "*) path="${{path:+$path }}$word" ;;
        esac
    done
    words="$(_matrix_stack_admin_words "$path")"
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
    walk(build_parser(), "", table)
    sys.stdout.write(render(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
