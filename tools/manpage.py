"""Print matrix-stack-admin(8): doc/matrix-stack-admin.8.in with its commands from argparse.

Run at package build time (debian/rules), so the man page always matches --help: the
SYNOPSIS, OPTIONS and COMMANDS sections are generated from the argparse tree (each command's
description, else its help, then its epilog, then its arguments' help); the rest of the page
is the template's prose. The date is SOURCE_DATE_EPOCH's, else the latest debian/changelog
entry's, so that the build is reproducible.
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "doc" / "matrix-stack-admin.8.in"
CHANGELOG_PATH = ROOT / "debian" / "changelog"
PLACEHOLDER = re.compile(r"@([A-Z]+)@")
# Option names in prose (--password-file, --signal=USR2) are set in bold.
OPTION_IN_TEXT = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


@dataclass(frozen=True)
class Command:
    """One command of the tree: its words after the program name, parser and one-line help."""

    path: str
    parser: argparse.ArgumentParser
    summary: str | None
    depth: int


def escape(text: str) -> str:
    """Return text for a roff line: backslashes, minus signs and non-ASCII escaped."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "".join(char if ord(char) < 128 else f"\\[u{ord(char):04X}]" for char in escaped)


def bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{escape(text)}\\fR"


def text_line(text: str) -> str:
    """Return prose as one roff text line: escaped, options in bold, a leading . or ' kept."""
    words = " ".join(text.split())
    line = "".join(
        bold(part) if index % 2 else escape(part)
        for index, part in enumerate(OPTION_IN_TEXT.split(words))
    )
    return f"\\&{line}" if line.startswith((".", "'")) else line


def expand(text: str, prog: str) -> str:
    """Return a description or epilog with %(prog)s filled in, as argparse does."""
    return text % {"prog": prog} if "%(prog)" in text else text


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """Return an argument's help exactly as --help expands it (%(default)s, %(metavar)s ...)."""
    return parser._get_formatter()._expand_help(action)


def subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    """Yield each subcommand of parser (aliases once): name, parser and help line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield name, child, helps.get(name)


def walk(parser: argparse.ArgumentParser, path: str = "", depth: int = 0) -> Iterator[Command]:
    """Yield every command below parser, each before its own subcommands."""
    for name, child, summary in subcommands(parser):
        command = Command(f"{path} {name}".strip(), child, summary, depth + 1)
        yield command
        yield from walk(child, command.path, depth + 1)


def arguments(parser: argparse.ArgumentParser, *, with_help: bool = False
              ) -> list[argparse.Action]:
    """Return the documented arguments of parser, positionals first, and no subcommands.

    -h/--help is left out unless with_help: every command has it, OPTIONS says so once.
    """
    shown = [
        action for action in parser._actions
        if action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._SubParsersAction)
        and (with_help or not isinstance(action, argparse._HelpAction))
    ]
    return [action for action in shown if not action.option_strings] + [
        action for action in shown if action.option_strings
    ]


def format_value(action: argparse.Action) -> str:
    """Return the value(s) an argument takes: its metavar in italics, or its choices in bold."""
    if action.choices is not None and (not action.option_strings or action.metavar is None):
        value = " | ".join(bold(str(choice)) for choice in action.choices)
    else:
        metavar = action.metavar or (action.dest if not action.option_strings
                                     else action.dest.upper())
        names = metavar if isinstance(metavar, tuple) else (metavar,)
        value = " ".join(italic(name) for name in names)
    if action.nargs == argparse.OPTIONAL:
        return f"[{value}]"
    if action.nargs == argparse.ONE_OR_MORE:
        return f"{value} ..."
    if action.nargs == argparse.ZERO_OR_MORE:
        return f"[{value} ...]"
    if isinstance(action.nargs, int) and action.nargs > 1:
        return " ".join([value] * action.nargs)
    return value


def format_argument(action: argparse.Action, *, in_group: bool = False) -> str:
    """Return one argument as the SYNOPSIS shows it: [--name VALUE], or the positional."""
    if not action.option_strings:
        return format_value(action)
    name = next((option for option in action.option_strings if option.startswith("--")),
                action.option_strings[0])
    # A no-break space: an option stays on one line with its value and brackets.
    text = bold(name) if action.nargs == 0 else f"{bold(name)}\\ {format_value(action)}"
    return text if action.required or in_group else f"[{text}]"


def format_usage(parser: argparse.ArgumentParser) -> str:
    """Return the arguments of a command line: positionals, then options, groups as [a | b]."""
    groups = {
        id(action): group
        for group in parser._mutually_exclusive_groups
        for action in group._group_actions
    }
    words: list[str] = []
    done: set[int] = set()
    for action in arguments(parser):
        group = groups.get(id(action))
        if group is None:
            words.append(format_argument(action))
        elif id(group) not in done:
            done.add(id(group))
            members = "\\ |\\ ".join(format_argument(member, in_group=True)
                                 for member in group._group_actions
                                 if member.help != argparse.SUPPRESS)
            words.append(f"({members})" if group.required else f"[{members}]")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            words.append(f"{italic(str(action.metavar or action.dest.upper()))} ...")
    return " ".join(words)


def render_synopsis(parser: argparse.ArgumentParser, prog: str) -> str:
    """Return one line for the program's own options and one per command that can run."""
    lines = [".PD 0", f".SY {escape(prog)}", format_usage(parser), ".YS"]
    for command in walk(parser):
        has_subcommands = any(True for _ in subcommands(command.parser))
        if not has_subcommands or arguments(command.parser):
            usage = format_usage(command.parser)
            lines += [f".SY {escape(prog)}", f"{bold(command.path)} {usage}".rstrip(), ".YS"]
    return "\n".join([*lines, ".PD"])


def entry_label(action: argparse.Action) -> str:
    """Return the tag of an argument's entry: all its option names, then its value."""
    if not action.option_strings:
        return italic(action.metavar) if isinstance(action.metavar, str) else format_value(action)
    names = ", ".join(bold(option) for option in action.option_strings)
    return names if action.nargs == 0 else f"{names} {format_value(action)}"


def render_arguments(parser: argparse.ArgumentParser, *, with_help: bool = False) -> list[str]:
    """Return a tagged paragraph for each argument of parser, with its help."""
    lines: list[str] = []
    for action in arguments(parser, with_help=with_help):
        lines += [".TP", entry_label(action)]
        if action.help:
            lines.append(text_line(help_text(parser, action)))
    return lines


def paragraphs(command: Command) -> list[str]:
    """Return a command's description (else its help line), then its epilog."""
    texts = [command.parser.description or command.summary, command.parser.epilog]
    return [text_line(expand(text, command.parser.prog)) for text in texts if text]


def render_command(command: Command) -> list[str]:
    """Return a command's entry: a subsection for a top-level one, else a tagged paragraph."""
    children = [Command(f"{command.path} {name}", child, summary, command.depth + 1)
                for name, child, summary in subcommands(command.parser)]
    texts = paragraphs(command)
    if command.depth == 1:
        lines = [f".SS {escape(command.path)}"]
        for index, text in enumerate(texts):
            lines += [".PP", text] if index else [text]
        lines += render_arguments(command.parser)
        for child in children:
            lines += render_command(child)
        return lines
    positionals = [format_value(action) for action in arguments(command.parser)
                   if not action.option_strings]
    lines = [".TP", " ".join([bold(command.path), *positionals])]
    for index, text in enumerate(texts):
        lines += [".IP", text] if index else [text]
    inner = render_arguments(command.parser)
    for child in children:
        inner += render_command(child)
    return lines + ([".RS", *inner, ".RE"] if inner else [])


def render_commands(parser: argparse.ArgumentParser) -> str:
    """Return the COMMANDS section's body: every top-level command with what is below it."""
    lines: list[str] = []
    for name, child, summary in subcommands(parser):
        lines += render_command(Command(name, child, summary, 1))
    return "\n".join(lines)


def page_date(environ: Mapping[str, str], changelog: Path = CHANGELOG_PATH) -> str:
    """Return the page's date: SOURCE_DATE_EPOCH's, else the latest changelog entry's."""
    epoch = environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
    else:
        trailer = re.search(r"^ -- .*?>  (.+)$", changelog.read_text(encoding="utf-8"), re.M)
        if trailer is None:
            raise SystemExit(f"{changelog}: no entry with a date")
        moment = email.utils.parsedate_to_datetime(trailer.group(1)).astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%d")


def fill(template: str, values: Mapping[str, str]) -> str:
    """Return template with each @NAME@ replaced; an unknown placeholder is an error."""
    def value(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise SystemExit(f"{TEMPLATE_PATH.name}: unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    return PLACEHOLDER.sub(value, template)


def render_page(parser: argparse.ArgumentParser, template: str, date: str, version: str) -> str:
    """Return the man page: the template with its generated sections filled in."""
    return fill(template, {
        "DATE": date,
        "VERSION": version,
        "SYNOPSIS": render_synopsis(parser, parser.prog),
        "OPTIONS": "\n".join(render_arguments(parser, with_help=True)),
        "COMMANDS": render_commands(parser),
    })


def main() -> int:
    from matrix_stack import __version__
    from matrix_stack.cli.main import build_parser

    template = TEMPLATE_PATH.read_text(encoding="utf-8")
    sys.stdout.write(render_page(build_parser(), template, page_date(os.environ), __version__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
