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

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cftool.data.validation import few_shot_val_positions
from cftool.errors import CftoolError
from cftool.options import (
    ALL_CLASSES,
    BASE_CLASSES,
    CLASS_SUBSET,
    CLASS_SUBSETS,
    FEW_SHOT_VAL,
    MTIL_DATA,
    NOVEL_CLASSES,
    SEED,
    VAL_IMAGE_SET,
    VAL_IMAGES,
)

DATA_ROOT_ENV = "CFTOOL_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("data")
# How a user points cftool at real datasets, for the messages that find them missing.
DATA_ROOT_HINT = f"set it with --data-root ROOT or {DATA_ROOT_ENV}=ROOT"


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
    classes: str = CLASS_SUBSET  # see CLASS_SUBSETS
    shots: int | None = None  # training images per class, sampled with `seed`
    seed: int = SEED
    val_images: str = VAL_IMAGE_SET  # see VAL_IMAGES (cftool.data.validation draws the few-shot ones)

    def __post_init__(self):
        if self.classes not in CLASS_SUBSETS:
            raise CftoolError(f"--classes must be one of {', '.join(CLASS_SUBSETS)}, got {self.classes!r}")
        if self.shots is not None and self.shots < 1:
            raise CftoolError(f"--shots must be a positive number of images per class, got {self.shots}")
        check_seed(self.seed)
        if self.val_images not in VAL_IMAGES:
            raise CftoolError(f"--val-images must be one of {', '.join(VAL_IMAGES)}, got {self.val_images!r}")

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

    def anchor_templates(self, training_templates: Sequence[str]) -> list[str]:
        """The templates of MergeTune's zero-shot anchor (the class text features its feature surrogate compares
        with): a source's own ``anchor_templates`` where it names them (`coop:` data: KgCoOp's), else the templates the
        training loss builds its class features from, so that the surrogate compares like with like."""
        return list(getattr(self.source, "anchor_templates", training_templates))

    def split(self, split: str, transform: Callable | None = None) -> TaskSplit:
        try:
            source_labels = self.source.labels(split)
        except ValueError as err:
            raise CftoolError(f"{self.spec.source}: {err}") from err
        relabel = {cid: i for i, cid in enumerate(self.class_ids)}
        kept = range(len(source_labels))
        if split == "val" and self.spec.shots is not None and self.spec.val_images == FEW_SHOT_VAL:
            # drawn over all classes, then the subset, as CoOp does
            train_labels = self.source.labels("train")
            kept = sorted(few_shot_val_positions(train_labels, source_labels, self.spec.shots, self.spec.seed))
        items = [(index, relabel[source_labels[index]]) for index in kept if source_labels[index] in relabel]
        if not items:  # an accuracy over no images is NaN, and training on none learns nothing
            classes = "" if self.spec.classes == ALL_CLASSES else f" of its {self.spec.classes} classes"
            raise CftoolError(f"{self.spec.source}: the {split} split has no images{classes}; check the dataset")
        fixed_draws = None
        if split == "train" and self.spec.shots is not None:
            protocol = self.spec.source.partition(":")[0]
            draw = FEW_SHOT_DRAWS.get(protocol, _few_shot)
            items = draw(items, self.spec.shots, self.spec.seed)
            if protocol in FIXED_SHOT_PROTOCOLS:
                fixed_draws = (self.spec.seed, SHOTS_STREAM)
        return TaskSplit(self.source, split, items, transform, fixed_draws)

    def full_training_split(self, transform: Callable | None = None, draw_stream: int | None = None) -> TaskSplit:
        """Every training image of the task's classes, whatever ``shots`` says; with ``draw_stream``, each image is
        transformed with a seed of its own, a function of (``seed``, stream, image), so a random transform draws the
        same view at every read."""
        whole = TaskData(replace(self.spec, shots=None), self.source, self.class_ids).split("train", transform)
        if draw_stream is not None:
            whole.fixed_draws = (self.spec.seed, draw_stream)
        return whole


class TaskSplit(Dataset):
    """(image, task label) pairs of one split; ``transform`` (the model's preprocess) applies to each image.

    ``fixed_draws`` = (seed, stream): each image is transformed under torch's CPU generator seeded by (seed, stream,
    image index), so a random augmentation draws one view of each image and that view is read at every epoch, as the
    reference's few-shot MTIL trains on images augmented once (see ``FIXED_SHOT_PROTOCOLS``).
    """

    def __init__(
        self,
        source: ImageSource,
        split: str,
        items: list[tuple[int, int]],
        transform: Callable | None,
        fixed_draws: tuple[int, int] | None = None,
    ):
        self.source, self.split, self.items, self.transform = source, split, items, transform
        self.fixed_draws = fixed_draws

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        index, label = self.items[i]
        image = self.source.image(self.split, index)
        if self.transform is None:
            return image, label
        if self.fixed_draws is None:
            return self.transform(image), label
        seed, stream = self.fixed_draws
        # SeedSequence takes non-negative entropy; --seed may be negative.
        draw_seed = np.random.SeedSequence(seed % 2**64, spawn_key=(stream, index)).generate_state(1)[0]
        with torch.random.fork_rng(devices=[]):  # the CPU generator only, restored afterwards
            torch.default_generator.manual_seed(int(draw_seed))
            return self.transform(image), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def fingerprint(self) -> str:
        """Identifies exactly these (image, label) pairs, so cached features are reused for nothing else."""
        images = self.source.fingerprint(self.split, [index for index, _ in self.items])
        return hashlib.sha256(json.dumps([images, self.labels]).encode()).hexdigest()


# Streams of fixed draws (TaskSplit.fixed_draws): the few-shot images, and the prototypes' view of the training split.
SHOTS_STREAM, PROTOTYPES_STREAM = 0, 1


def _first_shots_of_shuffled_loader(items: list[tuple[int, int]], shots: int, seed: int) -> list[tuple[int, int]]:
    """ConDU's few-shot MTIL draw (ConDU_Ascend/src/models/few_shot_finetune.py:39-52): the first ``shots`` images of
    each class in the order a shuffling DataLoader visits the training split, grouped by class in the order the
    classes first appear.

    The reference's loader (src/datasets/collections.py:41-46) shuffles with torch's global generator, seeded with 42
    (src/args.py:21, src/main.py:26) but then drawn from by the model construction of two ``clip.load`` calls
    (few_shot_finetune.py:18, :34): its exact order cannot be rebuilt outside that process. Here the loader's own
    generator is seeded with ``seed``: DataLoader(shuffle=True, generator=Generator().manual_seed(seed)).
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(range(len(items)), batch_size=len(items), shuffle=True, generator=generator)
    chosen: dict[int, list[tuple[int, int]]] = {}
    for position in next(iter(loader)).tolist():
        members = chosen.setdefault(items[position][1], [])
        if len(members) < shots:
            members.append(items[position])
    return [item for members in chosen.values() for item in members]


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


# Each protocol's few-shot draw (`--shots`); CoOp's per-class draw for the others.
FEW_SHOT_DRAWS = {MTIL_DATA: _first_shots_of_shuffled_loader}
# Protocols whose few-shot images are augmented once and then kept (few_shot_finetune.py:39-58 stacks the augmented
# tensors into a TensorDataset and trains on those).
FIXED_SHOT_PROTOCOLS = (MTIL_DATA,)


def class_subset(n_classes: int, classes: str) -> list[int]:
    n_base = math.ceil(n_classes / 2)
    subsets = {
        ALL_CLASSES: list(range(n_classes)),
        BASE_CLASSES: list(range(n_base)),
        NOVEL_CLASSES: list(range(n_base, n_classes)),
    }
    return subsets[classes]
