"""Evaluation protocols over sets of checkpoints: one column per model, per-task checkpoints, seeds averaged.

A column is what `cftool eval` is given for one model:

* ``zs`` — the zero-shot model itself;
* a checkpoint file — applied to the base for every task;
* a pattern with ``{task}`` (``runs/{task}/coop.safetensors``) — each task's own checkpoint; ``{seed}`` in it
  (``runs/seed{seed}/{task}/coop.safetensors``) matches every seed on disk, and the column reports their mean
  (and spread);
* a folder — the checkpoint of each task found in it by its ``cftool.task`` metadata.

Image features of a task are encoded once and reused by every checkpoint that leaves the encoders as they are
(prompts and heads), so a table of many prompts costs one pass over the images.
"""

from __future__ import annotations

import glob
import re
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cftool.data import TaskData, class_subset
from cftool.encode.features import image_features
from cftool.encode.zero_shot import HeadFn, encode_images, zero_shot_head
from cftool.errors import CftoolError
from cftool.io.header import read_header
from cftool.kinds.apply import ADAPTERS, BaseState, applied, open_applicable
from cftool.metrics import harmonic_mean, top1_accuracy
from cftool.options import BASE_CLASSES, NOVEL_CLASSES
from cftool.zoo import ZooModel

ZERO_SHOT = "zs"
TASK_FIELD = "{task}"
SEED_FIELD = "{seed}"
HALVES = (BASE_CLASSES, NOVEL_CLASSES)


@dataclass(frozen=True)
class Column:
    """One model of a comparison: for each task, the checkpoints whose results are averaged (one per seed), or
    none for the zero-shot model."""

    label: str
    files: dict[str, list[Path]] | None  # task name -> checkpoint per seed; None: the zero-shot model
    seeds: list[str] = field(default_factory=list)

    def files_of(self, task: str) -> list[Path | None]:
        return [None] if self.files is None else list(self.files[task])


def resolve_column(spec: str, tasks: list[str]) -> Column:
    """Turn one `eval` argument into a column over ``tasks`` (see the module docstring)."""
    if spec == ZERO_SHOT:
        return Column("zero-shot", None)
    path = Path(spec)
    if TASK_FIELD not in spec and path.is_dir():
        return _folder_column(path, tasks)
    if TASK_FIELD not in spec and SEED_FIELD not in spec:
        return Column(spec, {task: [path] for task in tasks})
    files, seeds = {}, None
    for task in tasks:
        found = _seed_files(spec.replace(TASK_FIELD, task))
        if not found:
            raise CftoolError(
                f"{spec}: no checkpoint for task {task!r} ({spec.replace(TASK_FIELD, task)} matches no file)"
            )
        if seeds is not None and list(found) != seeds:
            raise CftoolError(
                f"{spec}: task {task!r} has seeds {', '.join(found)} but {tasks[0]!r} has {', '.join(seeds)}; "
                "train every task with the same seeds"
            )
        seeds = list(found)
        files[task] = list(found.values())
    return Column(spec, files, seeds if SEED_FIELD in spec else [])


def _seed_files(pattern: str) -> dict[str, Path]:
    """Files matching a pattern with at most one ``{seed}`` field, by seed in numeric order (``""``: no field)."""
    if SEED_FIELD not in pattern:
        return {"": Path(pattern)} if Path(pattern).is_file() else {}
    prefix, _, suffix = pattern.partition(SEED_FIELD)
    seed_of = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
    found = {}
    for name in glob.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        match = seed_of.fullmatch(name)
        if match and Path(name).is_file():
            found[match.group(1)] = Path(name)
    return dict(sorted(found.items(), key=lambda item: int(item[0])))


def _folder_column(folder: Path, tasks: list[str]) -> Column:
    by_task: dict[str, list[Path]] = {}
    for candidate in sorted(folder.glob("*.safetensors")):
        metadata = read_header(candidate)[1]
        if metadata.get("cftool.kind") in ADAPTERS and metadata.get("cftool.task") in tasks:
            by_task.setdefault(metadata["cftool.task"], []).append(candidate)
    missing = [task for task in tasks if task not in by_task]
    if missing:
        raise CftoolError(f"{folder}: holds no checkpoint of task(s) {', '.join(missing)}; name each task's file")
    several = [task for task in tasks if len(by_task[task]) > 1]
    if several:
        names = ", ".join(p.name for p in by_task[several[0]])
        raise CftoolError(f"{folder}: holds several checkpoints of task {several[0]!r} ({names}); use a pattern")
    return Column(str(folder), {task: by_task[task] for task in tasks})


@dataclass
class Cell:
    """A column's result on one task (or one class half): per-seed accuracies, their mean and their spread.

    ``value`` replaces the mean where the protocol defines the reported number otherwise (HM, see ``with_hm``)."""

    accuracies: list[float]
    value: float | None = None

    @property
    def mean(self) -> float:
        return statistics.mean(self.accuracies) if self.value is None else self.value

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


class FeatureCache:
    """Zero-shot image features of evaluation splits, shared by every checkpoint that keeps the base encoders: in
    memory, and across runs in ``cache_dir`` (keyed by the base weights, the images and the preprocessing)."""

    def __init__(
        self,
        zoo: ZooModel,
        batch_size: int,
        workers: int,
        advance: Callable[[int], None],
        cache_dir: Path | None = None,
    ):
        self.zoo, self.batch_size, self.workers, self.advance = zoo, batch_size, workers, advance
        self.cache_dir = cache_dir
        self._stored: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, task: TaskData, split: str, base_weights: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not base_weights:  # a checkpoint that changes the encoders: its features are its own
            dataset = task.split(split, self.zoo.preprocess)
            return encode_images(self.zoo, dataset, self.batch_size, self.workers, self.advance)
        key = (task.spec.to_json(), split)
        if key not in self._stored:
            dataset = task.split(split, self.zoo.preprocess)
            self._stored[key] = image_features(
                self.zoo, dataset, self.cache_dir, self.batch_size, self.workers, self.advance
            )
        return self._stored[key]


def halves_of(task: TaskData) -> list[TaskData]:
    return [
        TaskData(task.spec.with_classes(classes), task.source, class_subset(len(task.source.classnames), classes))
        for classes in HALVES
    ]


def evaluate_columns(
    zoo: ZooModel,
    columns: list[Column],
    tasks: list[TaskData],
    split: str,
    base2new: bool,
    cache: FeatureCache,
    base_sha256: str | None,
) -> dict[str, dict[str, dict[str, Cell]]]:
    """Accuracy of every column on every task: ``{column label: {task: {"accuracy": Cell}}}``, or with
    ``base2new`` the cells ``base`` and ``novel`` (each half within its own label space, CoOp's protocol)."""
    base_state = BaseState(zoo)
    results = {}
    for column in columns:
        per_task = {}
        for task in tasks:
            cells: dict[str, Cell] = {}
            for path in column.files_of(task.name):
                with _applied(zoo, path, base_state, base_sha256, task.name) as (head, base_weights):
                    for name, part in zip(HALVES, halves_of(task), strict=True) if base2new else [("accuracy", task)]:
                        features, labels = cache.get(part, split, base_weights)
                        accuracy = top1_accuracy(features @ head(zoo, part.classnames, part.templates), labels)
                        cells.setdefault(name, Cell([])).accuracies.append(accuracy)
            per_task[task.name] = cells
        results[column.label] = per_task
    return results


@contextmanager
def _applied(
    zoo: ZooModel, path: Path | None, base_state: BaseState, base_sha256: str | None, task: str
) -> Iterator[tuple[HeadFn, bool]]:
    """The head function of a checkpoint applied to the zoo for ``task`` (or of the zero-shot model), and whether the
    encoders are still the base's; weights a checkpoint replaced are restored afterwards."""
    if path is None:
        yield zero_shot_head, True
        return
    with open_applicable(path, zoo, base_sha256) as ckpt, applied(zoo, ckpt, base_state, task) as result:
        yield result


def with_hm(cells: dict[str, Cell]) -> dict[str, Cell]:
    """Base and novel cells and their HM. As in the papers, the HM reported is that of the seed-averaged base and
    novel accuracies; its spread is that of each seed's HM."""
    base, novel = cells[BASE_CLASSES], cells[NOVEL_CLASSES]
    per_seed = [harmonic_mean(b, n) for b, n in zip(base.accuracies, novel.accuracies, strict=True)]
    return {**cells, "hm": Cell(per_seed, value=harmonic_mean(base.mean, novel.mean))}


def mean_row(per_task: dict[str, dict[str, Cell]], base2new: bool) -> dict[str, Cell]:
    """The average over tasks, taken per seed so that its spread is that of the benchmark average across seeds;
    with base2new its HM is the harmonic mean of the averaged base and novel accuracies (the papers' Average row)."""
    names = HALVES if base2new else ("accuracy",)
    n_seeds = len(next(iter(per_task.values()))[names[0]].accuracies)
    row = {
        name: Cell([statistics.mean(cells[name].accuracies[s] for cells in per_task.values()) for s in range(n_seeds)])
        for name in names
    }
    return with_hm(row) if base2new else row


def compare(
    zoo: ZooModel,
    specs: list[str],
    tasks: list[TaskData],
    base2new: bool,
    split: str,
    cache: FeatureCache,
    base_sha256: str | None,
) -> dict[str, Any]:
    """`eval`'s report: each column's metrics per task and their mean row (with spread and per-seed values when a
    column averages seeds)."""
    columns = [resolve_column(spec, [task.name for task in tasks]) for spec in specs]
    results = evaluate_columns(zoo, columns, tasks, split, base2new, cache, base_sha256)
    models = []
    for column in columns:
        rows = []
        for task in tasks:
            cells = results[column.label][task.name]
            n_classes = len(task.classnames)
            sizes = (
                {
                    "num_base_classes": len(class_subset(n_classes, BASE_CLASSES)),
                    "num_novel_classes": len(class_subset(n_classes, NOVEL_CLASSES)),
                }
                if base2new
                else {"num_classes": n_classes, "num_images": len(task.split(split))}
            )
            rows.append(
                {
                    "task": task.name,
                    "classes": task.spec.classes,
                    **_metrics(with_hm(cells) if base2new else cells),
                    **sizes,
                }
            )
        files = (
            None if column.files is None else {task: [str(p) for p in paths] for task, paths in column.files.items()}
        )
        mean = _metrics(mean_row(results[column.label], base2new))
        models.append({"model": column.label, "seeds": column.seeds, "files": files, "results": rows, "mean": mean})
    return {"models": models}


def _metrics(cells: dict[str, Cell]) -> dict[str, Any]:
    """A row's reported values; with several seeds also their spread and each seed's value."""
    row: dict[str, Any] = {name: cell.mean for name, cell in cells.items()}
    if len(next(iter(cells.values())).accuracies) > 1:
        row["std"] = {name: cell.std for name, cell in cells.items()}
        row["per_seed"] = {name: cell.accuracies for name, cell in cells.items()}
    return row


LABEL_SEPARATOR = "="


def split_label(spec: str) -> tuple[str | None, str]:
    """``LABEL=SPEC`` names a column or a session sequence in tables (``'ConDU=runs/condu/session{t}.st'``); a spec
    that is itself an existing file, or whose part before ``=`` looks like a path, has no label."""
    label, separator, rest = spec.partition(LABEL_SEPARATOR)
    if separator and label.strip() and rest and "/" not in label and not Path(spec).exists():
        return label.strip(), rest
    return None, spec


def labelled_column(spec: str, tasks: list[str]) -> Column:
    label, spec = split_label(spec)
    column = resolve_column(spec, tasks)
    return column if label is None else Column(label, column.files, column.seeds)
