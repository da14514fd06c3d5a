"""Static shell completion scripts generated from the app's command tree.

`python -m cftool.cli.completions DIR` (or `make completions`) writes DIR/cftool.{bash,zsh,fish}; a test fails
when the committed scripts differ from what the current app generates.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from cftool.cli import app
from cftool.io.header import one_line

HEADER = "cftool shell completion, generated from the CLI by `make completions`; do not edit."


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    help: str
    takes_value: bool


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    flags: tuple[Flag, ...]


def command_tree(app: typer.Typer) -> list[Command]:
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="cftool")
    commands = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        flags = tuple(
            Flag(tuple(p.opts + p.secondary_opts), one_line(p.help or ""), not p.is_flag)
            for p in command.get_params(ctx)
            if isinstance(p, typer.core.TyperOption)
        )
        commands.append(Command(name, one_line(command.get_short_help_str(limit=80)), flags))
    return commands


def _clean(text: str) -> str:
    """Drop the characters that single quotes or zsh's _arguments specs would read as syntax."""
    return re.sub(r"[\[\]:'`$\\]", "", text)


def _quote(text: str) -> str:
    return f"'{_clean(text)}'"


def bash_script(commands: list[Command]) -> str:
    cases = "\n".join(
        f"        {c.name}) opts={_quote(' '.join(n for f in c.flags for n in f.names))} ;;" for c in commands
    )
    names = " ".join(c.name for c in commands)
    return f"""# {HEADER}
_cftool() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} opts=""
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W "{names} --help --version" -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _cftool cftool
"""


def zsh_script(commands: list[Command]) -> str:
    described = "\n".join(f"        '{c.name}:{_clean(c.help)}'" for c in commands)
    cases = []
    for c in commands:
        specs = []
        for f in c.flags:
            value = ":value:_files" if f.takes_value else ""
            for name in f.names:
                specs.append(f"'{name}[{_clean(f.help)}]{value}'")
        specs.append("'*:file:_files'")
        cases.append(f"        {c.name}) _arguments {' '.join(specs)} ;;")
    case_text = "\n".join(cases)
    return f"""#compdef cftool
# {HEADER}
_cftool() {{
    local -a commands
    commands=(
{described}
    )
    if (( CURRENT == 2 )); then
        _describe 'command' commands
        return
    fi
    shift words
    (( CURRENT-- ))
    case $words[1] in
{case_text}
    esac
}}
_cftool "$@"
"""


def fish_script(commands: list[Command]) -> str:
    lines = [f"# {HEADER}", "complete -c cftool -f"]
    for c in commands:
        lines.append(f"complete -c cftool -n __fish_use_subcommand -a {c.name} -d {_quote(c.help)}")
    for c in commands:
        for f in c.flags:
            opts = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in f.names)
            value = " -r -F" if f.takes_value else ""
            lines.append(
                f"complete -c cftool -n '__fish_seen_subcommand_from {c.name}' {opts}{value} -d {_quote(f.help)}"
            )
    return "\n".join(lines) + "\n"


SCRIPTS = {"cftool.bash": bash_script, "_cftool.zsh": zsh_script, "cftool.fish": fish_script}


def render_all() -> dict[str, str]:
    commands = command_tree(app)
    return {name: render(commands) for name, render in SCRIPTS.items()}


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "completions")
