"""`cftool delta`, `unify` and `decouple`: task deltas, merging them, and rebuilding task experts.

These commands only move tensors: they import neither open_clip (unless `--zs` names a pretrained tag) nor the
training code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cftool.cli.common import (
    ConfigOption,
    Dtype,
    ForceOption,
    FormatOption,
    JsonOption,
    QuietOption,
    console,
    defaults_by,
    emit_json,
    emit_results,
    given,
    one_of,
    progress_bar,
    results_format,
    torch_dtype,
)
from cftool.cli.files import ZS_HELP, OutputOption
from cftool.cli.render import Column, ResultTable
from cftool.errors import CftoolError
from cftool.io.header import DELTA_KIND, LORA_KIND, MODEL_KIND, UNIFIED_KIND
from cftool.options import MERGE_METHOD, MERGE_METHODS, MERGE_OPTION_FLAGS

if TYPE_CHECKING:
    from cftool.merge.engine import UnifyResult

ZsOption = Annotated[str | None, typer.Option("--zs", help=ZS_HELP, show_default="the one the file records")]

# The kinds `decouple --as` writes: a condu set's experts as delta or model, a condu-lora set's as lora or model.
EXPERT_KINDS = (DELTA_KIND, MODEL_KIND, LORA_KIND)


def with_merge_options(command: Callable) -> Callable:
    """``command`` with a flag for each merge method's option (``MERGE_OPTION_FLAGS``) in place of its
    ``**merge_options``, after its ``--replace``: Typer reads a command's options from its signature, so a new option
    of a merge method is a new entry of cftool.options, not a new parameter here.

    Each flag defaults to None (the method's own default, listed per method in `--help`), so that a flag given to a
    method that does not take it is refused rather than ignored."""
    signature = inspect.signature(command, eval_str=True)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    after = next(index for index, p in enumerate(parameters) if p.name == "replace") + 1
    flags = []
    for field, option in MERGE_OPTION_FLAGS.items():
        defaults = {name: method.options[field] for name, method in MERGE_METHODS.items() if field in method.options}
        kind = one_of(option.choices) if option.choices else type(next(iter(defaults.values())))
        declared = typer.Option(
            option.flag, help=f"{', '.join(defaults)}: {option.help}", show_default=defaults_by(defaults)
        )
        annotation = Annotated[kind | None, declared]
        flags.append(inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    keyword_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters[after:]]
    command.__signature__ = signature.replace(parameters=[*parameters[:after], *flags, *keyword_only])
    return command


def _reporter(progress):
    def begin(description: str, total: int):
        task = progress.add_task(description, total=total)
        return lambda n=1: progress.advance(task, n)

    return begin


def delta_command(
    checkpoint: Annotated[Path, typer.Argument(help="A fine-tuned `model` or `lora` checkpoint.", show_default=False)],
    output: OutputOption,
    zs: ZsOption = None,
    dtype: Annotated[
        Dtype | None, typer.Option("--dtype", help="The delta's dtype.", show_default="the checkpoint's")
    ] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """The task delta of a fine-tuned checkpoint: its weights minus its base's. `cftool delta apply` adds a delta
    back to its base (see `cftool delta apply --help`).

    The base is --zs, or the one the file records. `lora` checkpoints are merged into the weights first;
    `prompt` and `head` checkpoints hold no weights of the model and have no delta.

    Example: cftool delta full-food.safetensors --zs tiny -o deltas/food.safetensors
    """
    from cftool.io.checkpoint import open_checkpoint
    from cftool.merge.delta import make_delta
    from cftool.zoo.base import resolve_base
    from cftool.zoo.base_weights import open_base

    wanted_dtype = torch_dtype(dtype)
    with open_base(resolve_base(zs, checkpoint)) as base, open_checkpoint(checkpoint) as source:
        written = make_delta(source, base, output, wanted_dtype, overwrite=force)
    _print_written_delta(written, DELTA_KIND, base.canonical, json_output)


def delta_apply_command(
    delta: Annotated[Path, typer.Argument(help="A `delta` file (from `cftool delta` or `unify`).", show_default=False)],
    output: OutputOption,
    zs: ZsOption = None,
    scale: Annotated[float, typer.Option("--scale", help="The multiple of the delta added to the base.")] = 1.0,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Add a task delta back to its base: writes a `model` file, the base's weights plus --scale times the delta, in
    the base's dtypes.

    The base is --zs, or the one the delta records; a delta made from other base weights is refused.

    Example: cftool delta apply deltas/food.safetensors --zs tiny --scale 0.5 -o food-half.safetensors
    """
    from cftool.io.checkpoint import open_checkpoint
    from cftool.merge.delta import apply_delta
    from cftool.zoo.base import resolve_base
    from cftool.zoo.base_weights import open_base

    with open_base(resolve_base(zs, delta)) as base, open_checkpoint(delta, kind=DELTA_KIND) as source:
        written = apply_delta(source, base, output, scale, overwrite=force)
    _print_written_delta(written, MODEL_KIND, base.canonical, json_output)


def _print_written_delta(written: Path, kind: str, base: str, json_output: bool) -> None:
    console.print(f"wrote {written} ({kind}, base {base})")
    if json_output:
        emit_json({"output": str(written), "kind": kind, "base": base})


@with_merge_options
def unify_command(
    ctx: typer.Context,
    deltas: Annotated[
        list[Path],
        typer.Argument(help="Delta files, one per task (e.g. deltas/*.safetensors); condu-lora: lora checkpoints."),
    ],
    output: OutputOption,
    method: Annotated[one_of(MERGE_METHODS), typer.Option("--method", help="How to merge.")] = MERGE_METHOD,
    into: Annotated[
        Path | None,
        typer.Option(
            "--into",
            help="A previous unified set: decouple its experts, add the deltas, unify again (a continual session).",
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="--into: a delta of a task the set holds replaces its expert.")
    ] = False,
    force: ForceOption = False,
    json_output: JsonOption = False,
    output_format: FormatOption = "table",
    quiet: QuietOption = False,
    config: ConfigOption = None,
    **merge_options: Any,  # one flag per merge option, declared by ``with_merge_options``
) -> None:
    """Merge task deltas: a ConDU unified set (unified delta + a 1-bit mask and a rescaler per task) or one delta.

    Streams tensors: memory is a few tensor slices per input, never whole models. `--method condu` writes a
    `unified` file that `decouple` rebuilds each task's expert from; the other methods write one `delta`.

    LoRA, two ways: `--method condu-lora` takes the tasks' `lora` checkpoints and unifies their factors A and B
    (the reference ConDU-LoRA: its experts decouple back into lora factors); `--method condu` over `cftool delta`
    of lora checkpoints unifies the updates the factors make to the weights instead (cftool's own, weight space).

    Example: cftool unify deltas/*.safetensors -o unified.st

    Example: cftool unify --into session1.st deltas/cars.safetensors -o session2.st

    Example: cftool unify --method condu-lora lora/food.safetensors lora/cars.safetensors -o unified-lora.st
    """
    from contextlib import ExitStack

    from cftool.merge.engine import continual_inputs, open_deltas, open_loras, open_previous, unify
    from cftool.merge.methods import get_method

    fmt = results_format(output_format, json_output)
    merge = get_method(method)
    options = merge.make_options(**{field: merge_options[field] for field in given(ctx, merge_options)})
    if into is not None and not merge.writes_triggers:
        raise CftoolError(f"--into continues a ConDU unified set; it needs --method condu or condu-lora, not {method}")
    if replace and into is None:
        raise CftoolError("--replace applies with --into PREVIOUS")
    with ExitStack() as stack:
        previous = open_previous(into, stack) if into is not None else None
        factor_base = previous.factor_bases() if previous is not None else {}
        inputs = open_loras(deltas, stack, factor_base) if merge.inputs == LORA_KIND else open_deltas(deltas, stack)
        if previous is not None:
            inputs = continual_inputs(previous, inputs, replace)
        with progress_bar() as progress:
            result = unify(
                inputs, merge, options, output, overwrite=force, progress=_reporter(progress), factor_base=factor_base
            )
    emit_results(_unify_tables(result), fmt, result.to_json())
    _print_written(result)


def _unify_tables(result: UnifyResult) -> list[ResultTable]:
    """A unified set's tasks with their rescalers and mask densities; a single merged delta has no table."""
    if result.kind != UNIFIED_KIND:
        return []
    per_task = zip(result.tasks, result.rescalers, result.mask_density, strict=True)
    rows = [[task, f"{rescaler:.4f}", f"{100 * density:.1f} %"] for task, rescaler, density in per_task]
    columns = [Column("task", numeric=False), Column("rescaler"), Column("mask density")]
    return [ResultTable(f"{result.output}: ConDU unified set of {len(result.tasks)} tasks", columns, [rows])]


def _print_written(result: UnifyResult) -> None:
    console.print(
        f"wrote {result.output} ({result.kind}, {result.method} of {len(result.tasks)} tasks, "
        f"{result.parameters:,} parameters, {result.passes} pass{'es' if result.passes > 1 else ''})"
    )


def decouple_command(
    unified: Annotated[Path, typer.Argument(help="A unified set from `cftool unify --method condu`.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="File to write; with --all, the folder for TASK.safetensors files.")
    ],
    task: Annotated[str | None, typer.Option("--task", help="The task whose expert to rebuild.")] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Rebuild every task's expert.")] = False,
    as_kind: Annotated[
        one_of(EXPERT_KINDS) | None,
        typer.Option(
            "--as",
            help="What to write of each expert: delta (its delta to the base) or model (the base plus that delta, for "
            "eval and export); a condu-lora set's: lora (its factors) or model.",
            show_default="delta; a condu-lora set's lora",
        ),
    ] = None,
    zs: ZsOption = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Rebuild task experts from a unified set: a task's delta is the unified delta where the task's mask keeps it,
    times the task's rescaler; with --as model, the base's weights plus that delta.

    A condu-lora set rebuilds each LoRA factor so (plus the factors its deltas are relative to, for an imported ConDU
    session): --as lora writes the expert's factors as a `lora` checkpoint, --as model the base's weights plus the
    update those factors make.

    Reads only the unified delta and the chosen tasks' masks, tensor by tensor. --as model needs the base (--zs,
    or the one the set records); --as delta needs none.

    Example: cftool decouple unified.st --task food --as model -o food-expert.safetensors

    Example: cftool decouple unified.st --all -o experts/
    """
    from contextlib import ExitStack

    from cftool.io.unified import open_unified
    from cftool.merge.decouple import decouple, factor_space
    from cftool.zoo.base import resolve_base
    from cftool.zoo.base_weights import open_base

    if (task is None) == (not all_tasks):
        raise CftoolError("give --task NAME (one expert) or --all (every task's, into the folder -o names)")
    with ExitStack() as stack:
        unified_set = stack.enter_context(open_unified(unified))
        own_kind = LORA_KIND if factor_space(unified_set) is not None else DELTA_KIND
        as_kind = as_kind or own_kind
        if as_kind not in (own_kind, MODEL_KIND):
            in_weight_space = " (`cftool delta` of a lora expert gives its delta in weight space)"
            raise CftoolError(
                f"--as {as_kind!r}: the experts of {unified} are written as {own_kind} or {MODEL_KIND}"
                + (in_weight_space if own_kind == LORA_KIND else "")
            )
        if zs is not None and as_kind != MODEL_KIND:
            raise CftoolError(f"--zs is used with --as model; a {as_kind} needs no base")
        tasks = unified_set.task_names if all_tasks else [task]
        if all_tasks:
            outputs = [output / f"{_file_name(name, unified)}.safetensors" for name in tasks]
        else:
            unified_set.task_index(task)  # an unknown task is refused before the base is read
            outputs = [output]
        base = None
        if as_kind == MODEL_KIND:
            base = stack.enter_context(open_base(resolve_base(zs, unified, unified_set.header)))
        with progress_bar() as progress:
            written = decouple(unified_set, tasks, outputs, base, overwrite=force, progress=_reporter(progress))
    for path in written:
        console.print(f"wrote {path} ({as_kind})")
    if json_output:
        emit_json({"outputs": [str(path) for path in written], "tasks": tasks, "kind": as_kind})


def _file_name(task: str, source: Path) -> str:
    if not task or task in (".", "..") or "/" in task or "\\" in task or "\0" in task:
        raise CftoolError(f"{source}: task {task!r} cannot name a file; decouple it alone with --task and -o FILE")
    return task
