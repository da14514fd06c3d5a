"""`cftool eval`: accuracy tables of a zero-shot model or of checkpoints on tasks or a benchmark."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cftool.cli.common import (
    BatchSizeOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    SeedOption,
    WorkersOption,
    console,
    emit_json,
    progress_bar,
    resolve_device,
    seed_everything,
    write_json,
)
from cftool.errors import CftoolError


def eval_command(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="model, lora, prompt or head checkpoints; none evaluates the --zs model itself."),
    ] = None,
    zs: Annotated[
        str | None, typer.Option("--zs", help="Base model: tiny, ViT-B/16, NAME:TAG, hf-hub:ORG/NAME or a file.")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="Task to evaluate on: toy:TASK, folder:PATH or coop:NAME (repeatable)."),
    ] = None,
    benchmark: Annotated[
        str | None, typer.Option("--benchmark", help="mtil-tiny, base2new-tiny, or mtil (needs --data-root).")
    ] = None,
    classes: Annotated[
        str, typer.Option("--classes", help="Class subset of --data tasks: all, base or novel.")
    ] = "all",
    split: Annotated[str, typer.Option("--split", help="Split to evaluate on.")] = "test",
    data_root: DataRootOption = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Also write the JSON report to this file.")
    ] = None,
    force: ForceOption = False,
    batch_size: BatchSizeOption = 256,
    workers: WorkersOption = 2,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    json_output: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Top-1 accuracy per task of a zero-shot model or of checkpoints.

    Example: cftool eval --zs tiny --benchmark mtil-tiny
    """
    from cftool.data import DatasetSpec, get_benchmark, load_task
    from cftool.evaluate import evaluate_base2new, evaluate_zero_shot, zero_shot_head
    from cftool.io.checkpoint import open_checkpoint, refuse_existing
    from cftool.train import EVAL_KINDS, load_for_eval
    from cftool.zoo import load_model

    if bool(data) == bool(benchmark):
        raise CftoolError("give either --data TASK (one or more) or --benchmark NAME")
    if output is not None:
        refuse_existing(output, force)
    seed_everything(seed)
    torch_device = resolve_device(device)
    if benchmark:
        bench = get_benchmark(benchmark, data_root)
        specs, base2new, title = list(bench.tasks), bench.base2new, bench.name
    else:
        specs, base2new, title = [DatasetSpec(source, classes=classes) for source in data], False, ", ".join(data)
        if classes != "all":
            title += f", {classes} classes"
    tasks = [load_task(spec, data_root) for spec in specs]
    zs = zs or _base_of(checkpoints)
    zoo = load_model(zs, torch_device)

    models = [(f"zero-shot {zoo.spec.canonical}", None)] if not checkpoints else [(str(p), p) for p in checkpoints]
    n_images = sum(len(task.split(split)) for task in tasks)
    base_sha256 = zoo.weights_sha256  # before any checkpoint's weights replace the base's
    # `lora`, `prompt` and `head` checkpoints apply to the base weights, which an earlier checkpoint may have replaced.
    base_state = {name: t.clone() for name, t in zoo.model.state_dict().items()} if len(models) > 1 else None
    report = []
    with progress_bar() as progress:
        for label, path in models:
            head = zero_shot_head
            if path is not None:
                with open_checkpoint(path, kind=EVAL_KINDS, base_sha256=base_sha256) as ckpt:
                    if base_state is not None:
                        zoo.load_state_dict(base_state, zoo.spec.canonical)
                    head = load_for_eval(zoo, ckpt)
            bar = progress.add_task(f"eval {Path(label).name if path else label}", total=n_images)
            advance = partial(progress.advance, bar)
            if base2new:
                results = evaluate_base2new(zoo, tasks, split, batch_size, workers, advance, head)
            else:
                results = evaluate_zero_shot(zoo, tasks, split, batch_size, workers, advance, head)
            report.append({"model": label, "results": [asdict(r) for r in results]})
    _print_table(title, report, base2new)
    payload = {"benchmark": benchmark, "split": split, "base": zoo.spec.canonical, "models": report}
    if output is not None:
        write_json(output, payload, overwrite=force)
    if json_output:
        emit_json(payload)


def _base_of(checkpoints: list[Path] | None) -> str:
    from cftool.io.checkpoint import open_checkpoint
    from cftool.train import EVAL_KINDS

    if not checkpoints:
        raise CftoolError("name the model with --zs (e.g. --zs tiny), or give checkpoint files to evaluate")
    with open_checkpoint(checkpoints[0], kind=EVAL_KINDS) as ckpt:
        return ckpt.header.base


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _print_table(title: str, report: list[dict], base2new: bool) -> None:
    metrics = ("base", "novel", "hm") if base2new else ("accuracy",)
    table = Table(title=f"top-1 % on {title}")
    table.add_column("task")
    table.add_column("classes", justify="right")
    for entry in report:
        for metric in metrics:
            name = Path(entry["model"]).name if entry["model"].endswith(".safetensors") else entry["model"]
            table.add_column(f"{name}\n{metric}" if base2new else name, justify="right")
    first = report[0]["results"]
    for row, result in enumerate(first):
        n_classes = (
            f"{result['num_base_classes']}+{result['num_novel_classes']}" if base2new else str(result["num_classes"])
        )
        cells = [f"{entry['results'][row][m]:.1f}" for entry in report for m in metrics]
        table.add_row(result["task"], n_classes, *cells)
    table.add_section()
    table.add_row("mean", "", *[f"{_mean([r[m] for r in entry['results']]):.1f}" for entry in report for m in metrics])
    console.print(table)
