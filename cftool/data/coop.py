"""`coop:NAME` — CoOp's eleven datasets (and ImageNet's four shifted test sets) under `--data-root`, read as CoOp
reads them, so that labels, class order and prompts match its base-to-novel and few-shot numbers.

Nine datasets come from CoOp's fixed ``split_zhou_<Name>.json``: ``train``/``val``/``test`` lists of
``[image path relative to the image folder, label, class name]``. ImageNet is read from its class folders and
``classnames.txt`` (its val images are both the val and the test split), FGVCAircraft from the dataset's own
``variants.txt`` and ``images_variant_<split>.txt``. Class names are what reaches CoOp's prompt: its
PromptLearner (and zero-shot CLIP) read every ``_`` in a class name as a space; templates are CoOp's
CUSTOM_TEMPLATES (``trainers/zsclip.py``). MergeTune's zero-shot anchor (``anchor_templates``) is KgCoOp's
template instead, as MergeTune's CoOp continuation builds it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from PIL import Image

from cftool.data.specs import DATA_ROOT_HINT, check_regular_file, files_fingerprint, load_image, stays_inside
from cftool.errors import CftoolError

# CoOp / CoCoOp's base-to-novel table order (CoCoOp, Table 1; CoOp's DATASETS.md lists them the same way).
COOP_BASE2NEW_ORDER: tuple[str, ...] = (
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "OxfordFlowers",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DescribableTextures",
    "EuroSAT",
    "UCF101",
)
# ImageNet under distribution shift, for domain generalisation: test-only, ImageNet's class names.
COOP_IMAGENET_VARIANTS: tuple[str, ...] = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")

CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

# The template of the zero-shot text features MergeTune's CoOp continuation is pulled towards: KgCoOp's table
# (MergeTune's trainers/kgcoop_coop_LMC.py:52-68, read at :149-157; the same in trainers/kgcoop.py:37-54). It is
# CoOp's except for DescribableTextures, where evaluation (zsclip.py:17) reads "{} texture.".
KGCOOP_TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}

# Short names users type. Lookup ignores case, `_`, `-` and spaces, so CoOp's config names (`oxford_pets`,
# `fgvc_aircraft`, `imagenet_a`) and the canonical names need no entry here.
ALIASES = {
    "flowers102": "OxfordFlowers",
    "flowers": "OxfordFlowers",
    "dtd": "DescribableTextures",
    "aircraft": "FGVCAircraft",
    "pets": "OxfordPets",
    "cars": "StanfordCars",
    "food": "Food101",
    "ucf": "UCF101",
}

Item = tuple[Path, int]  # an image and its label
SplitReaders = dict[str, Callable[[], list[Item]]]


def prompt_classname(name: str) -> str:
    """A class name as CoOp writes it into the prompt (``name.replace("_", " ")`` in its PromptLearner)."""
    return name.replace("_", " ")


class CoopSource:
    """An ImageSource over per-split (image, label) lists; a split is listed on first use (ImageNet's train
    split is 1.28M files)."""

    def __init__(self, name: str, raw_classnames: Sequence[str], split_readers: SplitReaders):
        self.name = name
        self.classnames = [prompt_classname(raw) for raw in raw_classnames]
        self.templates = (CUSTOM_TEMPLATES[name],)
        self.anchor_templates = (KGCOOP_TEMPLATES[name],)
        self._split_readers = split_readers
        self._items: dict[str, list[Item]] = {}

    def _split_items(self, split: str) -> list[Item]:
        if split not in self._split_readers:
            raise ValueError(f"no '{split}' split (this dataset has: {', '.join(self._split_readers)})")
        if split not in self._items:
            self._items[split] = self._split_readers[split]()
        return self._items[split]

    def labels(self, split: str) -> list[int]:
        return [label for _, label in self._split_items(split)]

    def image(self, split: str, index: int) -> Image.Image:
        path = self._split_items(split)[index][0]
        try:
            return load_image(path)
        except OSError as err:
            raise CftoolError(f"coop:{self.name}: cannot read image {path} ({err})") from err

    def fingerprint(self, split: str, indices: Sequence[int]) -> str:
        items = self._split_items(split)
        return files_fingerprint(items[index][0] for index in indices)


def _read_lines(path: Path, expected: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of each non-blank line; ``expected`` says what the file is, for the error."""
    try:
        check_regular_file(path)
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark, as Windows editors write, is no class name
    except FileNotFoundError:
        raise CftoolError(f"expected {expected} at {path}; no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CftoolError(f"cannot read {path} ({err}); expected {expected}") from err
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _key_and_name(path: Path, number: int, line: str, layout: str) -> tuple[str, str]:
    """``"n01440764 great white shark"`` → (``n01440764``, ``great white shark``): CoOp splits at the first space."""
    key, _, name = line.partition(" ")
    if not name:
        raise CftoolError(f"{path}:{number}: malformed line {line!r}; expected {layout}")
    return key, name


def _folders(path: Path, expected: str) -> list[str]:
    """Sub-folder names, sorted (CoOp's class order), hidden ones left out (Dassl's listdir_nohidden)."""
    if not path.is_dir():
        raise CftoolError(f"expected {expected} at {path}; no such directory")
    return sorted(entry.name for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _class_folder_items(class_dirs: Sequence[Path]) -> list[Item]:
    """Every non-hidden file of each class folder, labelled by the folder's position (file order: sorted, so
    that few-shot sampling does not depend on the file system's listing order)."""
    return [
        (path, label)
        for label, class_dir in enumerate(class_dirs)
        for path in sorted(class_dir.iterdir())
        if not path.name.startswith(".")
    ]


def _already_read(items: dict[str, list[Item]]) -> SplitReaders:
    """Readers for splits that had to be read whole anyway (their file also gives the class names)."""
    return {split: partial(list, split_items) for split, split_items in items.items()}


def _finite_number(text: str) -> float:
    """json's parse_float and parse_constant: a number a split file may hold (Python's json reads Infinity, NaN and
    1e400, which no JSON writer should produce)."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is not a finite number")
    return number


def _read_split_file(name: str, dataset_dir: Path, image_subdir: str) -> tuple[list[str], SplitReaders]:
    """The nine datasets with a ``split_zhou_<Name>.json``; class names are taken from the training rows, as
    Dassl's DatasetBase does."""
    split_path = dataset_dir / f"split_zhou_{name}.json"
    image_dir = dataset_dir / image_subdir
    if not split_path.is_file():
        raise CftoolError(
            f"expected CoOp's split file at {split_path} "
            f"(layout {dataset_dir.name}/split_zhou_{name}.json and {dataset_dir.name}/{image_subdir or '.'}/ "
            f"under the data root {dataset_dir.parent}; {DATA_ROOT_HINT})"
        )
    try:
        text = split_path.read_text(encoding="utf-8-sig")
        splits = json.loads(text, parse_float=_finite_number, parse_constant=_finite_number)
        rows = {split: list(split_rows) for split, split_rows in splits.items()}
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise CftoolError(
            f"{split_path}: not a CoOp split file ({reason}); expected train/val/test lists of [path, label, class]"
        ) from None
    items: dict[str, list[Item]] = {}
    names: dict[int, str] = {}
    for split, split_rows in rows.items():
        items[split] = []
        for position, row in enumerate(split_rows):
            where = f"{split_path}: row {position} of {split!r}"
            try:
                path, label, classname = row
            except (TypeError, ValueError):
                path = label = classname = None
            if not isinstance(path, str) or not isinstance(classname, str):
                raise CftoolError(
                    f"{where} is {row!r}; expected [image path relative to {image_dir}, label, class name]"
                )
            if type(label) is not int:  # not a float that int() would truncate, nor a bool
                raise CftoolError(f"{where} has the label {json.dumps(label)}; labels are integers 0, 1, …")
            if not stays_inside(path):
                raise CftoolError(
                    f"{where} names {path!r}; image paths must be relative and stay inside the dataset folder "
                    f"{image_dir}"
                )
            items[split].append((image_dir / path, label))
            if split == "train" and names.setdefault(label, classname) != classname:
                raise CftoolError(
                    f"{split_path}: label {label} is named both {names[label]!r} and {classname!r}; "
                    "the split file is damaged"
                )
    if "train" not in items:
        raise CftoolError(f"{split_path}: no 'train' list; expected train/val/test lists of [path, label, class]")
    if sorted(names) != list(range(len(names))):
        raise CftoolError(f"{split_path}: labels are not 0..{len(names) - 1}; the split file is damaged")
    for split, split_items in items.items():
        unnamed = sorted({label for _, label in split_items} - set(names))
        if unnamed:
            raise CftoolError(
                f"{split_path}: '{split}' has labels {unnamed} that no training row names; the split file is damaged"
            )
    return [names[label] for label in range(len(names))], _already_read(items)


def _read_wnid_names(path: Path) -> dict[str, str]:
    layout = "'<wnid> <class name>'"
    lines = _read_lines(path, f"CoOp's classnames.txt, lines {layout}")
    return dict(_key_and_name(path, number, line, layout) for number, line in lines)


def _names_of_folders(wnids: Sequence[str], names: dict[str, str], names_path: Path, image_dir: Path) -> list[str]:
    unknown = [wnid for wnid in wnids if wnid not in names]
    if unknown:
        raise CftoolError(f"{names_path} has no line for the class folder(s) {', '.join(unknown[:5])} of {image_dir}")
    return [names[wnid] for wnid in wnids]


def _read_imagenet(name: str, dataset_dir: Path) -> tuple[list[str], SplitReaders]:
    """``imagenet/images/{train,val}/<wnid>/*`` and ``classnames.txt``: the label is the wnid's position in sorted
    folder order; the val images are also the test split, as in CoOp."""
    names_path = dataset_dir / "classnames.txt"
    names = _read_wnid_names(names_path)
    split_dirs = {"train": dataset_dir / "images" / "train", "val": dataset_dir / "images" / "val"}
    wnids = {
        split: _folders(path, f"ImageNet's {split} images, one <wnid> folder per class")
        for split, path in split_dirs.items()
    }
    if wnids["val"] != wnids["train"]:
        # CoOp labels each split by its own folder order, so differing folders would silently mislabel val.
        raise CftoolError(
            f"{split_dirs['val']} and {split_dirs['train']} hold different class folders "
            f"({len(wnids['val'])} and {len(wnids['train'])}); expected the same <wnid> folders in both"
        )
    classnames = _names_of_folders(wnids["train"], names, names_path, split_dirs["train"])

    def read(split_dir: Path) -> list[Item]:
        return _class_folder_items([split_dir / wnid for wnid in wnids["train"]])

    readers = {"train": partial(read, split_dirs["train"]), "val": partial(read, split_dirs["val"])}
    readers["test"] = readers["val"]
    return classnames, readers


def _read_fgvc_aircraft(name: str, dataset_dir: Path) -> tuple[list[str], SplitReaders]:
    """FGVC-Aircraft's ``data/`` folder: ``variants.txt`` gives the label order, ``images_variant_<split>.txt``
    lines ``<image id> <variant>`` name ``images/<image id>.jpg``."""
    variants_path = dataset_dir / "variants.txt"
    variants = [line for _, line in _read_lines(variants_path, "FGVC-Aircraft's variants.txt, one variant per line")]
    label_of = {variant: label for label, variant in enumerate(variants)}
    items: dict[str, list[Item]] = {}
    for split in ("train", "val", "test"):
        path = dataset_dir / f"images_variant_{split}.txt"
        layout = "'<image id> <variant>'"
        items[split] = []
        for number, line in _read_lines(path, f"FGVC-Aircraft's {path.name}, lines {layout}"):
            image_id, variant = _key_and_name(path, number, line, layout)
            if not stays_inside(image_id):
                raise CftoolError(
                    f"{path}:{number}: image id {image_id!r} leaves {dataset_dir / 'images'}; image ids must stay "
                    "inside the dataset folder"
                )
            if variant not in label_of:
                raise CftoolError(f"{path}:{number}: variant {variant!r} is not in {variants_path}")
            items[split].append((dataset_dir / "images" / f"{image_id}.jpg", label_of[variant]))
    return variants, _already_read(items)


def _read_imagenetv2(name: str, dataset_dir: Path) -> tuple[list[str], SplitReaders]:
    """ImageNetV2 matched-frequency: folders ``0``…``999`` are the labels, named by ``classnames.txt`` in file
    order."""
    names = list(_read_wnid_names(dataset_dir / "classnames.txt").values())
    image_dir = dataset_dir / "imagenetv2-matched-frequency-format-val"
    class_dirs = [image_dir / str(label) for label in range(len(names))]
    missing = [path.name for path in class_dirs if not path.is_dir()]
    if missing:
        raise CftoolError(
            f"{image_dir}: no folder(s) {', '.join(missing[:5])}; expected folders 0..{len(names) - 1}, "
            f"one per line of {dataset_dir / 'classnames.txt'}"
        )
    return names, {"test": partial(_class_folder_items, class_dirs)}


def _read_wnid_test_set(name: str, dataset_dir: Path, image_subdir: str) -> tuple[list[str], SplitReaders]:
    """ImageNet-Sketch (1000 classes), -A and -R (200 classes each): one ``<wnid>`` folder per class, labels in
    sorted folder order, names from ImageNet's ``classnames.txt`` copied beside the images."""
    names_path = dataset_dir / "classnames.txt"
    names = _read_wnid_names(names_path)
    image_dir = dataset_dir / image_subdir
    wnids = _folders(image_dir, f"{name}'s images, one <wnid> folder per class")
    classnames = _names_of_folders(wnids, names, names_path, image_dir)
    return classnames, {"test": partial(_class_folder_items, [image_dir / wnid for wnid in wnids])}


COOP_DATASETS: dict[str, tuple[str, Callable[[str, Path], tuple[list[str], SplitReaders]]]] = {
    # name: (folder under --data-root, reader)
    "ImageNet": ("imagenet", _read_imagenet),
    "Caltech101": ("caltech-101", partial(_read_split_file, image_subdir="101_ObjectCategories")),
    "OxfordPets": ("oxford_pets", partial(_read_split_file, image_subdir="images")),
    "StanfordCars": ("stanford_cars", partial(_read_split_file, image_subdir="")),
    "OxfordFlowers": ("oxford_flowers", partial(_read_split_file, image_subdir="jpg")),
    "Food101": ("food-101", partial(_read_split_file, image_subdir="images")),
    "FGVCAircraft": ("fgvc_aircraft", _read_fgvc_aircraft),
    "SUN397": ("sun397", partial(_read_split_file, image_subdir="SUN397")),
    "DescribableTextures": ("dtd", partial(_read_split_file, image_subdir="images")),
    "EuroSAT": ("eurosat", partial(_read_split_file, image_subdir="2750")),
    "UCF101": ("ucf101", partial(_read_split_file, image_subdir="UCF-101-midframes")),
    "ImageNetV2": ("imagenetv2", _read_imagenetv2),
    "ImageNetSketch": ("imagenet-sketch", partial(_read_wnid_test_set, image_subdir="images")),
    "ImageNetA": ("imagenet-adversarial", partial(_read_wnid_test_set, image_subdir="imagenet-a")),
    "ImageNetR": ("imagenet-rendition", partial(_read_wnid_test_set, image_subdir="imagenet-r")),
}


def _lookup_key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def canonical_coop_name(name: str) -> str:
    """``flowers``, ``FGVC_Aircraft``, ``dtd`` → CoOp's dataset name; a one-line error listing the known ones."""
    by_key = {_lookup_key(canonical): canonical for canonical in COOP_DATASETS} | ALIASES
    canonical = by_key.get(_lookup_key(name))
    if canonical is None:
        raise CftoolError(
            f"coop:{name}: unknown CoOp dataset; known: {', '.join(COOP_DATASETS)} "
            f"(also {', '.join(ALIASES)}; case, '_' and '-' do not matter)"
        )
    return canonical


def coop_source(name: str, data_root: Path) -> CoopSource:
    canonical = canonical_coop_name(name)
    dataset_subdir, read = COOP_DATASETS[canonical]
    if not (data_root / dataset_subdir).is_dir():
        raise CftoolError(
            f"coop:{canonical}: expected CoOp's {dataset_subdir}/ folder at {data_root / dataset_subdir} "
            f"(see CoOp's DATASETS.md) under the data root {data_root}; {DATA_ROOT_HINT}"
        )
    try:
        raw_classnames, split_readers = read(canonical, data_root / dataset_subdir)
    except CftoolError as err:
        raise CftoolError(f"coop:{canonical}: {err}") from err
    return CoopSource(canonical, raw_classnames, split_readers)
