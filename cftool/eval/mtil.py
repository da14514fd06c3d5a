"""MTIL's continual protocol (ZSCL's, docs/design.md §5.4): the accuracy matrix of a continual method over its
sessions.

A session sequence (``--sessions``) is one continual method: the checkpoint after each session (a unified set, a
model, a LoRA or a delta), session ``t`` having learned the first ``t`` tasks. Its accuracy matrix ``A[t][j]`` gives
Transfer, Average and Last (``cftool.metrics.mtil_metrics``). A unified set answers a task it has learned with that
task's expert and the others by routing (``cftool.eval.route``); every cell is cached by the hash of what determines it,
so a table re-run after a new session measures only that session's cells.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cftool.data import TaskData
from cftool.encode.zero_shot import LabelSpace
from cftool.errors import CftoolError
from cftool.eval.compare import ZERO_SHOT, FeatureCache, labelled_column, split_label
from cftool.eval.route import RouteOptions, TaskPrototypes, prototype_files, prototypes_of, read_prototypes, route_split
from cftool.io.checkpoint import CheckpointReader, file_sha256, tensors_sha256
from cftool.io.header import DELTA_KIND, UNIFIED_KIND, check_input_file, read_cftool_header
from cftool.io.outputs import atomic_output
from cftool.io.remembered_hashes import cache_root
from cftool.io.unified import TASKS_KEY, UnifiedSet, parse_tasks
from cftool.kinds.apply import BaseState, applied, open_applicable
from cftool.metrics import mtil_metrics, top1_accuracy
from cftool.options import LABEL_SPACE, LABEL_SPACES, UNION_LABEL_SPACE
from cftool.zoo import ZooModel

SESSION_FIELD = "{t}"
# Bumped whenever what a cached accuracy means changes, so that older cells are never read as newer ones.
CELL_VERSION = 1


@dataclass(frozen=True)
class SessionSequence:
    """One continual method: the checkpoint after each session, in session order (session t learned tasks 1…t)."""

    label: str
    files: list[Path]


def resolve_sessions(spec: str, n_tasks: int) -> SessionSequence:
    """``[LABEL=]PATTERN`` with ``{t}`` (sessions 1, 2, … while the files exist) or a comma-separated list of files
    in session order; at most one session per task."""
    label, spec = split_label(spec)
    if SESSION_FIELD in spec:
        files = []
        for t in range(1, n_tasks + 1):
            path = Path(spec.replace(SESSION_FIELD, str(t)))
            if not path.is_file():
                later = [s for s in range(t + 1, n_tasks + 1) if Path(spec.replace(SESSION_FIELD, str(s))).is_file()]
                if later:
                    raise CftoolError(
                        f"--sessions {spec}: session {t} ({path}) is missing but session {later[0]} exists; sessions "
                        "run 1, 2, … without gaps"
                    )
                break
            files.append(path)
        if not files:
            raise CftoolError(f"--sessions {spec}: no session file ({spec.replace(SESSION_FIELD, '1')} does not exist)")
    else:
        files = [check_input_file(name.strip()) for name in spec.split(",") if name.strip()]
        if not files:
            raise CftoolError(f"--sessions {spec!r}: names no file; give a pattern with {{t}} or files in order")
    if len(files) > n_tasks:
        raise CftoolError(f"--sessions {spec}: {len(files)} sessions for {n_tasks} tasks; a session learns one task")
    return SessionSequence(label or spec, files)


def learned_tasks(path: Path) -> tuple[list[str], bool] | None:
    """The tasks a session file records, and whether that is all it has learned: a unified set's tasks or a merged
    delta's inputs are; a fine-tune (or its delta) names only the task it was trained on last. None where the
    file names no task (an imported model, say)."""
    header = read_cftool_header(path)
    if header.kind == UNIFIED_KIND:
        return [entry.task for entry in parse_tasks(path, header.extra.get(TASKS_KEY))], True
    merged = (header.config or {}).get("tasks") if header.kind == DELTA_KIND else None
    if isinstance(merged, list) and merged and all(isinstance(task, str) for task in merged):
        return merged, True
    return ([header.task], False) if header.task else None


def check_session_order(sequence: SessionSequence, names: list[str]) -> None:
    """Session t must have learned the table's first t tasks (its columns' order): Transfer reads the sessions before
    a task's as not having learned it, so sessions of another order would give numbers that mean nothing."""
    for t, path in enumerate(sequence.files, start=1):
        recorded = learned_tasks(path)
        if recorded is None:
            continue
        tasks, complete = recorded
        matches = set(tasks) == set(names[:t]) if complete else tasks[-1] == names[t - 1]
        if matches:
            continue
        learned = f"has learned {', '.join(tasks)}" if complete else f"was trained on {tasks[-1]}"
        expected = ", ".join(names[:t]) if complete else names[t - 1]
        raise CftoolError(
            f"--sessions {sequence.label}: session {t} ({path}) {learned}, but session {t} of this table learns "
            f"{expected} (the table's tasks in order: {', '.join(names)}); name the sessions in the order they were "
            "trained, and give --data once per task, in that order, for another task order"
        )


def default_cache_dir() -> Path:
    """Where cached MTIL cells live unless `--cache-dir` says otherwise: ``$XDG_CACHE_HOME/cftool/eval``."""
    return cache_root() / "eval"


class CellCache:
    """Accuracies already measured, one small JSON file per cell, named by the hash of everything that determines it
    (the checkpoint's bytes, the base, the data, the split, how the cell is answered)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.found = self.measured = 0  # cells read from the folder, and cells measured (and stored) anew

    def _file(self, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"cell-{digest}.json"

    def get(self, key: dict[str, Any]) -> float | None:
        path = self._file(key)
        try:
            stored = json.loads(path.read_text()) if path is not None and path.is_file() else None
        except (OSError, ValueError):
            return None  # a damaged cell is measured again and replaced
        if not (isinstance(stored, dict) and stored.get("key") == key and _is_accuracy(stored.get("accuracy"))):
            return None  # another cell's file, or one edited by hand: measured again and replaced
        self.found += 1
        return float(stored["accuracy"])

    def put(self, key: dict[str, Any], accuracy: float) -> None:
        self.measured += 1
        path = self._file(key)
        if path is not None:
            with atomic_output(path, overwrite=True) as tmp:
                tmp.write_text(json.dumps({"key": key, "accuracy": accuracy}, sort_keys=True) + "\n")


def _is_accuracy(value: object) -> bool:
    """What `put` stores: a top-1 accuracy in percent (JSON may read it back as an int, or as NaN if edited)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100


@dataclass(frozen=True)
class MtilOptions:
    task_agnostic: bool = False  # route every cell of a unified set, learned tasks too (no task id)
    route: RouteOptions = field(default_factory=RouteOptions)
    prototypes: tuple[str, ...] = ()  # patterns of the prototype files routing reads
    label_space: str = LABEL_SPACE  # see LABEL_SPACES; union without the task id only

    def __post_init__(self) -> None:
        if self.label_space not in LABEL_SPACES:
            raise CftoolError(f"--label-space must be one of {', '.join(LABEL_SPACES)}, got {self.label_space!r}")
        if self.label_space == UNION_LABEL_SPACE and not self.task_agnostic:
            raise CftoolError(
                f"--label-space {UNION_LABEL_SPACE} classifies among every task's classes, which is what having no "
                "task id means: add --task-agnostic (with the task id, each task's own classes are the label space)"
            )


class CellEvaluator:
    """The accuracy of one checkpoint (or the zero-shot model) on one task, measured once and cached.

    A unified set answers a task it has learned with that task's expert; a task it has not learned (or any task,
    with ``task_agnostic``) by routing: the zero-shot model and the top-K experts of the set. A model, LoRA or delta
    answers every task itself.
    """

    def __init__(
        self,
        zoo: ZooModel,
        split: str,
        features: FeatureCache,
        cells: CellCache,
        base_sha256: str,
        options: MtilOptions,
        advance_cell: Callable[[], None] = lambda: None,
        tasks: list[TaskData] | None = None,
    ):
        """``tasks``: the table's tasks, whose classes make the label space under ``options.label_space='union'``."""
        self.zoo, self.split, self.features, self.cells = zoo, split, features, cells
        self.base_sha256, self.options, self.advance_cell = base_sha256, options, advance_cell
        self.tasks = tasks or []
        self.base_state = BaseState(zoo)
        self._hashes: dict[Path, str] = {}
        self._data: dict[str, dict[str, Any]] = {}
        self._prototypes: dict[str, TaskPrototypes] | None = None

    def _space(self, task: TaskData) -> LabelSpace:
        if self.options.label_space == UNION_LABEL_SPACE:
            return LabelSpace.union(self.tasks, task)
        return LabelSpace.own(task)

    def _key(self, task: TaskData, checkpoint: str, answer: str, **details: Any) -> dict[str, Any]:
        # A cell of the union label space also depends on every other task's classes; own-space keys stay as they
        # were, so the cells already cached are found.
        union = {"label_space": self._space(task).key()} if self.options.label_space == UNION_LABEL_SPACE else {}
        return {
            "version": CELL_VERSION,
            "base_sha256": self.base_sha256,
            "checkpoint": checkpoint,
            "data": self._data_key(task),
            "answer": answer,
            **union,
            **details,
        }

    def _data_key(self, task: TaskData) -> dict[str, Any]:
        """What the images and labels of the split are (a folder's files by path, size and mtime), and the label
        space the heads are built for."""
        spec = task.spec.to_json()
        if spec not in self._data:
            self._data[spec] = {
                "spec": json.loads(spec),
                "split": self.split,
                "images": task.split(self.split).fingerprint(),
                "classnames": task.classnames,
                "templates": task.templates,
            }
        return self._data[spec]

    def _measured(self, key: dict[str, Any], measure: Callable[[], float]) -> float:
        accuracy = self.cells.get(key)
        if accuracy is None:
            accuracy = measure()
            self.cells.put(key, accuracy)
        self.advance_cell()
        return accuracy

    def zero_shot(self, task: TaskData) -> float:
        def measure() -> float:
            features, labels = self.features.get(task, self.split, base_weights=True)
            space = self._space(task)
            return top1_accuracy(features @ space.head(self.zoo), space.labels(labels))

        return self._measured(self._key(task, ZERO_SHOT, "zero-shot"), measure)

    def accuracy(self, path: Path, task: TaskData) -> float:
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        digest = self._hashes[path]
        with open_applicable(path, self.zoo, self.base_sha256) as ckpt:
            if ckpt.header.kind != UNIFIED_KIND:
                return self._measured(self._key(task, digest, "checkpoint"), lambda: self._applied(ckpt, task))
            unified = UnifiedSet(ckpt)
            if task.name in unified.task_names and not self.options.task_agnostic:
                return self._measured(self._key(task, digest, "expert"), lambda: self._applied(ckpt, task))
            prototypes = prototypes_of(unified, self._known_prototypes())
            route = self.options.route
            key = self._key(
                task,
                digest,
                "route",
                top_k=route.top_k,
                zero_shot=route.include_zero_shot,
                prototypes=tensors_sha256(dict(zip(unified.task_names, prototypes, strict=True))),
            )
            return self._measured(key, lambda: self._routed(unified, task, prototypes))

    def _applied(self, ckpt: CheckpointReader, task: TaskData) -> float:
        with applied(self.zoo, ckpt, self.base_state, task.name) as (head, base_weights):
            features, labels = self.features.get(task, self.split, base_weights)
            space = self._space(task)
            return top1_accuracy(features @ space.head(self.zoo, head), space.labels(labels))

    def _routed(self, unified: UnifiedSet, task: TaskData, prototypes: list[torch.Tensor]) -> float:
        features, labels = self.features.get(task, self.split, base_weights=True)
        routed = route_split(
            self.zoo,
            unified,
            task,
            self.split,
            features,
            labels,
            prototypes,
            self.options.route,
            self.base_state,
            self._space(task),
        )
        return routed.accuracy

    def _known_prototypes(self) -> dict[str, TaskPrototypes]:
        if self._prototypes is None:
            if not self.options.prototypes:
                raise CftoolError(
                    "a unified session answers the tasks it has not learned by routing, which needs the tasks' "
                    "prototypes: add --prototypes 'runs/*.prototypes.safetensors'"
                )
            embed_dim = self.zoo.model.text_projection.shape[-1]
            files = prototype_files(self.options.prototypes)
            self._prototypes = read_prototypes(files, self.zoo, self.base_sha256, embed_dim)
        return self._prototypes


def mtil_report(
    zoo: ZooModel,
    column_specs: list[str],
    session_specs: list[str],
    tasks: list[TaskData],
    split: str,
    options: MtilOptions,
    cache_dir: Path | None,
    progress: Callable[[str, int | None], Callable[..., None]] = lambda description, total: lambda n=1: None,
) -> dict[str, Any]:
    """`eval --sessions`: the accuracy matrix of each session sequence over ``tasks`` (in training order) with its
    Transfer, Average and Last, and single rows (zero-shot, individual fine-tunes) for the other columns.

    Every accuracy is cached in ``cache_dir`` under the hash of what determines it, so a table re-run after a new
    session measures only that session's cells."""
    names = [task.name for task in tasks]
    columns = [labelled_column(spec, names) for spec in column_specs]
    sequences = [resolve_sessions(spec, len(tasks)) for spec in session_specs]
    for sequence in sequences:
        check_session_order(sequence, names)
    n_cells = sum(len(column.files_of(name)) for column in columns for name in names)
    n_cells += len(tasks) * sum(len(sequence.files) for sequence in sequences)
    features = FeatureCache(zoo, options.route.batch_size, options.route.workers, progress("encode images", None))
    cells = CellCache(cache_dir)
    evaluator = CellEvaluator(
        zoo, split, features, cells, zoo.weights_sha256, options, progress("cells", n_cells), tasks
    )
    rows = []
    for column in columns:
        accuracies = [
            statistics.mean(
                evaluator.zero_shot(task) if path is None else evaluator.accuracy(path, task)
                for path in column.files_of(task.name)
            )
            for task in tasks
        ]
        files = (
            None if column.files is None else {task: [str(p) for p in paths] for task, paths in column.files.items()}
        )
        # Over tasks 2…n: the Transfer of a continual method that kept this model, to compare Transfer rows with.
        transfer_mean = statistics.mean(accuracies[1:]) if len(accuracies) > 1 else None
        rows.append(
            {
                "model": column.label,
                "files": files,
                "accuracy": accuracies,
                "mean": statistics.mean(accuracies),
                "transfer_mean": transfer_mean,
            }
        )
    methods = []
    for sequence in sequences:
        matrix = [[evaluator.accuracy(path, task) for task in tasks] for path in sequence.files]
        methods.append(
            {
                "method": sequence.label,
                "sessions": [str(p) for p in sequence.files],
                "matrix": matrix,
                **mtil_metrics(matrix),
            }
        )
    return {
        "tasks": names,
        "split": split,
        "mode": "task-agnostic" if options.task_agnostic else "task-id",
        "label_space": options.label_space,
        "top_k": options.route.top_k,
        "zero_shot": options.route.include_zero_shot,
        "columns": rows,
        "methods": methods,
        "cells": {"measured": cells.measured, "cached": cells.found},
    }
