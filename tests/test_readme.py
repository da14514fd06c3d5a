"""README.md stays true: its contents list is its headings, and its commands name real commands and options."""

import re
import shlex
from pathlib import Path

import pytest
import typer

from cftool.cli import app
from cftool.options import MERGE_METHODS, MERGE_OPTION_FLAGS

README = Path(__file__).parent.parent / "README.md"


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than '-' dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_contents_list_every_heading_in_order():
    text = README.read_text()
    contents = text.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^( *)- \[(.+)\]\(#(.+)\)$", contents, flags=re.MULTILINE)
    body = text.split("## Contents\n", 1)[1].split("\n## ", 1)[1]
    headings = re.findall(r"^(##+) (.+)$", "## " + body, flags=re.MULTILINE)
    assert [(len(indent) // 2 + 2, title, anchor) for indent, title, anchor in listed] == [
        (len(marks), title, _anchor(title)) for marks, title in headings
    ]


def _commands() -> list[list[str]]:
    """Every `cftool …` line of the README's bash blocks (continuations joined, comments dropped), as words."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and (words[0] in ("torchrun", "-m") or words[0].startswith(("--nproc", "HF_HUB_OFFLINE="))):
            words = words[1:]
        if words and words[0] == "cftool":
            commands.append(words)
    return commands


def test_readme_commands_name_real_commands_and_options():
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="cftool")
    commands = _commands()
    assert len(commands) > 30
    for words in commands:
        if len(words) == 1 or words[1].startswith("-"):
            continue
        command = group.get_command(ctx, words[1])
        assert command is not None, words
        options = {name for param in command.get_params(ctx) for name in [*param.opts, *param.secondary_opts]}
        for word in words[2:]:
            if word.startswith("-") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", word):
                assert word.split("=")[0] in options, f"{word} is no option of `cftool {words[1]}`: {shlex.join(words)}"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_readme_says_how_to_install_completion(shell):
    assert f"cftool completion {shell}" in README.read_text()


def _same_value(stated: str, default: object) -> bool:
    return float(stated) == default if isinstance(default, (int, float)) else stated == default


def test_merge_method_table_states_each_method_and_its_defaults():
    """The README's table of `unify` methods repeats each method's option defaults for the reader: they must not drift
    from cftool.options."""
    table = README.read_text().split("| `--method` | result | options |", 1)[1].split("\n\n", 1)[0]
    cell = r"(?:[^|\\]|\\.)*"  # a cell's text, where `\|` is a pipe inside it
    row = rf"^ *\| `([\w-]+)`(?: \(default\))? \| {cell} \| ({cell}) \|$"
    rows = dict(re.findall(row, table, flags=re.MULTILINE))
    assert list(rows) == list(MERGE_METHODS)
    for name, method in MERGE_METHODS.items():
        # `--keep` 0.2, `--trim global` (...): a flag's value follows it inside or after its backquotes.
        stated = {
            flag: inline or after for flag, inline, after in re.findall(r"`(--[\w-]+) ?([^`]*)` ?([\d.]*)", rows[name])
        }
        flags = {MERGE_OPTION_FLAGS[option].flag: default for option, default in method.options.items()}
        assert stated.keys() == flags.keys(), name
        assert all(_same_value(stated[flag], default) for flag, default in flags.items()), (name, stated)
