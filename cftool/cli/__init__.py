"""The `cftool` command line: a thin Typer shell over the library. Only parsing, validation and printing here."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from cftool import __version__
from cftool.cli.common import console, set_quiet
from cftool.cli.completions import completion_command
from cftool.cli.continue_ import continue_command
from cftool.cli.evaluate import eval_command
from cftool.cli.files import export_command, import_command, inspect_command
from cftool.cli.finetune import finetune_command
from cftool.cli.interpolate import interpolate_command
from cftool.cli.merge import decouple_command, delta_apply_command, delta_command, unify_command
from cftool.cli.recipes import recipes_command
from cftool.cli.route import route_command
from cftool.errors import CftoolError
from cftool.io.command_files import CommandFiles, command_files


class _UntypedFlags:
    """`--help` without a type beside a flag: a flag takes no value, yet Typer would print `<bool>` there."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class Command(_UntypedFlags, TyperCommand):
    pass


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def _subcommand(function) -> TyperCommand:
    one_command = typer.Typer(add_completion=False, context_settings=HELP_OPTIONS)
    one_command.command(cls=Command)(function)
    return typer.main.get_command(one_command)


class Group(_UntypedFlags, TyperGroup):
    """The `cftool` group. ``subcommands`` are commands named by two words, such as `cftool delta apply`: each
    has its own options and `--help`, beside the one-word command (`cftool delta FILE`) that the first word names."""

    subcommands = {("delta", "apply"): _subcommand(delta_apply_command)}

    def resolve_command(self, ctx, args):
        subcommand = self.subcommands.get(tuple(args[:2]))
        if subcommand is not None:
            return " ".join(args[:2]), subcommand, args[2:]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="cftool",
    cls=Group,
    help="Checkpoint surgery for CLIP-style models: MergeTune continued fine-tuning and ConDU continual merging.\n\n"
    "Example: cftool eval --zs tiny --benchmark mtil-tiny",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=HELP_OPTIONS,
)
COMMANDS = {
    "finetune": finetune_command,
    "continue": continue_command,
    "delta": delta_command,
    "unify": unify_command,
    "decouple": decouple_command,
    "route": route_command,
    "eval": eval_command,
    "interpolate": interpolate_command,
    "inspect": inspect_command,
    "import": import_command,
    "export": export_command,
    "recipes": recipes_command,
    "completion": completion_command,
}
for name, function in COMMANDS.items():
    app.command(name, cls=Command)(function)


def _version(value: bool) -> None:
    if value:
        print(f"cftool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Checkpoint surgery for CLIP-style models: MergeTune continued fine-tuning and ConDU continual merging."""


def _user_message(err: CftoolError) -> str:
    """The error's own line. A DataLoader worker re-raises an error as "Caught CftoolError in DataLoader worker
    process N.", then the worker's traceback, ending with "cftool.errors.CftoolError: <the message>"."""
    message = str(err)
    if "\nOriginal Traceback" in message:
        return message.rstrip().splitlines()[-1].partition(": ")[2]
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line on stderr and give a non-zero exit code, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    files = CommandFiles()
    try:
        with command_files() as files, _interrupt_as(Interrupted), warnings.catch_warnings():
            result = app(args=argv, prog_name="cftool", standalone_mode=False)
    except Interrupted:
        _print_error(f"[red]interrupted[/red]: {_written_summary(files)}")
        return 130
    except CftoolError as err:
        _print_error(f"[red]error:[/red] {escape(_user_message(err))}")
        return err.exit_code
    except typer.TyperException as err:  # usage errors and bad parameters, as click reports them
        if not err.format_message():  # `cftool` alone: the help was the answer, there is no error to add
            return err.exit_code
        ctx = getattr(err, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        # Typer checks values with pydantic, which starts a check's own message with "Value error, ".
        message = err.format_message().replace("Value error, ", "")
        _print_error(f"[red]error:[/red] {escape(message)}{hint}")
        return err.exit_code
    finally:
        set_quiet(False)  # --quiet lasts one command (tests and scripts call main again); errors above still print
    return result if isinstance(result, int) else 0


def _print_error(line: str) -> None:
    set_quiet(False)  # errors print under --quiet too
    console.print(line)


class Interrupted(BaseException):
    """Ctrl-C outside training (which saves its state and stops itself). Not a KeyboardInterrupt, which click turns
    into a silent exit code: this one reaches `main`, which says what was and was not written."""


@contextmanager
def _interrupt_as(exception: type[BaseException]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def interrupt(signum, frame):
        raise exception

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _written_summary(files: CommandFiles) -> str:
    written = [path for path in files.written if path.exists()]  # half of a pair is removed with the other half
    if not written:
        return "nothing was written"
    return f"wrote {', '.join(str(path) for path in written)}; nothing else was written"


def run() -> None:
    sys.exit(main())
