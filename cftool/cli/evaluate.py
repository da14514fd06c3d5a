"""`cftool eval`: accuracy tables of a zero-shot model or of checkpoints on tasks or a benchmark, MTIL's accuracy
matrix over continual sessions, and loss and accuracy along the linear path between two checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cftool.cli.common import (
    DEFAULT_LOG_EVERY,
    BatchSizeOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    ForceOption,
    FormatOption,
    JsonOption,
    LogEveryOption,
    QuietOption,
    SeedOption,
    WorkersOption,
    console,
    emit_results,
    one_of,
    progress_bar,
    progress_task_starter,
    resolve_device,
    results_format,
    seed_everything,
    write_json,
)
from cftool.cli.render import Column, ResultTable
from cftool.errors import CftoolError
from cftool.options import (
    ALL_CLASSES,
    BASE_CLASSES,
    BENCHMARKS,
    CLASS_SUBSET,
    CLASS_SUBSETS,
    DATA_SPEC_FORMS,
    DEVICE,
    EVAL_BATCH_SIZE,
    EVAL_SPLIT,
    LABEL_SPACE,
    LABEL_SPACES,
    NOVEL_CLASSES,
    PATH_STEPS,
    SEED,
    SPLITS,
    TOP_K,
    UNION_LABEL_SPACE,
    WORKERS,
)

# A task's classes, or its base and novel halves side by side with their harmonic mean.
BASE_AND_NOVEL = f"{BASE_CLASSES},{NOVEL_CLASSES}"
CLASS_CHOICES = (*CLASS_SUBSETS, BASE_AND_NOVEL)


def eval_command(
    checkpoints: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to compare, one row each: `zs` (the zero-shot model), a checkpoint file, a pattern with "
            "{task} (and {seed}, averaged), or a folder with one checkpoint per task; LABEL=SPEC names a row. None: "
            "the --zs model."
        ),
    ] = None,
    zs: Annotated[
        str | None, typer.Option("--zs", help="Base model: tiny, ViT-B/16, NAME:TAG, hf-hub:ORG/NAME or a file.")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help=f"Task to evaluate on: {DATA_SPEC_FORMS} (repeatable)."),
    ] = None,
    benchmark: Annotated[
        one_of(BENCHMARKS) | None,
        typer.Option(
            "--benchmark",
            help="A benchmark's tasks: MTIL's eleven (mtil-order2: in ZSCL's order II), or CoOp's base-to-novel "
            "protocol; the -tiny ones are embedded (model tiny), the others read real data under --data-root, "
            "$CFTOOL_DATA_ROOT or ./data (model ViT-B/16 unless --zs).",
        ),
    ] = None,
    classes: Annotated[
        one_of(CLASS_CHOICES),
        typer.Option("--classes", help="Classes of --data tasks: all, a half, or base,novel (base, novel and HM)."),
    ] = CLASS_SUBSET,
    path: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--path",
            help="Evaluate the linear path A→B between two checkpoints of one kind (or zs and a checkpoint); "
            "LABEL=FILE names an end in the table and --plot.",
            metavar="A B",
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="--path: points from A (α = 0) to B (α = 1).")] = PATH_STEPS,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="--path: also draw loss (with each curve's barrier) and accuracy against α into this file, in the "
            "format its suffix names: .pdf or .svg (vector), .png, …",
        ),
    ] = None,
    sessions: Annotated[
        list[str] | None,
        typer.Option(
            "--sessions",
            help="A continual method's checkpoint after each session, in the tasks' order: [LABEL=]PATTERN with {t} "
            "(1, 2, … while the files exist) or comma-separated files; each a unified set, model, lora or delta. "
            "Repeatable (one method each). Gives the MTIL matrix with Transfer, Average and Last.",
        ),
    ] = None,
    task_agnostic: Annotated[
        bool, typer.Option("--task-agnostic", help="--sessions: unified sets route every image (no task id).")
    ] = False,
    label_space: Annotated[
        one_of(LABEL_SPACES),
        typer.Option(
            "--label-space",
            help="--sessions --task-agnostic: classify each task's images among its own classes (own, ConDU's "
            "evaluation) or among every task's classes of the table (union, as some other methods' tables do).",
        ),
    ] = LABEL_SPACE,
    prototypes: Annotated[
        list[str] | None,
        typer.Option(
            "--prototypes", help="--sessions: the tasks' prototype files for routing, a quoted glob (repeatable)."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="--sessions: experts per routed image.")] = TOP_K,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Keep the base's image features here across runs; with --sessions, the measured cells.",
            show_default="none; with --sessions, $XDG_CACHE_HOME/cftool/eval or ~/.cache/cftool/eval",
        ),
    ] = None,
    heatmap: Annotated[
        Path | None,
        typer.Option(
            "--heatmap",
            help="--sessions: also draw each method's matrix into this file, in the format its suffix names: .pdf or "
            ".svg (vector), .png, …",
        ),
    ] = None,
    split: Annotated[one_of(SPLITS), typer.Option("--split", help="Split to evaluate on.")] = EVAL_SPLIT,
    log_every: LogEveryOption = DEFAULT_LOG_EVERY,
    data_root: DataRootOption = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Also write the JSON report to this file.")
    ] = None,
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
    """Top-1 accuracy per task of a zero-shot model or of checkpoints, side by side; or a path between two.

    With --benchmark base2new-tiny the table has a block per task and a row per model, with base, novel and HM;
    `{task}` patterns give each task its own checkpoint and `{seed}` averages seeds (mean ± spread). The mean's HM is
    that of the mean base and novel. --format markdown or latex prints the tables for a paper.

    With --sessions, each session sequence fills MTIL's matrix A[t][j] (session t, task j, tasks in training order):
    a unified set answers a learned task with its expert and the others by routing (zero-shot model + top-K
    experts; --task-agnostic routes all). The table has Transfer, Average and Last per task and method, beside
    single rows for the other columns (LABEL=SPEC names a row). Cells are cached by file hash.

    Example: cftool eval --benchmark base2new-tiny zs 'runs/{task}/coop.safetensors'

    Example: cftool eval --benchmark mtil-tiny zs --sessions 'ConDU=runs/session{t}.st' --prototypes
    'runs/*.prototypes.safetensors'
    """
    from cftool.eval.lmc_paths import path_alphas
    from cftool.eval.mtil import MtilOptions, default_cache_dir
    from cftool.eval.route import RouteOptions
    from cftool.eval.run import Evaluation, evaluate
    from cftool.io.outputs import check_outputs, check_writable_folder, refuse_input_overwrite
    from cftool.zoo import load_model

    fmt = results_format(output_format, json_output)
    session_only = (task_agnostic, prototypes, top_k != TOP_K, heatmap, label_space != LABEL_SPACE)
    _check_combination(checkpoints, data, benchmark, classes, path, plot, sessions, session_only)
    _check_figures({"--plot": plot, "--heatmap": heatmap})
    mtil_options = MtilOptions(
        task_agnostic, RouteOptions(top_k, batch_size=batch_size, workers=workers), tuple(prototypes or []), label_space
    )
    if path is not None:
        path_alphas(steps)  # --steps refused before any work
    reports = {"-o": output, "--plot": plot, "--heatmap": heatmap}
    named_files = [Path(name) for name in (*(checkpoints or []), *(path or []), zs or "") if Path(name).is_file()]
    check_outputs(reports, named_files, force)  # before any work, the files that patterns name included below
    cells_folder = cache_dir or (default_cache_dir() if sessions else None)
    if cells_folder is not None:  # filled as cells are measured: the first stored one comes after work
        check_writable_folder(cells_folder, "--cache-dir" if cache_dir else "--cache-dir (the default)")
    seed_everything(seed)
    tasks, base2new, title, default_model = _tasks(benchmark, data, classes, data_root, bool(sessions))
    names = [task.name for task in tasks]
    inputs = _input_files([*(checkpoints or []), *(path or [])], sessions or [], prototypes or [], names)
    for report in reports.values():
        if report is not None:
            refuse_input_overwrite(report, inputs)
    # The model the files name, else the backbone of the benchmark's published numbers.
    zs = zs or _base_of(path or checkpoints or [], names, sessions or []) or default_model
    if zs is None:
        raise CftoolError("name the model with --zs (e.g. --zs tiny), or give checkpoint files to evaluate")
    zoo = load_model(zs, resolve_device(device))
    evaluation = Evaluation(
        tuple(checkpoints or []),
        tasks,
        split,
        base2new,
        path,
        steps,
        tuple(sessions or []),
        mtil_options,
        cells_folder=cells_folder,
        features_folder=cache_dir,
        batch_size=batch_size,
        workers=workers,
    )
    with progress_bar(log_every) as progress:
        payload = evaluate(zoo, evaluation, progress_task_starter(progress))
    payload = {"benchmark": benchmark, "split": split, "base": zoo.spec.canonical, **payload}
    _print_report(payload, evaluation, benchmark or title if sessions else title, fmt, heatmap, plot, force)
    if output is not None:
        write_json(output, payload, overwrite=force)


# The flags that only --sessions takes, in the order eval_command gives whether each was set.
SESSION_FLAGS = ("--task-agnostic", "--prototypes", "--top-k", "--heatmap", "--label-space")


def _check_combination(checkpoints, data, benchmark, classes: str, path, plot, sessions, session_only: tuple) -> None:
    """Refuse, before any work, flags that do not go together."""
    if bool(data) == bool(benchmark):
        raise CftoolError(
            "give either --data TASK (one or more) or --benchmark NAME"
            + ("" if data else _recorded_data_hint([*(checkpoints or []), *(path or [])]))
        )
    if not sessions:
        given = [flag for flag, value in zip(SESSION_FLAGS, session_only, strict=True) if value]
        if given:
            raise CftoolError(f"{given[0]} applies to the MTIL matrix: give --sessions PATTERN")
    elif path is not None or classes != CLASS_SUBSET:
        raise CftoolError("--sessions evaluates continual sessions on whole tasks; drop --path and --classes")
    if path is not None and checkpoints:
        raise CftoolError("--path A B evaluates one path; give no other checkpoints with it")
    if plot is not None and path is None:
        raise CftoolError("--plot draws a path: give --path A B")


def _tasks(benchmark: str | None, data: list[str] | None, classes: str, data_root: Path | None, sessions: bool):
    """The tasks to evaluate on, whether their classes split into base and novel, the table's title, and the model
    the benchmark's published numbers use (None for --data)."""
    from cftool.data import DatasetSpec, get_benchmark, load_task

    if benchmark:
        bench = get_benchmark(benchmark)
        if sessions and bench.base2new:
            raise CftoolError(f"--sessions fills MTIL's matrix; --benchmark {benchmark} splits classes, use mtil-tiny")
        specs, base2new, title, model = list(bench.tasks), bench.base2new, bench.name, bench.default_model
    else:
        base2new = classes == BASE_AND_NOVEL
        specs = [DatasetSpec(source, classes=ALL_CLASSES if base2new else classes) for source in data]
        title, model = ", ".join(data) + ("" if classes == ALL_CLASSES else f", {classes} classes"), None
    return [load_task(spec, data_root) for spec in specs], base2new, title, model


def _print_report(payload: dict, evaluation, title: str, fmt: str, heatmap, plot, force: bool) -> None:
    if evaluation.sessions:
        emit_results(mtil_tables(title, payload), fmt, payload)
        cells = payload["cells"]
        console.print(f"{cells['measured']} cells measured, {cells['cached']} found in the cache")
        if heatmap is not None:
            from cftool.eval.plots import plot_matrices

            plot_matrices(payload, heatmap, force)
            console.print(f"wrote {heatmap}")
    elif evaluation.path is not None:
        emit_results([path_table(title, payload)], fmt, payload)
        if plot is not None:
            _plot_path(payload, plot, force)
    else:
        emit_results([accuracy_table(title, payload, evaluation.base2new)], fmt, payload)


def _input_files(columns: list[str], sessions: list[str], patterns: list[str], tasks: list[str]) -> list[Path]:
    """The files that the checkpoints' patterns and folders, --sessions and --prototypes name, found as the evaluation
    will find them: no output may replace one of them."""
    import glob

    from cftool.eval.compare import ZERO_SHOT, labelled_column
    from cftool.eval.mtil import resolve_sessions

    files = []
    for spec in columns:
        if spec != ZERO_SHOT:
            column = labelled_column(spec, tasks)
            files += [file for task in tasks for file in column.files_of(task) if file is not None]
    files += [file for spec in sessions for file in resolve_sessions(spec, len(tasks)).files]
    files += [Path(name) for pattern in patterns for name in glob.glob(pattern)]
    return files


def _base_of(specs: list[str], tasks: list[str], sessions: list[str] = ()) -> str | None:
    """The base model the first checkpoint file names (``zs`` names none)."""
    from cftool.eval.compare import ZERO_SHOT, labelled_column
    from cftool.eval.mtil import resolve_sessions
    from cftool.io.checkpoint import open_checkpoint
    from cftool.kinds.apply import ADAPTERS
    from cftool.zoo.base import recorded_base

    files = [labelled_column(spec, tasks).files_of(tasks[0])[0] for spec in specs if spec != ZERO_SHOT]
    files += [resolve_sessions(spec, len(tasks)).files[0] for spec in sessions]
    for first in files:
        with open_checkpoint(first, kind=tuple(ADAPTERS)) as ckpt:
            return recorded_base(ckpt.header, first)
    return None


def mtil_tables(title: str, payload: dict) -> list[ResultTable]:
    """Each method's matrix, then one table in the ConDU paper's layout: a column per task, then the average; rows
    grouped by metric (Transfer, Average, Last), one per method, beneath a row per other column (zero-shot…)."""
    tasks = payload["tasks"]
    tables = []
    for method in payload["methods"]:
        tables.append(
            ResultTable(
                f"{method['method']}: top-1 % after each session (rows) on each task (columns)",
                [Column("after", numeric=False), *[Column(task) for task in tasks]],
                [
                    [
                        [f"{session + 1} {tasks[session]}", *[f"{value:.1f}" for value in row]]
                        for session, row in enumerate(method["matrix"])
                    ]
                ],
            )
        )
    mode = (
        payload["mode"]
        + (", among every task's classes" if payload["label_space"] == UNION_LABEL_SPACE else "")
        + (
            f", top-{payload['top_k']}{' + zero-shot' if payload['zero_shot'] else ''} routing"
            if payload["methods"]
            else ""
        )
    )
    summary = ResultTable(
        f"MTIL on {title} ({mode}): top-1 %",
        [
            Column("", numeric=False),
            Column("method", numeric=False),
            *[Column(task) for task in tasks],
            Column("Average"),
        ],
        notes=[
            f"{row['model']} over tasks 2…{len(tasks)}, what Transfer compares with: {row['transfer_mean']:.1f}"
            for row in payload["columns"]
            if row["transfer_mean"] is not None
        ],
    )
    if payload["columns"]:
        summary.sections.append(
            [
                ["", row["model"], *[f"{value:.1f}" for value in row["accuracy"]], f"{row['mean']:.1f}"]
                for row in payload["columns"]
            ]
        )
    for metric in ("transfer", "average", "last"):
        if payload["methods"]:
            summary.sections.append(
                [
                    [
                        metric.title() if index == 0 else "",
                        method["method"],
                        *map(_dash, method[metric]),
                        _dash(method[f"{metric}_mean"]),
                    ]
                    for index, method in enumerate(payload["methods"])
                ]
            )
    return [*tables, summary]


def _dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _format(cell_mean: float, std: float | None) -> str:
    return f"{cell_mean:.1f}" if std is None else f"{cell_mean:.1f}±{std:.1f}"


# Each reported metric's column header.
METRIC_HEADERS = {"accuracy": "top-1", BASE_CLASSES: "Base", NOVEL_CLASSES: "Novel", "hm": "HM"}


def accuracy_table(title: str, payload: dict, base2new: bool) -> ResultTable:
    """Top-1 % per task in CoCoOp's layout, which fits a terminal with any number of models: a block per task (then
    the mean of several), a row per model; columns Base, Novel and HM for base-to-novel, top-1 otherwise."""
    models = payload["models"]
    averaged = any(len(m["seeds"]) > 1 for m in models)
    labels = _short_labels([model["model"] for model in models])
    metrics = (BASE_CLASSES, NOVEL_CLASSES, "hm") if base2new else ("accuracy",)
    table = ResultTable(
        f"top-1 % on {title}" + (" (mean±std over seeds)" if averaged else ""),
        [
            Column("task", numeric=False),
            Column("classes"),
            Column("model", numeric=False),
            *[Column(METRIC_HEADERS[metric]) for metric in metrics],
        ],
    )
    blocks = [
        (
            first["task"],
            f"{first['num_base_classes']}+{first['num_novel_classes']}" if base2new else str(first["num_classes"]),
            [model["results"][index] for model in models],
        )
        for index, first in enumerate(models[0]["results"])
    ]
    if len(blocks) > 1:  # one task's mean would repeat its block
        blocks.append(("mean", "", [model["mean"] for model in models]))
    for task, n_classes, rows in blocks:
        table.sections.append(
            [
                [task if index == 0 else "", n_classes if index == 0 else "", label, *_cells(row, metrics)]
                for index, (label, row) in enumerate(zip(labels, rows, strict=True))
            ]
        )
    return table


def _cells(row: dict, metrics: tuple[str, ...]) -> list[str]:
    std = row.get("std", {})
    return [_format(row[metric], std.get(metric)) for metric in metrics]


def _short_labels(labels: list[str]) -> list[str]:
    """File names without the suffix (``runs/seed{seed}/{task}/coop.safetensors`` → ``coop``), unless two clash."""
    short = [Path(label).name.removesuffix(".safetensors") for label in labels]
    return short if len(set(short)) == len(short) else labels


# The rows under a path's table: each curve's value in its loss column (name, report key, number format).
PATH_SUMMARY = (
    ("max loss", "max_loss", ".3f"),
    ("barrier", "barrier", ".3f"),
    ("barrier at α", "barrier_alpha", ".2f"),
)


def path_table(title: str, payload: dict) -> ResultTable:
    """Loss and top-1 % at each α: a pair of columns per task under the task's name; then max loss, the loss barrier
    (the most the loss rises above the straight line between the ends) and the α where it is."""
    path = payload["path"]
    table = ResultTable(f"loss and top-1 % along {path['a']} → {path['b']} ({path['kind']}) on {title}", [Column("α")])
    for curve in payload["curves"]:
        label = curve["task"] + ("" if curve["classes"] == ALL_CLASSES else f" {curve['classes']}")
        table.columns += [Column("loss", group=label), Column("top-1", group=label)]
    table.sections.append(
        [
            [
                f"{alpha:.2f}",
                *[
                    cell
                    for curve in payload["curves"]
                    for cell in (f"{curve['loss'][index]:.3f}", f"{curve['accuracy'][index]:.1f}")
                ],
            ]
            for index, alpha in enumerate(payload["alphas"])
        ]
    )
    table.sections.append(
        [
            [name, *[cell for curve in payload["curves"] for cell in (format(curve[key], spec), "")]]
            for name, key, spec in PATH_SUMMARY
        ]
    )
    return table


def _check_figures(figures: dict[str, Path | None]) -> None:
    """Before any work (and before any output folder is made): matplotlib, and a format each figure's suffix names."""
    from cftool.eval.plots import figure_format

    for flag, output in figures.items():
        if output is not None:
            figure_format(flag, output)


def _plot_path(payload: dict, output: Path, overwrite: bool) -> None:
    from cftool.eval.plots import plot_path

    plot_path(payload, output, overwrite)
    console.print(f"wrote {output}")


def _recorded_data_hint(names: list[str]) -> str:
    """'; FILE was trained on --data X --classes base: add --data X --classes base,novel' for the first named file
    that records its training data, so a bare `cftool eval coop.safetensors` says what to add; '' when none does."""
    from cftool.io.header import read_cftool_header

    for name in names:
        try:
            header = read_cftool_header(name)
        except CftoolError:  # not a file, or not one of ours: the evaluation itself says so once data is given
            continue
        config = header.config or {}
        recorded, root = config.get("data"), config.get("data_root")
        if isinstance(recorded, dict) and isinstance(recorded.get("source"), str):
            # The root its coop:/mtil: data was read under, which a new shell has no variable for.
            trained = f"--data {recorded['source']}" + (f" --data-root {root}" if isinstance(root, str) else "")
            classes = recorded.get("classes", ALL_CLASSES)
            if classes == ALL_CLASSES:
                return f"; {name} was trained on {trained}: add {trained}"
            # A half of the classes was trained on: base and novel together are what the protocol reports.
            return f"; {name} was trained on {trained} --classes {classes}: add {trained} --classes {BASE_AND_NOVEL}"
    return ""
