"""`cftool route`: a ConDU unified set's predictions on a dataset, with or without the task id."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cftool.cli.common import (
    BatchSizeOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    ForceOption,
    FormatOption,
    JsonOption,
    QuietOption,
    SeedOption,
    WorkersOption,
    console,
    emit_results,
    one_of,
    progress_bar,
    resolve_device,
    results,
    results_format,
    seed_everything,
)
from cftool.cli.render import Column, ResultTable
from cftool.errors import CftoolError
from cftool.options import DATA_SPEC_FORMS, DEVICE, EVAL_BATCH_SIZE, EVAL_SPLIT, SEED, SPLITS, TOP_K, WORKERS

if TYPE_CHECKING:
    from cftool.data import TaskData
    from cftool.eval.route import Routed


def route_command(
    unified: Annotated[Path, typer.Argument(help="A unified set from `cftool unify --method condu` (or import).")],
    data: Annotated[str, typer.Option("--data", help=f"Images to predict: {DATA_SPEC_FORMS}.")],
    zs: Annotated[
        str | None, typer.Option("--zs", help="Base model.", show_default="the one the unified set records")
    ] = None,
    prototypes: Annotated[
        list[str] | None,
        typer.Option(
            "--prototypes",
            help="Prototype files of the set's tasks, a quoted glob such as 'runs/*.prototypes.safetensors' "
            "(repeatable). Needed without --task.",
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Experts per image (the tasks whose prototypes are closest).")
    ] = TOP_K,
    task: Annotated[
        str | None, typer.Option("--task", help="The task id: that task's decoupled expert alone answers.")
    ] = None,
    zero_shot: Annotated[
        bool,
        typer.Option(
            "--zero-shot/--no-zero-shot",
            help="Average the zero-shot model's predictions with the experts' (ConDU's rule); --no-zero-shot leaves "
            "the routed experts alone (with --top-k 1: hard routing, to measure the router).",
        ),
    ] = True,
    split: Annotated[one_of(SPLITS), typer.Option("--split", help="Split of --data to predict.")] = EVAL_SPLIT,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the predictions as CSV to this file.")
    ] = None,
    data_root: DataRootOption = None,
    force: ForceOption = False,
    batch_size: BatchSizeOption = EVAL_BATCH_SIZE,
    workers: WorkersOption = WORKERS,
    device: DeviceOption = DEVICE,
    seed: SeedOption = SEED,
    json_output: JsonOption = False,
    output_format: FormatOption = "table",
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Predict with a unified set's task experts: without --task, each image goes to the --top-k tasks whose class
    prototypes are closest to its zero-shot feature, and their experts' predictions are averaged with the zero-shot
    model's; with --task, that task's expert alone. Prints the accuracy (the data is labelled).

    Each routed expert is rebuilt once and runs only on the images routed to it. The label space is --data's classes.

    Example: cftool route session11.st --zs tiny --prototypes 'runs/*.prototypes.safetensors' --data toy:food
    """
    import glob

    from cftool.data import load_task
    from cftool.eval.route import RouteOptions, predict
    from cftool.io.outputs import check_outputs
    from cftool.io.unified import open_unified
    from cftool.zoo import load_model
    from cftool.zoo.base import resolve_base

    fmt = results_format(output_format, json_output)
    # Flags that contradict each other are wrong whatever the files hold: said before any file is read.
    options = RouteOptions(top_k, zero_shot, batch_size, workers)
    if task is not None and (prototypes or top_k != TOP_K or not zero_shot):
        raise CftoolError(
            "--task answers with that task's expert alone; --prototypes, --top-k and --no-zero-shot "
            "are for routing without it"
        )
    # Opened once, for the whole command: a file of another kind (or a damaged set) is said before what is missing.
    with open_unified(unified) as unified_set:
        if task is None and not prototypes:
            raise CftoolError(
                "routing without --task needs the tasks' prototypes: --prototypes 'runs/*.prototypes."
                "safetensors' (or give --task NAME)"
            )
        prototype_files = [Path(name) for pattern in prototypes or [] for name in glob.glob(pattern)]
        zs_file = [Path(zs)] if zs is not None and Path(zs).is_file() else []
        check_outputs({"-o": output}, [unified, *prototype_files, *zs_file], force)  # before any work
        seed_everything(seed)
        task_data = load_task(data, data_root)
        zoo = load_model(resolve_base(zs, unified, unified_set.header), resolve_device(device))
        with progress_bar() as progress:
            bar = progress.add_task("encode images", total=None)
            routed = predict(
                zoo, unified_set, task_data, split, options, task, prototypes or [], lambda n: progress.advance(bar, n)
            )
    hits = None if task else routed.routed_to(task_data.name)  # with --task no image is routed
    report = _report(unified, data, split, task, options, routed, task_data, hits)
    if fmt == "table":
        results.print(_sentence(task_data.name, report, options), markup=False)
    else:
        emit_results([_accuracy_table(task_data.name, report, options)], fmt, report)
    if output is not None:
        _write_csv(output, routed, task_data, force)
        console.print(f"wrote {output}")


def _answered_by(report: dict, options) -> str:
    return f"task {report['task']!r}'s expert" if report["task"] else _members(options)


def _sentence(name: str, report: dict, options) -> str:
    """The terminal's result: one line."""
    hits = report["routed_to_own_task"]
    return (
        f"{name} ({report['split']}, {report['num_images']} images, {len(report['classnames'])} classes): "
        f"top-1 {report['accuracy']:.1f} % with {_answered_by(report, options)}; "
        f"{report['expert_image_passes']:,} expert image passes"
        + ("" if hits is None else f"; {hits:.1f} % routed to {name}'s own expert")
    )


def _accuracy_table(name: str, report: dict, options) -> ResultTable:
    """The same result as a one-row table, for markdown, LaTeX and CSV."""
    hits = report["routed_to_own_task"]
    columns = [
        "task",
        "split",
        "images",
        "classes",
        "answered by",
        "top-1 %",
        "expert image passes",
        "routed to own expert %",
    ]
    row = [
        name,
        report["split"],
        str(report["num_images"]),
        str(len(report["classnames"])),
        _answered_by(report, options),
        f"{report['accuracy']:.1f}",
        str(report["expert_image_passes"]),
        "-" if hits is None else f"{hits:.1f}",
    ]
    return ResultTable(
        f"{name}: top-1 % of {report['unified']}",
        [Column(column, numeric=column not in ("task", "split", "answered by")) for column in columns],
        [[row]],
    )


def _members(options) -> str:
    zero_shot = "the zero-shot model and " if options.include_zero_shot else ""
    return f"{zero_shot}the top-{options.top_k} routed experts"


def _rows(routed: Routed, task_data: TaskData) -> list[dict]:
    names = task_data.classnames
    predictions = routed.logits.argmax(dim=-1).tolist()
    return [
        {
            "index": index,
            "prediction": prediction,
            "class": names[prediction],
            "label": label,
            "tasks": tasks,
        }
        for index, (prediction, label, tasks) in enumerate(
            zip(predictions, routed.labels.tolist(), routed.tasks, strict=True)
        )
    ]


def _write_csv(output: Path, routed: Routed, task_data: TaskData, overwrite: bool) -> None:
    from cftool.io.outputs import atomic_output

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["index", "prediction", "class", "label", "tasks"])
    for row in _rows(routed, task_data):
        writer.writerow([row["index"], row["prediction"], row["class"], row["label"], ";".join(row["tasks"])])
    with atomic_output(output, overwrite) as tmp:
        tmp.write_text(text.getvalue())


def _report(
    unified: Path, data: str, split: str, task: str | None, options, routed: Routed, task_data, hits: float | None
) -> dict:
    return {
        "unified": str(unified),
        "data": data,
        "split": split,
        "task": task,
        "top_k": None if task else options.top_k,
        "zero_shot": routed.include_zero_shot,
        "classnames": task_data.classnames,
        "accuracy": routed.accuracy,
        "num_images": len(routed.labels),
        "expert_image_passes": routed.passes.expert_images,
        "expert_batches": routed.passes.expert_batches,
        "routed_to_own_task": hits,  # % of images routed to the data's own task (None: --task, or not learned)
        "predictions": _rows(routed, task_data),
    }
