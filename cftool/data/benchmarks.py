"""Benchmarks (`--benchmark`): named lists of tasks, and the toy tasks as an image source."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cftool.data.specs import DatasetSpec
from cftool.data.toy import HELDOUT_TASK, TOY_TASKS, ToyTask
from cftool.errors import CftoolError, NotAvailableError


class ToySource:
    """A toy task seen through the reader protocol of `cftool.data.specs`."""

    def __init__(self, task: ToyTask):
        self.task = task
        self.name = task.name
        self.classnames = list(task.classnames)
        self.templates = list(task.templates)

    def _size(self, split: str) -> int:
        sizes = {"train": self.task.n_train, "test": self.task.n_test}
        if split not in sizes:
            raise ValueError(f"toy tasks have train and test splits, not '{split}'")
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
    base2new: bool = False  # evaluate base and novel class halves separately and report their harmonic mean


# MTIL's eleven datasets, in the protocol's order, and the folder torchvision's class expects under --data-root.
MTIL_FOLDERS = {
    "Aircraft": "fgvc-aircraft-2013b",
    "Caltech101": "caltech101",
    "CIFAR100": "cifar-100-python",
    "DTD": "dtd",
    "EuroSAT": "eurosat",
    "Flowers": "flowers-102",
    "Food": "food-101",
    "MNIST": "MNIST",
    "OxfordPet": "oxford-iiit-pet",
    "Cars": "stanford_cars",
    "SUN397": "SUN397",
}


# Base-to-novel needs at least two novel classes: with one, novel accuracy is 100 % whatever the model.
MIN_BASE2NEW_CLASSES = 4


def _toy_benchmarks() -> dict[str, Benchmark]:
    mtil = tuple(DatasetSpec(f"toy:{name}") for name in TOY_TASKS)
    base2new = tuple(spec for spec in mtil if len(TOY_TASKS[spec.source[4:]].classnames) >= MIN_BASE2NEW_CLASSES)
    return {
        "mtil-tiny": Benchmark("mtil-tiny", mtil),
        "base2new-tiny": Benchmark("base2new-tiny", base2new, base2new=True),
    }


BENCHMARKS = _toy_benchmarks()
KNOWN_BENCHMARKS = (*BENCHMARKS, "mtil")


def get_benchmark(name: str, data_root: Path | None) -> Benchmark:
    if name == "mtil":
        _check_mtil_folders(data_root)
    if name not in BENCHMARKS:
        raise CftoolError(f"unknown benchmark '{name}'; known: {', '.join(KNOWN_BENCHMARKS)}")
    return BENCHMARKS[name]


def _check_mtil_folders(data_root: Path | None) -> None:
    root = data_root or Path(".")
    for dataset, folder in MTIL_FOLDERS.items():
        if not (root / folder).is_dir():
            raise CftoolError(
                f"--benchmark mtil: expected {dataset} in {root / folder} (torchvision's layout, download=False) under "
                f"--data-root; --benchmark mtil-tiny is the embedded benchmark that needs no data"
            )
    raise NotAvailableError(
        "--benchmark mtil: readers for the real MTIL datasets are not available yet; use --benchmark mtil-tiny"
    )
