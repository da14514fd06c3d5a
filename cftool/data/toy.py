"""Public face of the embedded toy world (`toyworld`) and its eleven tasks (`toytasks`), and the tasks as an image
source (`toy:NAME`)."""

import hashlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from cftool.data.toytasks import HELDOUT_TASK, TOY_TASKS, ToyTask, heldout_examples
from cftool.data.toyworld import IMAGE_SIZE, pretraining_example
from cftool.errors import CftoolError

__all__ = [
    "HELDOUT_TASK",
    "IMAGE_SIZE",
    "TOY_SOURCES",
    "TOY_TASKS",
    "ToySource",
    "ToyTask",
    "heldout_examples",
    "pretraining_example",
    "toy_source",
    "write_toy_folder",
]


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


def write_toy_folder(name: str, folder: Path, per_class: dict[str, int]) -> Path:
    """A toy task written as a ``folder:`` dataset (``folder/SPLIT/CLASS/INDEX.png``), ``per_class[split]`` images
    of each class in each split: real image files for what reads them from disk (tests, benchmarks)."""
    source = toy_source(name)
    for split, wanted in per_class.items():
        counts = dict.fromkeys(range(len(source.classnames)), 0)
        for index, label in enumerate(source.labels(split)):
            if counts[label] < wanted:
                class_folder = folder / split / source.classnames[label]
                class_folder.mkdir(parents=True, exist_ok=True)
                source.image(split, index).save(class_folder / f"{index}.png")
                counts[label] += 1
            if min(counts.values()) == wanted:
                break
    return folder
