"""Benchmarks (`--benchmark`): named lists of tasks."""

from __future__ import annotations

from dataclasses import dataclass

from cftool.data.coop import COOP_BASE2NEW_ORDER
from cftool.data.mtil.tables import MTIL_ORDER, MTIL_ORDER_II
from cftool.data.specs import DatasetSpec
from cftool.data.toy import TOY_TASKS
from cftool.errors import CftoolError
from cftool.options import TINY


@dataclass(frozen=True)
class Benchmark:
    name: str
    tasks: tuple[DatasetSpec, ...]
    default_model: str  # the backbone its published numbers use: what `--zs` means when not given
    base2new: bool = False  # evaluate base and novel class halves separately and report their harmonic mean


# Base-to-novel needs at least two novel classes: with one, novel accuracy is 100 % whatever the model.
MIN_BASE2NEW_CLASSES = 4
PAPER_BACKBONE = "ViT-B/16"  # CoOp/CoCoOp's base-to-novel tables, and MTIL's in ZSCL and ConDU


def _benchmarks() -> dict[str, Benchmark]:
    mtil_tiny = tuple(DatasetSpec(f"toy:{name}") for name in TOY_TASKS)
    base2new_tiny = tuple(
        spec for spec in mtil_tiny if len(TOY_TASKS[spec.source[4:]].classnames) >= MIN_BASE2NEW_CLASSES
    )
    return {
        "mtil-tiny": Benchmark("mtil-tiny", mtil_tiny, TINY),
        "base2new-tiny": Benchmark("base2new-tiny", base2new_tiny, TINY, base2new=True),
        "mtil": Benchmark("mtil", tuple(DatasetSpec(f"mtil:{name}") for name in MTIL_ORDER), PAPER_BACKBONE),
        "mtil-order2": Benchmark(
            "mtil-order2", tuple(DatasetSpec(f"mtil:{name}") for name in MTIL_ORDER_II), PAPER_BACKBONE
        ),
        "base2new": Benchmark(
            "base2new", tuple(DatasetSpec(f"coop:{name}") for name in COOP_BASE2NEW_ORDER), PAPER_BACKBONE, True
        ),
    }


BENCHMARKS = _benchmarks()


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise CftoolError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
