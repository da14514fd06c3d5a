"""Datasets: spec strings, readers (toy world, ImageFolder, CoOp's and MTIL's layouts) and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

from cftool.data.benchmarks import BENCHMARKS, Benchmark, get_benchmark, toy_source
from cftool.data.coop import coop_source
from cftool.data.folder import FolderSource
from cftool.data.mtil_datasets import mtil_source
from cftool.data.specs import (
    DATA_ROOT_ENV,
    DEFAULT_DATA_ROOT,
    DatasetSpec,
    ImageSource,
    TaskData,
    TaskSplit,
    class_subset,
)
from cftool.errors import CftoolError

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "DatasetSpec",
    "ImageSource",
    "TaskData",
    "TaskSplit",
    "class_subset",
    "get_benchmark",
    "load_task",
    "parse_source",
    "resolve_data_root",
]

SPEC_FORMS = "toy:TASK, folder:PATH, coop:NAME or mtil:NAME"


def resolve_data_root(data_root: Path | None) -> Path:
    """Where real datasets live: ``--data-root``, else ``$CFTOOL_DATA_ROOT``, else ``./data``."""
    if data_root is not None:
        return data_root
    from_env = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(from_env) if from_env else DEFAULT_DATA_ROOT


def parse_source(source: str, data_root: Path | None) -> ImageSource:
    kind, sep, rest = source.partition(":")
    if not sep or not rest:
        raise CftoolError(f"--data {source!r}: expected {SPEC_FORMS}")
    if kind == "toy":
        return toy_source(rest)
    if kind == "folder":
        return FolderSource(Path(rest))
    if kind == "coop":
        return coop_source(rest, resolve_data_root(data_root))
    if kind == "mtil":
        return mtil_source(rest, resolve_data_root(data_root))
    raise CftoolError(f"--data {source!r}: unknown dataset kind '{kind}'; expected {SPEC_FORMS}")


def load_task(spec: DatasetSpec | str, data_root: Path | None = None) -> TaskData:
    if isinstance(spec, str):
        spec = DatasetSpec(spec)
    source = parse_source(spec.source, data_root)
    class_ids = class_subset(len(source.classnames), spec.classes)
    if not class_ids:
        raise CftoolError(
            f"{spec.source}: has {len(source.classnames)} class(es), so its {spec.classes} half is empty; "
            "base-to-novel needs at least two classes"
        )
    return TaskData(spec, source, class_ids)
