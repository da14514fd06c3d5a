"""Datasets: spec strings, readers (toy world, ImageFolder, CoOp layout) and benchmarks."""

from __future__ import annotations

from pathlib import Path

from cftool.data.benchmarks import BENCHMARKS, KNOWN_BENCHMARKS, Benchmark, get_benchmark, toy_source
from cftool.data.coop import coop_source
from cftool.data.folder import FolderSource
from cftool.data.specs import DatasetSpec, ImageSource, TaskData, TaskSplit, class_subset
from cftool.errors import CftoolError

__all__ = [
    "BENCHMARKS",
    "KNOWN_BENCHMARKS",
    "Benchmark",
    "DatasetSpec",
    "ImageSource",
    "TaskData",
    "TaskSplit",
    "class_subset",
    "get_benchmark",
    "load_task",
    "parse_source",
]


def parse_source(source: str, data_root: Path | None) -> ImageSource:
    kind, sep, rest = source.partition(":")
    if not sep or not rest:
        raise CftoolError(f"--data {source!r}: expected toy:TASK, folder:PATH or coop:NAME")
    if kind == "toy":
        return toy_source(rest)
    if kind == "folder":
        return FolderSource(Path(rest))
    if kind == "coop":
        return coop_source(rest, data_root)
    raise CftoolError(f"--data {source!r}: unknown dataset kind '{kind}'; expected toy:TASK, folder:PATH or coop:NAME")


def load_task(spec: DatasetSpec | str, data_root: Path | None = None) -> TaskData:
    if isinstance(spec, str):
        spec = DatasetSpec(spec)
    source = parse_source(spec.source, data_root)
    return TaskData(spec, source, class_subset(len(source.classnames), spec.classes))
