"""Dataset specs: what `--data` names, and the generic protocol (class halves, few-shot) on top of any reader.

A spec string is ``toy:TASK``, ``folder:PATH`` or ``coop:NAME``. Options that change which images are used
(``classes``, ``shots``, ``seed``) are part of the spec, so a checkpoint's metadata can rebuild the same data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset

from cftool.data.validation import few_shot_val_positions
from cftool.errors import CftoolError

CLASS_SUBSETS = ("all", "base", "novel")
DATA_ROOT_ENV = "CFTOOL_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("data")
# How a user points cftool at real datasets, for the messages that find them missing.
DATA_ROOT_HINT = f"set it with --data-root ROOT or {DATA_ROOT_ENV}=ROOT"
SPLITS = ("train", "val", "test")


class ImageSource(Protocol):
    """What a reader provides: a label space, prompt templates, and images by (split, index). A reader may also
    name ``anchor_templates``, the templates of MergeTune's zero-shot anchor (``TaskData.anchor_templates``)."""

    name: str
    classnames: Sequence[str]
    templates: Sequence[str]

    def labels(self, split: str) -> Sequence[int]:
        """Labels of every image of a split, without reading images."""

    def image(self, split: str, index: int) -> Image.Image: ...

    def fingerprint(self, split: str, indices: Sequence[int]) -> str:
        """A digest that changes whenever any of these images may have changed; feature caches are keyed on it."""


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
# What PIL's format plugins raise, besides OSError, on damaged or hostile image data.
_DAMAGED_IMAGE_ERRORS = (ValueError, TypeError, SyntaxError, EOFError, IndexError, struct.error)


def check_regular_file(path: str | os.PathLike) -> None:
    """Raises OSError unless ``path`` is a regular file (or a link to one). Checked before opening, with stat, which
    never blocks: opening a FIFO waits for a writer, and a device may never end."""
    try:
        mode = os.stat(path).st_mode
    except ValueError:  # os.stat's answer to a NUL byte
        raise OSError("its path holds a NUL byte") from None
    if not stat.S_ISREG(mode):
        kind = next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "a special file")
        raise OSError(f"{kind}, not a regular file")


def load_image(path: str | os.PathLike) -> Image.Image:
    """An image file as RGB, read as torchvision's default_loader reads it. Anything else raises OSError with the
    reason: a file that is not regular or not an image, damaged data, or more pixels than Image.MAX_IMAGE_PIXELS (a
    decompression bomb; PIL itself only warns below twice that limit, and would go on to decode it)."""
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as file:
                return Image.open(file).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise OSError(_one_line(err)) from None
    except _DAMAGED_IMAGE_ERRORS as err:
        raise OSError(f"damaged image data: {type(err).__name__}: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def stays_inside(relative: str) -> bool:
    """Whether ``relative``, a path read from a split file or file list, names something inside the folder it is
    joined to: not empty, no NUL byte, not absolute, no '..'. Checked on the text, so that a folder may still be a
    symlink to wherever the data lives."""
    parts = relative.replace(os.altsep or os.sep, os.sep).split(os.sep)
    return bool(relative) and "\0" not in relative and not os.path.isabs(relative) and ".." not in parts


# What torch.manual_seed and torch.Generator accept.
SEED_RANGE = (-(2**63), 2**64 - 1)


def check_seed(seed: int) -> None:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise CftoolError(f"--seed must be within [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (a 64-bit integer), got {seed}")


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Changes when any of the files is replaced, edited or moved: their absolute paths, sizes and mtimes."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = path.stat()
        except OSError as err:
            raise CftoolError(f"cannot read image {path} ({err.strerror})") from err
        digest.update(f"{path.absolute()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class DatasetSpec:
    source: str  # "toy:shapes", "folder:/data/pets", "coop:OxfordPets"
    classes: str = "all"  # all | base | novel (first ceil(n/2) classes are base, as in CoOp)
    shots: int | None = None  # training images per class, sampled with `seed`
    seed: int = 0

    def __post_init__(self):
        if self.classes not in CLASS_SUBSETS:
            raise CftoolError(f"--classes must be one of {', '.join(CLASS_SUBSETS)}, got {self.classes!r}")
        if self.shots is not None and self.shots < 1:
            raise CftoolError(f"--shots must be a positive number of images per class, got {self.shots}")
        check_seed(self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DatasetSpec:
        return cls(**json.loads(text))

    def with_classes(self, classes: str) -> DatasetSpec:
        return replace(self, classes=classes)


@dataclass
class TaskData:
    """One task as training and evaluation see it: the label space after the class subset, and its splits."""

    spec: DatasetSpec
    source: ImageSource
    class_ids: list[int]  # source labels kept, in order; their position is the task label

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def classnames(self) -> list[str]:
        return [self.source.classnames[i] for i in self.class_ids]

    @property
    def templates(self) -> list[str]:
        return list(self.source.templates)

    @property
    def anchor_templates(self) -> list[str]:
        """The templates of MergeTune's zero-shot anchor (the class text features its feature surrogate compares
        with): a source's own ``anchor_templates`` where it names them (`coop:` data: KgCoOp's), else its templates."""
        return list(getattr(self.source, "anchor_templates", self.source.templates))

    def split(self, split: str, transform: Callable | None = None) -> TaskSplit:
        try:
            source_labels = self.source.labels(split)
        except ValueError as err:
            raise CftoolError(f"{self.spec.source}: {err}") from err
        relabel = {cid: i for i, cid in enumerate(self.class_ids)}
        kept = range(len(source_labels))
        if split == "val" and self.spec.shots is not None:  # drawn over all classes, then the subset, as CoOp does
            train_labels = self.source.labels("train")
            kept = sorted(few_shot_val_positions(train_labels, source_labels, self.spec.shots, self.spec.seed))
        items = [(index, relabel[source_labels[index]]) for index in kept if source_labels[index] in relabel]
        if not items:  # an accuracy over no images is NaN, and training on none learns nothing
            classes = "" if self.spec.classes == "all" else f" of its {self.spec.classes} classes"
            raise CftoolError(f"{self.spec.source}: the {split} split has no images{classes}; check the dataset")
        if split == "train" and self.spec.shots is not None:
            items = _few_shot(items, self.spec.shots, self.spec.seed)
        return TaskSplit(self.source, split, items, transform)


class TaskSplit(Dataset):
    """(image, task label) pairs of one split; ``transform`` (the model's preprocess) applies to each image."""

    def __init__(self, source: ImageSource, split: str, items: list[tuple[int, int]], transform: Callable | None):
        self.source, self.split, self.items, self.transform = source, split, items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        index, label = self.items[i]
        image = self.source.image(self.split, index)
        return (self.transform(image) if self.transform else image), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def fingerprint(self) -> str:
        """Identifies exactly these (image, label) pairs, so cached features are reused for nothing else."""
        images = self.source.fingerprint(self.split, [index for index, _ in self.items])
        return hashlib.sha256(json.dumps([images, self.labels]).encode()).hexdigest()


def _few_shot(items: list[tuple[int, int]], shots: int, seed: int) -> list[tuple[int, int]]:
    """CoOp's protocol: ``shots`` images per class drawn without replacement (all of them if a class has fewer)."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[tuple[int, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    chosen = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator)[:shots]
        chosen.extend(members[i] for i in sorted(order.tolist()))
    return chosen


def class_subset(n_classes: int, classes: str) -> list[int]:
    n_base = math.ceil(n_classes / 2)
    return {"all": list(range(n_classes)), "base": list(range(n_base)), "novel": list(range(n_base, n_classes))}[
        classes
    ]
