"""Benchmarks (`--benchmark`): named lists of tasks, and the toy tasks as an image source."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from cftool.data.coop import COOP_BASE2NEW_ORDER
from cftool.data.mtil.tables import MTIL_ORDER, MTIL_ORDER_II
from cftool.data.specs import DatasetSpec
from cftool.data.toy import HELDOUT_TASK, TOY_TASKS, ToyTask
from cftool.errors import CftoolError
from cftool.zoo.base import TINY


class ToySource:
    """A toy task seen through the reader protocol of `cftool.data.specs`."""

    def __init__(self, task: ToyTask):
        self.task = task
        self.name = task.name
        self.classnames = list(task.classnames)
        self.templates = list(task.templates)

    def _size(self, split: str) -> int:
        sizes = {"train": self.task.n_train, "val": self.task.n_test, "test": self.task.n_test}
        if split not in sizes:
            raise ValueError(f"toy tasks have train, val and test splits, not '{split}'")
        return sizes[split]

    def labels(self, split: str) -> list[int]:
        return [self.task.label(split, index) for index in range(self._size(split))]

    def image(self, split: str, index: int) -> Image.Image:
        return self.task.example(split, index)[0]

    def fingerprint(self, split: str, indices: Sequence[int]) -> str:
        # The pixels themselves: rendering is cheap next to encoding, and a change to the toy world shows.
        digest = hashlib.sha256()
        for index in indices:
            digest.update(self.image(split, index).tobytes())
        return digest.hexdigest()


# The eleven tasks, and the test-only probe of colour-shape combinations that pretraining never showed.
TOY_SOURCES = {**TOY_TASKS, HELDOUT_TASK.name: HELDOUT_TASK}


def toy_source(name: str) -> ToySource:
    if name not in TOY_SOURCES:
        raise CftoolError(f"toy:{name}: unknown toy task; known: {', '.join(TOY_SOURCES)}")
    return ToySource(TOY_SOURCES[name])


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
