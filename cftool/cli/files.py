"""`cftool inspect`, `import` and `export`: look into checkpoint files and convert foreign formats."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cftool.cli.common import (
    ConfigOption,
    DeviceOption,
    Dtype,
    ForceOption,
    FormatOption,
    JsonOption,
    QuietOption,
    console,
    emit_json,
    emit_results,
    one_of,
    progress_bar,
    resolve_device,
    results_format,
    torch_dtype,
)
from cftool.cli.render import Column, ResultTable
from cftool.errors import CftoolError
from cftool.io.command_files import task_prototypes_path
from cftool.io.header import MODEL_KIND, PROMPT_KIND, UNIFIED_KIND
from cftool.options import DEVICE

# What `import --format` reads; auto tells them apart by the file (see _detect_format).
AUTO_FORMAT = "auto"
OPEN_CLIP_FORMAT = "open_clip"
COOP_FORMAT = "coop"
CONDU_FORMAT = "condu"
IMPORT_FORMATS = (AUTO_FORMAT, OPEN_CLIP_FORMAT, COOP_FORMAT, CONDU_FORMAT)

ZS_HELP = "Base model: tiny, ViT-B/16, NAME:TAG, hf-hub:ORG/NAME or a cftool model file."
ZsOption = Annotated[str | None, typer.Option("--zs", help=ZS_HELP)]
OutputOption = Annotated[
    Path, typer.Option("-o", "--output", help="File to write (never overwritten without --force).")
]


def inspect_command(
    files: Annotated[list[Path], typer.Argument(help="safetensors files to describe.")],
    check: Annotated[bool, typer.Option("--check", help="Also scan every tensor for NaN and Inf.")] = False,
    json_output: JsonOption = False,
    output_format: FormatOption = "table",
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Describe checkpoint files: kind, base, task, tensors, parameters, dtypes, size.

    A unified set also lists its tasks with their rescalers and mask densities.

    Example: cftool inspect coop.safetensors --check
    """
    from cftool.io.summary import non_finite_counts, summarize

    fmt = results_format(output_format, json_output)
    summaries = [summarize(path) for path in files]
    if check:
        with progress_bar() as progress:
            for summary in summaries:
                bar = progress.add_task(f"check {summary['file']}", total=summary["tensors"])
                summary["non_finite"] = non_finite_counts(Path(summary["file"]), partial(progress.advance, bar, 1))
    tables = [_files_table(summaries, check)]
    tables += [_unified_tasks_table(s) for s in summaries if "tasks" in s]
    emit_results(tables, fmt, summaries, primary=0)
    if check and any(s["non_finite"] for s in summaries):
        worst = next(s for s in summaries if s["non_finite"])
        name, count = next(iter(worst["non_finite"].items()))
        raise CftoolError(
            f"{worst['file']}: {count} NaN/Inf values in tensor {name} (and possibly others listed above)"
        )


def import_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="Foreign checkpoint: open_clip/OpenAI state dict, Dassl/CoOp prompt_learner/model.pth.tar-N, "
            "or a ConDU session folder (unified.pth, {task}.pth, prototypes.pth)."
        ),
    ],
    output: OutputOption,
    zs: ZsOption = None,
    source_format: Annotated[
        one_of(IMPORT_FORMATS),
        typer.Option(
            "--format",
            help="What SOURCE is: open_clip (a full state dict), coop (a Dassl prompt learner), condu (a session "
            "folder), or auto (told apart by the file).",
        ),
    ] = AUTO_FORMAT,
    task: Annotated[str | None, typer.Option("--task", help="Task name to record in the metadata.")] = None,
    prototypes_dir: Annotated[
        Path | None,
        typer.Option(
            "--prototypes-dir", help="condu: folder for TASK.prototypes.safetensors.", show_default="the output's"
        ),
    ] = None,
    dtype: Annotated[
        Dtype | None, typer.Option("--dtype", help="open_clip: the weights' dtype.", show_default="the file's")
    ] = None,
    lora_base: Annotated[
        Path | None,
        typer.Option(
            "--lora-base",
            help="condu, a ConDU-LoRA session: the state dict of the run's pretrained.pth, whose LoRA factors the "
            "session's factor deltas are relative to.",
        ),
    ] = None,
    force: ForceOption = False,
    device: DeviceOption = DEVICE,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Convert a foreign checkpoint into a cftool file (kind `model` or `prompt`), or a ConDU session folder into a
    `unified` file and one `prototypes` file per task.

    Example: cftool import output/oxford_pets/CoOp/seed1/prompt_learner/model.pth.tar-50 --zs ViT-B/16
    -o coop.safetensors

    Example: cftool import condu/session_10 --zs ViT-B/16 -o unified.st

    A ConDU-LoRA session (its unified.pth holds lora_A/lora_B factors) becomes a condu-lora set in factor space; its
    deltas are relative to the LoRA factors of the run's pretrained.pth, a pickled model that cftool does not
    unpickle: save its state dict in a trusted Python and pass it as --lora-base.

    Example: cftool import checkpoint/full_lora/session_10 --zs ViT-B/16 --lora-base pretrained-state.pth
    -o unified-lora.st
    """
    from cftool.io.outputs import check_outputs

    if zs is None:
        raise CftoolError("--zs is required: name the base model the checkpoint was trained from (e.g. --zs ViT-B/16)")
    fmt = _detect_format(source) if source_format == AUTO_FORMAT else source_format
    inputs = [file for file in source.iterdir() if file.is_file()] if source.is_dir() else [source]
    inputs += [Path(zs)] if Path(zs).is_file() else []
    if lora_base is not None and fmt != CONDU_FORMAT:
        raise CftoolError("--lora-base applies to a ConDU-LoRA session folder (--format condu)")
    if fmt == CONDU_FORMAT:
        inputs += [lora_base] if lora_base is not None else []
        written = _import_condu_session(source, zs, output, prototypes_dir, task, force, inputs, lora_base)
        _print_imported(fmt, UNIFIED_KIND, written, json_output)
        return
    check_outputs({"-o": output}, inputs, force)  # before any work
    if fmt == COOP_FORMAT:
        from cftool.kinds.convert import import_coop_prompt
        from cftool.zoo import load_model

        written = import_coop_prompt(source, load_model(zs, resolve_device(device)), output, task=task, overwrite=force)
        kind = PROMPT_KIND
    else:
        from cftool.kinds.convert import import_full_model
        from cftool.zoo.base_weights import open_base

        with open_base(zs) as base:
            written = import_full_model(source, base, output, task=task, overwrite=force, dtype=torch_dtype(dtype))
        kind = MODEL_KIND
    _print_imported(fmt, kind, [written], json_output)


def _print_imported(fmt: str, kind: str, written: list[Path], json_output: bool) -> None:
    """The files an import wrote: the cftool file (a ConDU session's unified set), then any prototypes."""
    console.print(f"wrote {written[0]} ({fmt} → {kind})" + "".join(f", {path}" for path in written[1:]))
    if json_output:
        emit_json(
            {"format": fmt, "output": str(written[0]), "kind": kind, "prototypes": [str(path) for path in written[1:]]}
        )


def export_command(
    source: Annotated[
        Path | None, typer.Argument(help="cftool `model` file to export as a plain open_clip state dict.")
    ] = None,
    output: OutputOption = ...,
    zs: ZsOption = None,
    dtype: Annotated[
        Dtype | None,
        typer.Option("--dtype", help="The weights' dtype.", show_default="the file's; a zoo model's fp32"),
    ] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Write a plain open_clip state dict (.safetensors/.pt/.bin), or with --zs alone a zoo model as a `model` file.

    Example: cftool export --zs tiny -o base.safetensors

    Example: cftool export finetuned.safetensors --dtype fp16 -o finetuned.pt
    """
    from cftool.io.outputs import check_outputs

    if (source is None) == (zs is None):
        raise CftoolError("give either a cftool model file to export, or --zs SPEC to materialise a zoo model")
    inputs = [Path(name) for name in (source, zs) if name is not None and Path(name).is_file()]
    check_outputs({"-o": output}, inputs, force)  # before any work
    wanted_dtype = torch_dtype(dtype)
    if source is not None:
        from cftool.io.convert import export_plain

        written = export_plain(source, output, overwrite=force, dtype=wanted_dtype)
    else:
        from cftool.kinds.convert import export_base
        from cftool.zoo.base_weights import open_base

        with open_base(zs) as base:
            written = export_base(base, output, overwrite=force, dtype=wanted_dtype)
    kind = None if source is not None else MODEL_KIND  # a plain state dict has no cftool kind
    console.print(f"wrote {written}" + (f" ({kind})" if kind else " (open_clip state dict)"))
    if json_output:
        emit_json({"output": str(written), "kind": kind})


def _import_condu_session(
    folder: Path,
    zs: str,
    output: Path,
    prototypes_dir: Path | None,
    task: str | None,
    force: bool,
    inputs: list[Path],
    lora_base: Path | None,
) -> list[Path]:
    from cftool.io.convert import import_condu_session
    from cftool.io.foreign import condu_task_names, is_condu_session, read_condu_prototypes
    from cftool.io.outputs import check_outputs
    from cftool.zoo.base_weights import open_base

    if task is not None:
        raise CftoolError("--task names the task of one checkpoint; a ConDU session names its tasks by their files")
    if not is_condu_session(folder):
        raise CftoolError(f"{folder}: not a ConDU session folder (no unified.pth in it); name the session_N folder")
    prototypes_dir = prototypes_dir or output.parent
    with_prototypes = read_condu_prototypes(folder).keys()
    prototype_files = {
        f"the prototypes of {name!r}": task_prototypes_path(prototypes_dir, name)
        for name in condu_task_names(folder)
        if name in with_prototypes
    }
    check_outputs({"-o": output, **prototype_files}, inputs, force)  # before the unified delta is read
    with open_base(zs) as base:
        return import_condu_session(folder, base, output, prototypes_dir, force, lora_base)


def _files_table(summaries: list[dict], check: bool) -> ResultTable:
    names = ["file", "kind", "base", "task", "tensors", "parameters", "dtypes", "size"] + (["NaN/Inf"] if check else [])
    rows = []
    for s in summaries:
        row = [
            s["file"],
            s["kind"] or "(plain safetensors)",
            s["base"] or "-",
            s["task"] or "-",
            str(s["tensors"]),
            f"{s['parameters']:,}",
            ", ".join(s["dtypes"]),
            _human_size(s["bytes"]),
        ]
        if check:
            bad = s["non_finite"]
            row.append("none" if not bad else f"{sum(bad.values())} in {len(bad)} tensors")
        rows.append(row)
    numeric = ("tensors", "parameters", "size", "NaN/Inf")
    return ResultTable("", [Column(name, numeric=name in numeric) for name in names], [rows])


def _unified_tasks_table(summary: dict) -> ResultTable:
    rows = [
        [
            task["task"],
            "-" if task["classes"] is None else str(task["classes"]),
            f"{task['rescaler']:.4f}",
            f"{100 * task['mask_density']:.1f} %",
        ]
        for task in summary["tasks"]
    ]
    return ResultTable(
        f"{summary['file']}: {len(summary['tasks'])} tasks",
        [Column("task", numeric=False), Column("classes"), Column("rescaler"), Column("mask density")],
        [rows],
    )


def _detect_format(source: Path) -> str:
    """A folder is a ConDU session; a pickle whose state dict holds ``ctx`` is a Dassl prompt learner, whatever its
    name; anything else is read as a full state dict."""
    from cftool.io.foreign import is_dassl_prompt
    from cftool.io.header import check_input_file

    if source.is_dir():
        return CONDU_FORMAT
    return COOP_FORMAT if is_dassl_prompt(check_input_file(source)) else OPEN_CLIP_FORMAT


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
