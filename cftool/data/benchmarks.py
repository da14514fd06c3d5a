"""Benchmarks (`--benchmark`): named lists of tasks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cftool.data.coop import COOP_BASE2NEW_ORDER
from cftool.data.mtil.tables import MTIL_ORDER, MTIL_ORDER_II
from cftool.data.specs import DatasetSpec
from cftool.data.toy import TOY_TASKS
from cftool.errors import CftoolError
from cftool.options import (
    BASE2NEW,
    BASE2NEW_TINY,
    COOP_DATA,
    MTIL,
    MTIL_DATA,
    MTIL_ORDER2,
    MTIL_TINY,
    TINY,
    TOY_DATA,
)


@dataclass(frozen=True)
class Benchmark:
    name: str
    tasks: tuple[DatasetSpec, ...]
    default_model: str  # the backbone its published numbers use: what `--zs` means when not given
    base2new: bool = False  # evaluate base and novel class halves separately and report their harmonic mean


# Base-to-novel needs at least two novel classes: with one, novel accuracy is 100 % whatever the model.
MIN_BASE2NEW_CLASSES = 4
PAPER_BACKBONE = "ViT-B/16"  # CoOp/CoCoOp's base-to-novel tables, and MTIL's in ZSCL and ConDU


def _specs(kind: str, names: Iterable[str]) -> tuple[DatasetSpec, ...]:
    return tuple(DatasetSpec(f"{kind}:{name}") for name in names)


def _benchmarks() -> dict[str, Benchmark]:
    base2new_toys = [name for name, task in TOY_TASKS.items() if len(task.classnames) >= MIN_BASE2NEW_CLASSES]
    benchmarks = (
        Benchmark(MTIL_TINY, _specs(TOY_DATA, TOY_TASKS), TINY),
        Benchmark(BASE2NEW_TINY, _specs(TOY_DATA, base2new_toys), TINY, base2new=True),
        Benchmark(MTIL, _specs(MTIL_DATA, MTIL_ORDER), PAPER_BACKBONE),
        Benchmark(MTIL_ORDER2, _specs(MTIL_DATA, MTIL_ORDER_II), PAPER_BACKBONE),
        Benchmark(BASE2NEW, _specs(COOP_DATA, COOP_BASE2NEW_ORDER), PAPER_BACKBONE, base2new=True),
    )
    return {benchmark.name: benchmark for benchmark in benchmarks}


BENCHMARKS = _benchmarks()


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise CftoolError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
