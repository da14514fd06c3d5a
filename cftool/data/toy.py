"""Public face of the embedded toy world (`toyworld`) and its eleven tasks (`toytasks`)."""

from pathlib import Path

from cftool.data.toytasks import HELDOUT_TASK, TOY_TASKS, ToyTask, heldout_examples
from cftool.data.toyworld import IMAGE_SIZE, pretraining_example

__all__ = [
    "HELDOUT_TASK", "IMAGE_SIZE", "TOY_TASKS", "ToyTask", "heldout_examples", "pretraining_example", "write_toy_folder",
]  # fmt: skip


def write_toy_folder(name: str, folder: Path, per_class: dict[str, int]) -> Path:
    """A toy task written as a ``folder:`` dataset (``folder/SPLIT/CLASS/INDEX.png``), ``per_class[split]`` images
    of each class in each split: real image files for what reads them from disk (tests, benchmarks)."""
    from cftool.data import load_task

    task = load_task(f"toy:{name}")
    for split, wanted in per_class.items():
        counts = dict.fromkeys(range(len(task.classnames)), 0)
        for index, label in enumerate(task.source.labels(split)):
            if counts[label] < wanted:
                class_folder = folder / split / task.classnames[label]
                class_folder.mkdir(parents=True, exist_ok=True)
                task.source.image(split, index).save(class_folder / f"{index}.png")
                counts[label] += 1
            if min(counts.values()) == wanted:
                break
    return folder
