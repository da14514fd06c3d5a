"""`cftool eval`: accuracy tables of a zero-shot model or of checkpoints on tasks or a benchmark, and loss and
accuracy along the linear path between two checkpoints."""

from __future__ import annotations

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

CLASS_CHOICES = ("all", "base", "novel", "base,novel")


def eval_command(
    checkpoints: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to compare, one column each: `zs` (the zero-shot model), a checkpoint file, a pattern with "
            "{task} (and {seed}, averaged), or a folder with one checkpoint per task. None: the --zs model."
        ),
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
        str,
        typer.Option("--classes", help="Classes of --data tasks: all, base, novel, or base,novel (base, novel and HM)."),
    ] = "all",
    path: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--path",
            help="Evaluate the linear path A→B between two checkpoints of one kind (or zs and a checkpoint).",
            metavar="A B",
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="--path: points from A (α = 0) to B (α = 1).")] = 11,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="--path: also draw loss and accuracy against α into this PNG.")
    ] = None,
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
    """Top-1 accuracy per task of a zero-shot model or of checkpoints, side by side; or a path between two.

    With --benchmark base2new-tiny each column reports base, novel and HM; `{task}` patterns give each task its own
    checkpoint and `{seed}` averages seeds (mean ± spread). The mean row's HM is that of the mean base and novel.

    Example: cftool eval --benchmark base2new-tiny zs 'runs/{task}/coop.safetensors' 'runs/{task}/coop.mergetune.safetensors'
    """
    from cftool.data import DatasetSpec, get_benchmark, load_task
    from cftool.io.checkpoint import refuse_existing
    from cftool.paths import path_report
    from cftool.protocols import ZERO_SHOT, FeatureCache, compare
    from cftool.zoo import load_model

    if bool(data) == bool(benchmark):
        raise CftoolError("give either --data TASK (one or more) or --benchmark NAME")
    if classes not in CLASS_CHOICES:
        raise CftoolError(f"--classes must be one of {', '.join(CLASS_CHOICES)}, got {classes!r}")
    if path is not None and checkpoints:
        raise CftoolError("--path A B evaluates one path; give no other checkpoints with it")
    if plot is not None and path is None:
        raise CftoolError("--plot draws a path: give --path A B")
    for report_file in (output, plot):
        if report_file is not None:
            refuse_existing(report_file, force)
    if plot is not None:
        _require_matplotlib()
    seed_everything(seed)
    torch_device = resolve_device(device)
    if benchmark:
        bench = get_benchmark(benchmark, data_root)
        specs, base2new, title = list(bench.tasks), bench.base2new, bench.name
    else:
        halves = classes.split(",")
        base2new = halves == ["base", "novel"]
        specs = [DatasetSpec(source, classes="all" if base2new else classes) for source in data]
        title = ", ".join(data) + ("" if classes == "all" else f", {classes} classes")
    tasks = [load_task(spec, data_root) for spec in specs]
    names = [task.name for task in tasks]
    zoo = load_model(zs or _base_of(path or checkpoints or [], names), torch_device)
    base_sha256 = zoo.weights_sha256  # before any checkpoint's weights replace the base's
    with progress_bar() as progress:
        bar = progress.add_task("encode images", total=None)
        cache = FeatureCache(zoo, batch_size, workers, partial(progress.advance, bar))
        if path is not None:
            payload = path_report(zoo, *path, tasks, base2new, steps, split, cache, base_sha256)
        else:
            payload = compare(zoo, checkpoints or [ZERO_SHOT], tasks, base2new, split, cache, base_sha256)
    payload = {"benchmark": benchmark, "split": split, "base": zoo.spec.canonical, **payload}
    if path is not None:
        _print_path(title, payload)
        if plot is not None:
            _plot_path(payload, plot, force)
    else:
        _print_table(title, payload, base2new)
    if output is not None:
        write_json(output, payload, overwrite=force)
    if json_output:
        emit_json(payload)


def _base_of(specs: list[str], tasks: list[str]) -> str:
    """The base model the first checkpoint file names (``zs`` names none)."""
    from cftool.io.checkpoint import open_checkpoint
    from cftool.protocols import ZERO_SHOT, resolve_column
    from cftool.train import ADAPTERS

    for spec in specs:
        if spec == ZERO_SHOT:
            continue
        column = resolve_column(spec, tasks)
        first = column.files_of(tasks[0])[0]
        with open_checkpoint(first, kind=tuple(ADAPTERS)) as ckpt:
            return ckpt.header.base
    raise CftoolError("name the model with --zs (e.g. --zs tiny), or give checkpoint files to evaluate")


def _format(cell_mean: float, std: float | None) -> str:
    return f"{cell_mean:.1f}" if std is None else f"{cell_mean:.1f}±{std:.1f}"


def _print_table(title: str, payload: dict, base2new: bool) -> None:
    metrics = ("base", "novel", "hm") if base2new else ("accuracy",)
    models = payload["models"]
    table = Table(title=f"top-1 % on {title}" + (" (mean±std over seeds)" if any(m["seeds"] for m in models) else ""))
    table.add_column("task")
    table.add_column("classes", justify="right")
    for model in models:
        name = model["model"]
        name = Path(name).name if name.endswith(".safetensors") and "{" not in name else name
        for metric in metrics:
            table.add_column(f"{name}\n{metric}" if base2new else name, justify="right")

    def cells(row: dict) -> list[str]:
        std = row.get("std", {})
        return [_format(row[m], std.get(m)) for m in metrics]

    for index, first in enumerate(models[0]["results"]):
        n_classes = (
            f"{first['num_base_classes']}+{first['num_novel_classes']}" if base2new else str(first["num_classes"])
        )
        table.add_row(first["task"], n_classes, *[c for model in models for c in cells(model["results"][index])])
    table.add_section()
    table.add_row("mean", "", *[c for model in models for c in cells(model["mean"])])
    console.print(table)


def _print_path(title: str, payload: dict) -> None:
    path = payload["path"]
    table = Table(title=f"loss and top-1 % along {path['a']} → {path['b']} ({path['kind']}) on {title}")
    table.add_column("α", justify="right")
    for curve in payload["curves"]:
        label = curve["task"] + ("" if curve["classes"] == "all" else f" {curve['classes']}")
        table.add_column(f"{label}\nloss", justify="right")
        table.add_column(f"{label}\ntop-1", justify="right")
    for index, alpha in enumerate(payload["alphas"]):
        row = [f"{alpha:.2f}"]
        for curve in payload["curves"]:
            row += [f"{curve['loss'][index]:.3f}", f"{curve['accuracy'][index]:.1f}"]
        table.add_row(*row)
    table.add_section()
    table.add_row("max loss", *[c for curve in payload["curves"] for c in (f"{curve['max_loss']:.3f}", "")])
    table.add_row("barrier", *[c for curve in payload["curves"] for c in (f"{curve['barrier']:.3f}", "")])
    console.print(table)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CftoolError("--plot needs matplotlib: pip install 'cftool[plot]' (or pip install matplotlib)") from None


def _plot_path(payload: dict, output: Path, overwrite: bool) -> None:
    from cftool.plots import plot_path

    plot_path(payload, output, overwrite)
    console.print(f"wrote {output}")
