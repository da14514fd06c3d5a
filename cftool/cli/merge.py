"""`cftool delta`, `unify` and `decouple`: task deltas, merging them, and rebuilding task experts.

These commands only move tensors: they import neither open_clip (unless `--zs` names a pretrained tag) nor the
training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cftool.cli.common import (
    ConfigOption,
    ForceOption,
    FormatOption,
    JsonOption,
    QuietOption,
    console,
    emit_json,
    emit_results,
    progress_bar,
    results_format,
    torch_dtype,
)
from cftool.cli.files import OutputOption, ZsOption
from cftool.cli.render import Column, ResultTable
from cftool.errors import CftoolError

if TYPE_CHECKING:
    from cftool.merge.engine import UnifyResult

# Spelled out so that `--help` needs no import of the methods (a test checks it against the registry).
METHOD_NAMES = ("condu", "condu-lora", "ties", "task-arithmetic", "dare", "mean")


def _reporter(progress):
    def begin(description: str, total: int):
        task = progress.add_task(description, total=total)
        return lambda n=1: progress.advance(task, n)

    return begin


def delta_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="A fine-tuned `model` or `lora` checkpoint; or `apply` followed by a delta file.",
            metavar="[apply] FILE",
            show_default=False,
        ),
    ],
    output: OutputOption,
    zs: ZsOption = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="fp32, fp16 or bf16 for the delta (default: the checkpoint's).")
    ] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="apply: write θ0 + s·δ (default 1).")] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Task delta θ − θ0 of a fine-tuned checkpoint; `delta apply` adds a delta back to its base as a `model` file.

    The base is --zs (default: the one the file records). `lora` checkpoints are merged into the weights first;
    `prompt` and `head` checkpoints hold no weights of the model and have no delta.

    Example: cftool delta full-food.safetensors --zs tiny -o deltas/food.safetensors

    Example: cftool delta apply deltas/food.safetensors --zs tiny --scale 0.5 -o food-half.safetensors
    """
    from cftool.io.checkpoint import open_checkpoint
    from cftool.merge.delta import apply_delta, make_delta
    from cftool.zoo.base import resolve_base
    from cftool.zoo.base_weights import open_base

    applying = len(files) == 2 and str(files[0]) == "apply"
    if len(files) != 1 and not applying:
        raise CftoolError("give one checkpoint (cftool delta FT.safetensors …) or `apply DELTA` (cftool delta apply …)")
    source = files[-1]
    if applying and dtype is not None:
        raise CftoolError("--dtype sets a delta's dtype; `delta apply` writes the model in its base's dtypes")
    if not applying and scale is not None:
        raise CftoolError("--scale applies to `cftool delta apply`")
    wanted_dtype = torch_dtype(dtype)
    with open_base(resolve_base(zs, source)) as base:
        if applying:
            with open_checkpoint(source, kind="delta") as delta:
                written = apply_delta(delta, base, output, 1.0 if scale is None else scale, overwrite=force)
            kind = "model"
        else:
            with open_checkpoint(source) as checkpoint:
                written = make_delta(checkpoint, base, output, wanted_dtype, overwrite=force)
            kind = "delta"
    console.print(f"wrote {written} ({kind}, base {base.canonical})")
    if json_output:
        emit_json({"output": str(written), "kind": kind, "base": base.canonical})


def unify_command(
    deltas: Annotated[
        list[Path],
        typer.Argument(help="Delta files, one per task (e.g. deltas/*.safetensors); condu-lora: lora checkpoints."),
    ],
    output: OutputOption,
    method: Annotated[str, typer.Option("--method", help=f"One of {', '.join(METHOD_NAMES)}.")] = "condu",
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
    keep: Annotated[float | None, typer.Option("--keep", help="ties: fraction of entries kept (default 0.2).")] = None,
    trim: Annotated[
        str | None, typer.Option("--trim", help="ties: global (the paper's, default) or per-tensor (mergekit's).")
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option("--lambda", help="ties, task-arithmetic, dare: scale of the merged delta (1, 0.3, 0.3)."),
    ] = None,
    p: Annotated[float | None, typer.Option("--p", help="dare: drop rate (default 0.5).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="dare: seed of the drops (default 0).")] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    output_format: FormatOption = "table",
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Merge task deltas: a ConDU unified set (unified delta + a 1-bit mask and a rescaler per task) or one delta.

    Streams tensors: memory is a few tensor slices per input, never whole models. `--method condu` writes a
    `unified` file that `decouple` rebuilds each task's expert from; the other methods write one `delta`.

    LoRA, two ways: `--method condu-lora` takes the tasks' `lora` checkpoints and unifies their factors A and B
    (the reference ConDU-LoRA: its experts decouple back into lora factors); `--method condu` over `cftool delta`
    of lora checkpoints unifies the merged updates ΔW = scale·B·A instead (cftool's own, weight space).

    Example: cftool unify deltas/*.safetensors -o unified.st

    Example: cftool unify --into session1.st deltas/cars.safetensors -o session2.st

    Example: cftool unify --method condu-lora lora/food.safetensors lora/cars.safetensors -o unified-lora.st
    """
    from contextlib import ExitStack

    from cftool.merge.engine import continual_inputs, open_deltas, open_loras, open_previous, unify
    from cftool.merge.methods import get_method

    fmt = results_format(output_format, json_output)
    merge = get_method(method)
    options = merge.make_options(keep=keep, trim=trim, scale=scale, p=p, seed=seed)
    if into is not None and not merge.writes_triggers:
        raise CftoolError(f"--into continues a ConDU unified set; it needs --method condu or condu-lora, not {method}")
    if replace and into is None:
        raise CftoolError("--replace applies with --into PREVIOUS")
    with ExitStack() as stack:
        previous = open_previous(into, stack) if into is not None else None
        factor_base = previous.factor_bases() if previous is not None else {}
        inputs = open_loras(deltas, stack, factor_base) if merge.inputs == "lora" else open_deltas(deltas, stack)
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
    if result.kind != "unified":
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
        str | None,
        typer.Option(
            "--as",
            help="delta (δ̃ = λ·M⊙u; the default) or model (θ0 + δ̃, for eval and export); a condu-lora set: lora "
            "(its factors; the default) or model.",
        ),
    ] = None,
    zs: ZsOption = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Rebuild task experts from a unified set: δ̃ = λ·M⊙u, or with --as model the full weights θ0 + δ̃.

    A condu-lora set rebuilds each factor so (plus the factors its deltas are relative to, for an imported ConDU
    session): --as lora writes the expert's factors as a `lora` checkpoint, --as model the weights W + scale·B̃·Ã.

    Reads only the unified delta and the chosen tasks' masks, tensor by tensor. --as model needs the base (--zs,
    default: the one the set records); --as delta needs none.

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
        own_kind = "lora" if factor_space(unified_set) is not None else "delta"
        as_kind = as_kind or own_kind
        if as_kind not in (own_kind, "model"):
            raise CftoolError(
                f"--as {as_kind!r}: the experts of {unified} are written as {own_kind} or model"
                + (" (`cftool delta` of a lora expert gives its ΔW delta)" if own_kind == "lora" else "")
            )
        if zs is not None and as_kind != "model":
            raise CftoolError(f"--zs is used with --as model; a {as_kind} needs no base")
        tasks = unified_set.task_names if all_tasks else [task]
        if all_tasks:
            outputs = [output / f"{_file_name(name, unified)}.safetensors" for name in tasks]
        else:
            unified_set.task_index(task)  # an unknown task is refused before the base is read
            outputs = [output]
        base = None
        if as_kind == "model":
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
