"""Datasets: spec strings, readers (toy world, ImageFolder, CoOp's and MTIL's layouts) and benchmarks."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cftool.data.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from cftool.data.coop import coop_source
from cftool.data.folder import FolderSource
from cftool.data.mtil.readers import mtil_source
from cftool.data.specs import (
    DATA_ROOT_ENV,
    DEFAULT_DATA_ROOT,
    DatasetSpec,
    ImageSource,
    TaskData,
    TaskSplit,
    class_subset,
)
from cftool.data.toy import toy_source
from cftool.errors import CftoolError
from cftool.options import COOP_DATA, DATA_SPEC_FORMS, FOLDER_DATA, MTIL_DATA, TOY_DATA

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "DatasetSpec",
    "ImageSource",
    "TaskData",
    "TaskSplit",
    "class_subset",
    "find_data",
    "get_benchmark",
    "load_task",
    "parse_source",
    "recorded_data",
    "resolve_data_root",
]

# The kinds of spec whose NAME is read under a data root (the others name their images themselves).
ROOTED_KINDS = (COOP_DATA, MTIL_DATA)


def resolve_data_root(data_root: Path | None) -> Path:
    """Where real datasets live: ``--data-root``, else ``$CFTOOL_DATA_ROOT``, else ``./data``."""
    if data_root is not None:
        return data_root
    from_env = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(from_env) if from_env else DEFAULT_DATA_ROOT


def recorded_data(spec: DatasetSpec, data_root: Path | None) -> tuple[DatasetSpec, str | None]:
    """What a trained file records of its data, so that it is found again from any folder and shell: the spec (a
    ``folder:`` path made absolute) and the absolute data root a ``coop:``/``mtil:`` spec was read under."""
    kind, _, rest = spec.source.partition(":")
    if kind == FOLDER_DATA:
        return replace(spec, source=f"{FOLDER_DATA}:{Path(rest).absolute()}"), None
    if kind in ROOTED_KINDS:
        return spec, os.path.abspath(resolve_data_root(data_root))  # '..' taken out, symbolic links kept
    return spec, None


def find_data(spec: DatasetSpec, data_root: Path | None, recorded_root: str | None) -> Path | None:
    """The data root that holds ``spec``'s data, checked before any model is loaded (the spec resolves and its
    training images are there): ``--data-root`` or ``$CFTOOL_DATA_ROOT`` when given, else the root a file recorded
    while it still holds the data, else ./data. A one-line error names every root tried."""
    if spec.source.partition(":")[0] not in ROOTED_KINDS:
        roots = [data_root]
    elif data_root is not None or os.environ.get(DATA_ROOT_ENV, "").strip():
        roots = [resolve_data_root(data_root)]
    else:
        roots = list(dict.fromkeys([*([Path(recorded_root)] if recorded_root else []), DEFAULT_DATA_ROOT]))
    errors = []
    for root in roots:
        try:
            load_task(spec, root).split("train").fingerprint()  # stats every training image
            return root
        except CftoolError as err:
            errors.append(err)
    if len(roots) == 1:
        raise errors[0]
    reason = str(errors[0]).removeprefix(f"{spec.source}: ")
    raise CftoolError(
        f"{spec.source}: neither under the data root it was trained from, {recorded_root}, nor under "
        f"{DEFAULT_DATA_ROOT.absolute()} ({reason})"
    )


def parse_source(source: str, data_root: Path | None) -> ImageSource:
    kind, sep, rest = source.partition(":")
    if not sep or not rest:
        raise CftoolError(f"--data {source!r}: expected {DATA_SPEC_FORMS}")
    if kind == TOY_DATA:
        return toy_source(rest)
    if kind == FOLDER_DATA:
        return FolderSource(Path(rest))
    if kind == COOP_DATA:
        return coop_source(rest, resolve_data_root(data_root))
    if kind == MTIL_DATA:
        return mtil_source(rest, resolve_data_root(data_root))
    raise CftoolError(f"--data {source!r}: unknown dataset kind '{kind}'; expected {DATA_SPEC_FORMS}")


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
