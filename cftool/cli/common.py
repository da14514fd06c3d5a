"""What every command shares: the stdout and stderr consoles, `--config` YAML, `--device`, `--seed`, `--format`,
`--quiet`, outputs.

Command modules import torch, open_clip and the library inside the command functions, not at the top: `--help`,
shell completion and the commands that only move tensors do not pay for what they do not use. The names and defaults
the options offer come from `cftool.options`, which the library takes them from too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, Task, TextColumn, TimeRemainingColumn

from cftool.cli.render import FORMATS
from cftool.errors import CftoolError
from cftool.options import AUTO_DEVICE, BF16, DEVICES, FP16, FP32, MTIL_DATA

if TYPE_CHECKING:
    import torch

# Results (tables, JSON) go to stdout, so that `cftool eval … > results.txt` and `cftool inspect f | grep` hold
# them; progress, warnings, "wrote X" and errors go to stderr (`console`), which --quiet silences except errors.
# Soft wrap: a line naming a file stays one line that can be copied, whatever the terminal's width. Written to a log,
# a file or a pipe (CI, `2>&1 | tee`), where there is no terminal width, rich would squeeze tables into 80 columns and
# cut their headers to "zer…": there a table keeps its natural width, unless $COLUMNS says otherwise.
_UNBOUNDED_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else _UNBOUNDED_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


console = _console(stderr=True)
results = _console(stderr=False)


def one_of(names: Iterable[str]) -> Any:
    """The type of an option that takes one of ``names``: `--help` lists them, shell completion offers them, and any
    other value is a usage error (exit code 2) that names them."""
    return Literal[tuple(names)]


def given(ctx: typer.Context, names: Iterable[str]) -> list[str]:
    """The parameters among ``names`` that were given (on the command line, in --config or by --recipe), not left at
    their defaults."""
    return [name for name in names if ctx.get_parameter_source(name).name != "DEFAULT"]


def defaults_by(values: dict[str, Any]) -> str:
    """A default that depends on something else, as `--help` shows it: ``coop 0.002, head 0.001``."""
    return ", ".join(
        f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}" for key, value in values.items()
    )


def load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """`--config` callback: YAML keys become the command's defaults, so flags given on the line win.

    Not eager, so that `--help` (eager) answers before any file is read. Click processes the parameters given on the
    line in their order and those not given last: the file's defaults are set before any parameter that takes one."""
    if value is None:
        return None
    try:
        data = yaml.safe_load(value.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise typer.BadParameter(f"cannot read {value}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise typer.BadParameter(f"{value} is not UTF-8 text (byte {err.start}); save the YAML file as UTF-8") from err
    except RecursionError:  # PyYAML parses nested collections recursively
        raise typer.BadParameter(
            f"{value} nests lists or mappings deeper than Python can parse; an option's value is a number, a string or "
            "a flat list"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise typer.BadParameter(f"{value} is not valid YAML{where}") from err
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value} must be a mapping of option names to values")
    for key, item in data.items():
        # A value nested in another (YAML aliases can nest one 10^9 times in a few lines) is no option's value.
        if isinstance(item, dict) or (isinstance(item, list) and any(isinstance(entry, list | dict) for entry in item)):
            raise typer.BadParameter(
                f"{value}: {key!r} holds nested lists or mappings; an option's value is a number, a string or a "
                "flat list"
            )
    keys = _set_defaults(ctx, str(value), data, keep=set())
    ctx.meta[_CONFIG_KEYS] = keys  # a recipe read after this file leaves these alone
    return value


_CONFIG_KEYS = "cftool.config_keys"
_RECIPE = "cftool.recipe"


def _set_defaults(ctx: typer.Context, source: str, data: dict, keep: set[str]) -> set[str]:
    """Make ``data``'s keys the command's defaults, except the parameters in ``keep``; returns the parameters set.
    A key is an option's long flag without dashes (`batch-size`, `json`) or its parameter name (`batch_size`)."""
    param_of_key, listed = {}, set()
    for param in ctx.command.params:
        if param.name in ("config", "recipe"):
            continue
        # What --help shows: the long flags of options, the names of arguments (their parameter names also work).
        shown = [flag for flag in param.opts if flag.startswith("--")] if param.param_type_name == "option" else []
        listed.update(flag.lstrip("-") for flag in shown or [param.name.replace("_", "-")])
        for flag in [*param.opts, param.name]:
            if not flag.startswith("-") or flag.startswith("--"):
                param_of_key[flag.lstrip("-").replace("-", "_")] = param.name
    config = {str(key).replace("-", "_"): item for key, item in data.items()}
    unknown = sorted(set(config) - set(param_of_key))
    if unknown:
        valid = ", ".join(sorted(listed))
        raise typer.BadParameter(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {valid}")
    defaults = {param_of_key[key]: item for key, item in config.items() if param_of_key[key] not in keep}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return set(defaults)


def load_recipe_option(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """`--recipe` callback (not eager, as `--config`): the recipe's options become the command's defaults, beneath
    `--config`'s, whichever of the two comes first on the line."""
    if value is None:
        return None
    from cftool.recipes import load_recipe

    recipe = load_recipe(value)
    if recipe.command != ctx.command.name:
        raise typer.BadParameter(f"{value} is a recipe for `cftool {recipe.command}`, not `cftool {ctx.command.name}`")
    _set_defaults(ctx, f"recipe {value}", recipe.options, keep=ctx.meta.get(_CONFIG_KEYS, set()))
    ctx.meta[_RECIPE] = recipe
    return value


def recipe_lr(ctx: typer.Context, data: str | None, lr: float | None) -> float | None:
    """``lr``, or the learning rate the recipe gives ``data``'s dataset where ``lr`` is the recipe's own (the
    official scripts give some MTIL datasets their own rate: Aircraft and MNIST in ZSCL's)."""
    recipe = ctx.meta.get(_RECIPE)
    source = ctx.get_parameter_source("lr")
    from_recipe = source is not None and source.name == "DEFAULT_MAP" and "lr" not in ctx.meta.get(_CONFIG_KEYS, ())
    kind, _, name = (data or "").partition(":")
    if recipe is None or not from_recipe or kind != MTIL_DATA:
        return lr
    from cftool.data.mtil.readers import mtil_name

    return recipe.lr_for(mtil_name(name) or "") or lr


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file whose keys are this command's options (flags given on the command line win).",
        callback=load_config,
        dir_okay=False,
    ),
]


def recipe_names() -> tuple[str, ...]:
    """The official recipes, the names of their files: listed without reading them (and without importing torch)."""
    from cftool import recipes

    return tuple(recipes.recipe_names())


# Every recipe is a choice of both commands' --recipe, so that one for the other command is refused by saying so.
RecipeOption = Annotated[
    one_of(recipe_names()) | None,
    typer.Option(
        "--recipe",
        help="An official paper recipe for this command, as its defaults (--config and flags on the line win); "
        "`cftool recipes` lists each with its command and sources.",
        callback=load_recipe_option,
    ),
]


DeviceOption = Annotated[
    str,
    typer.Option(
        "--device", help=f"{', '.join(DEVICES)} or cuda:N; {AUTO_DEVICE} is the first GPU torch sees, else the CPU."
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON alone on stdout (= --format json).")]
FormatOption = Annotated[
    one_of(FORMATS),
    typer.Option(
        "--format",
        help="How results are printed on stdout: table (the terminal's), markdown, latex (booktabs), csv or json.",
    ),
]


def set_quiet(quiet: bool) -> bool:
    """`--quiet` callback: stderr keeps only errors (no progress, warnings or "wrote X" lines)."""
    console.quiet = quiet
    logging.getLogger().setLevel(logging.ERROR if quiet else logging.WARNING)
    if quiet:
        warnings.simplefilter("ignore")  # `main` restores the filters after the command
    return quiet


QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print results alone: no progress, warnings or 'wrote' lines (errors still print).",
        callback=set_quiet,
    ),
]


def results_format(fmt: str, json_output: bool) -> str:
    """The `--format` asked for, `--json` being `--format json`."""
    if json_output and fmt not in ("table", "json"):
        raise CftoolError(f"--json is --format json; drop it or --format {fmt}")
    return "json" if json_output else fmt


def emit_results(tables: list, fmt: str, payload: Any, primary: int = -1) -> None:
    """Results on stdout in ``fmt``: the ResultTables as the terminal's tables (then their notes), markdown, LaTeX or
    CSV (the ``primary`` table alone), or ``payload`` as JSON."""
    from cftool.cli.render import render_text, rich_table

    if fmt == "json":
        emit_json(payload)
    elif fmt == "table":
        for table in tables:
            results.print(rich_table(table))
            for note in table.notes:
                results.print(note, markup=False)
    else:
        sys.stdout.write(render_text(tables, fmt, primary))
        sys.stdout.flush()


ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
PrototypesOption = Annotated[
    bool,
    typer.Option(
        "--prototypes/--no-prototypes",
        help="Write the task's class prototypes beside the checkpoint, for `route` and task-agnostic `eval`: one "
        "pass of the zero-shot model over the whole training split, whatever --shots is.",
    ),
]
DataRootOption = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="Folder holding real datasets (CoOp's layout, MTIL's folders).",
        show_default="$CFTOOL_DATA_ROOT, then ./data",
    ),
]
DTYPES = (FP32, FP16, BF16)
Dtype = one_of(DTYPES)


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype a `--dtype` names (None: keep each tensor's own)."""
    if name is None:
        return None
    import torch

    return {FP32: torch.float32, FP16: torch.float16, BF16: torch.bfloat16}[name]


BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
# Each worker is a process holding a copy of the dataset reader: a typo (--workers 100000) would fork without end.
# The default (cftool.options.WORKERS, the same in every command) says why it is 0.
MAX_WORKERS = 256
WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        max=MAX_WORKERS,
        help="Processes that read and decode images beside the command's own (0: the command reads them itself); "
        "worth the CPU cores on real image folders.",
    ),
]


def resolve_device(name: str) -> torch.device:
    import torch

    if name == AUTO_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CftoolError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CftoolError(f"--device {name}: no CUDA device is available here; use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise CftoolError(f"--device {name}: only cpu and cuda are supported")
    return device


def seed_everything(seed: int) -> None:
    import torch

    from cftool.data.specs import check_seed

    check_seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def strict_json(payload: Any) -> str:
    """JSON as the standard defines it: a NaN or infinite number (an empty split's accuracy, a diverged loss) is
    written as null, never as Python's NaN/Infinity, which strict parsers reject."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(payload), indent=2, allow_nan=False) + "\n"


def emit_json(payload: Any) -> None:
    sys.stdout.write(strict_json(payload))
    sys.stdout.flush()


def write_json(path: Path, payload: Any, overwrite: bool) -> None:
    from cftool.io.outputs import atomic_output

    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(strict_json(payload))


# Where stderr is not a terminal (a log file, a pipe, a batch scheduler's output), long loops print a plain line every
# --log-every steps or batches, and at the latest every LOG_SECONDS (a ViT-B/16 step or batch on a CPU takes seconds).
DEFAULT_LOG_EVERY = 50
LOG_SECONDS = 30.0
LogEveryOption = Annotated[
    int,
    typer.Option(
        "--log-every",
        min=1,
        help="Where stderr is not a terminal (a log, a pipe, sbatch, nohup): a progress line every N steps "
        "(eval: batches), and at least every 30 s.",
    ),
]


class LoggedProgress(Progress):
    """rich's transient bar on an interactive console. Elsewhere no bar at all (a stopped bar would leave a blank line
    and control characters in a log) but plain lines (`progress_line`) as each phase advances.

    ``log_every`` None: only the time floor (``LOG_SECONDS``), so that the quick loops of commands without --log-every
    stay silent in a log."""

    def __init__(self, *columns, log_every: int | None, **kwargs):
        super().__init__(*columns, disable=not console.is_interactive or console.quiet, **kwargs)
        self.log_every = log_every
        self._lines: dict[int, tuple[int, float]] = {}  # task -> (advances since its last line, time of that line)

    def add_task(self, description: str, *args, unit: str = "", **kwargs) -> int:
        """``unit``: what the phase counts, named in its lines: ``images``, ``step`` (training, whose advances also
        give ``loss`` and ``speed``, its images per second, as fields) or nothing."""
        task = super().add_task(description, *args, label=description, unit=unit, **kwargs)
        self._lines[task] = (0, time.monotonic())
        return task

    def advance(self, task_id: int, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id, advance)

    def update(self, task_id: int, *, advance: float | None = None, **kwargs) -> None:
        super().update(task_id, advance=advance, **kwargs)
        if advance:
            self._maybe_log(task_id, advance)

    def _maybe_log(self, task_id: int, amount: float) -> None:
        if not self.disable or not amount:
            return
        advances, last = self._lines[task_id]
        advances += 1
        now = time.monotonic()
        due = now - last >= LOG_SECONDS or (self.log_every is not None and advances >= self.log_every)
        self._lines[task_id] = (0, now) if due else (advances, last)
        if due:
            console.print(progress_line(self._tasks[task_id]), markup=False)


def progress_line(task: Task) -> str:
    """``train coop (cross-entropy): step 50/200, loss 1.1208, 691 img/s, ETA 0:00:07, elapsed 0:00:02`` or
    ``encode images: 12,800 images, 410 img/s, elapsed 0:00:31`` (the ETA where the total is known)."""
    fields, unit = task.fields, task.fields["unit"]
    count = f"{task.completed:,.0f}" + (f"/{task.total:,.0f}" if task.total is not None else "")
    parts = [f"{unit} {count}" if unit == "step" else f"{count} {unit}".rstrip()]
    if fields.get("loss") is not None:
        parts.append(f"loss {fields['loss']:.4f}")
    if fields.get("speed") is not None:
        parts.append(f"{rate(fields['speed'])} img/s")
    elif task.speed is not None:
        parts.append(f"{rate(task.speed)} {'img' if unit == 'images' else unit or 'it'}/s")
    if task.time_remaining is not None and not task.finished:
        parts.append(f"ETA {timedelta(seconds=round(task.time_remaining))}")
    parts.append(f"elapsed {timedelta(seconds=round(task.finished_time or task.elapsed or 0))}")
    return f"{fields['label']}: " + ", ".join(parts)


def rate(per_second: float) -> str:
    """A rate that stays meaningful below 1/s (a ViT-B/16 step on a CPU): 2,585 and 41 but 0.412."""
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def progress_task_starter(progress: Progress) -> Callable[[str, int | None], Callable[..., None]]:
    """The library's ``begin(description, total)`` on ``progress``: a task per phase, counted in images where images
    are encoded; it returns the task's ``advance(n=1)``."""

    def begin(description: str, total: int | None) -> Callable[..., None]:
        task = progress.add_task(description, total=total, unit="images" if description == "encode images" else "")
        return lambda n=1: progress.advance(task, n)

    return begin


def progress_bar(log_every: int | None = None) -> Progress:
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        log_every=log_every,
    )
