"""`mtil:NAME` — MTIL's eleven datasets, read as ZSCL's MTIL code reads them (github.com/Thunderbeee/ZSCL, ``mtil/``).

ZSCL builds each dataset with torchvision's class under its ``--data-location`` (default ``./data``);
``--data-root`` is that same folder, so one download serves both. Class names, templates, splits and label order
are ZSCL's. Layout under ``--data-root`` (``ID`` an image id, ``CLASS`` a class folder):

============ ================================================================================= ==============
dataset      files                                                                             train / test
============ ================================================================================= ==============
Aircraft     fgvc-aircraft-2013b/data/variants.txt, images_variant_{train,test}.txt,           train / test
             images/ID.jpg
Caltech101   caltech101/101_ObjectCategories/CLASS/image_0001.jpg (and BACKGROUND_Google/)     80 / 20 % (1)
CIFAR100     cifar-100-python/train, test, meta (pickled batches)                              train / test
DTD          dtd/dtd/labels/{train1,test1}.txt, dtd/dtd/images/CLASS/ID.jpg                    train1 / test1
EuroSAT      eurosat/2750/CLASS/ID.jpg (the ten RGB class folders)                             80 / 20 % (1)
Flowers      flowers-102/imagelabels.mat, setid.mat, jpg/image_00001.jpg                       trnid / tstid
Food         food-101/meta/{train,test}.json, images/CLASS/ID.jpg                              train / test
MNIST        MNIST/raw/{train,t10k}-images-idx3-ubyte, {train,t10k}-labels-idx1-ubyte          train / t10k
             (uncompressed, as torchvision leaves them)
OxfordPet    oxford-iiit-pet/annotations/{trainval,test}.txt, images/ID.jpg                    trainval / test
StanfordCars stanford_cars/devkit/cars_meta.mat, devkit/cars_train_annos.mat,                  train / test
             cars_test_annos_withlabels.mat, cars_train/ID.jpg, cars_test/ID.jpg
SUN397       SUN397/ClassName.txt, SUN397/a/abbey/sun_ID.jpg, …                                80 / 20 % (1)
============ ================================================================================= ==============

(1) No official split: ZSCL draws 80 % train and 20 % test with ``torch.utils.data.random_split`` seeded with 42
over the whole dataset in torchvision's order. For SUN397 that order is the file system's (``Path.rglob``), so
its split is only as stable as the directory listing. ZSCL evaluates on the ``test`` split, averaging the text
features of all of a dataset's templates; its training loss uses the first template only.

torchvision's own classes are reused where they read the files without scipy or checksums; CIFAR-100 (whose class
insists on the official checksums), Flowers102 and Stanford Cars (whose classes need scipy for their ``.mat``
files) are read here the same way, with a small MAT-file v5 reader. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import pickletools
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from cftool.data.specs import (
    DATA_ROOT_HINT,
    ImageSource,
    check_regular_file,
    files_fingerprint,
    load_image,
    stays_inside,
)
from cftool.errors import CftoolError

# The protocol's order (ZSCL's scripts/ZSCL.sh), under ZSCL's dataset class names.
MTIL_ORDER: tuple[str, ...] = (
    "Aircraft",
    "Caltech101",
    "CIFAR100",
    "DTD",
    "EuroSAT",
    "Flowers",
    "Food",
    "MNIST",
    "OxfordPet",
    "StanfordCars",
    "SUN397",
)
# ZSCL's second order (MTIL order II; mtil/scripts/ZSCL_minus.sh:8). Its per-task lrs (ZSCL_minus.sh:9) are the
# datasets' own in either order: 5e-5 for Aircraft and MNIST, 1e-5 for the others (scripts/ZSCL.sh:9).
MTIL_ORDER_II: tuple[str, ...] = (
    "StanfordCars",
    "Food",
    "MNIST",
    "OxfordPet",
    "Flowers",
    "SUN397",
    "Aircraft",
    "Caltech101",
    "DTD",
    "EuroSAT",
    "CIFAR100",
)
MTIL_SPLITS = ("train", "test")

# Other spellings people use for these datasets, compared after _normalised().
MTIL_ALIASES = {
    "cars": "StanfordCars",
    "pets": "OxfordPet",
    "oxfordpets": "OxfordPet",
    "oxfordiiitpet": "OxfordPet",
    "food101": "Food",
    "flowers102": "Flowers",
    "oxfordflowers": "Flowers",
    "fgvcaircraft": "Aircraft",
    "describabletextures": "DTD",
}

# ZSCL's prompt templates and fixed class-name lists (src/datasets/collections.py, cifar10.py), in its order;
# "{}" takes the class name.
AIRCRAFT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}, a type of aircraft.",
    "a photo of the {}, a type of aircraft.",
)
# ZSCL's names for torchvision's class folders in their sorted order (Faces, Faces_easy, Leopards, Motorbikes,
# accordion, …); the double space in "head of a  crocodile" is ZSCL's.
CALTECH101_CLASSNAMES: tuple[str, ...] = (
    "off-center face",
    "centered face",
    "leopard",
    "motorbike",
    "accordion",
    "airplane",
    "anchor",
    "ant",
    "barrel",
    "bass",
    "beaver",
    "binocular",
    "bonsai",
    "brain",
    "brontosaurus",
    "buddha",
    "butterfly",
    "camera",
    "cannon",
    "side of a car",
    "ceiling fan",
    "cellphone",
    "chair",
    "chandelier",
    "body of a cougar cat",
    "face of a cougar cat",
    "crab",
    "crayfish",
    "crocodile",
    "head of a  crocodile",
    "cup",
    "dalmatian",
    "dollar bill",
    "dolphin",
    "dragonfly",
    "electric guitar",
    "elephant",
    "emu",
    "euphonium",
    "ewer",
    "ferry",
    "flamingo",
    "head of a flamingo",
    "garfield",
    "gerenuk",
    "gramophone",
    "grand piano",
    "hawksbill",
    "headphone",
    "hedgehog",
    "helicopter",
    "ibis",
    "inline skate",
    "joshua tree",
    "kangaroo",
    "ketch",
    "lamp",
    "laptop",
    "llama",
    "lobster",
    "lotus",
    "mandolin",
    "mayfly",
    "menorah",
    "metronome",
    "minaret",
    "nautilus",
    "octopus",
    "okapi",
    "pagoda",
    "panda",
    "pigeon",
    "pizza",
    "platypus",
    "pyramid",
    "revolver",
    "rhino",
    "rooster",
    "saxophone",
    "schooner",
    "scissors",
    "scorpion",
    "sea horse",
    "snoopy (cartoon beagle)",
    "soccer ball",
    "stapler",
    "starfish",
    "stegosaurus",
    "stop sign",
    "strawberry",
    "sunflower",
    "tick",
    "trilobite",
    "umbrella",
    "watch",
    "water lilly",
    "wheelchair",
    "wild cat",
    "windsor chair",
    "wrench",
    "yin and yang symbol",
)
CALTECH101_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a painting of a {}.",
    "a plastic {}.",
    "a sculpture of a {}.",
    "a sketch of a {}.",
    "a tattoo of a {}.",
    "a toy {}.",
    "a rendition of a {}.",
    "a embroidered {}.",
    "a cartoon {}.",
    "a {} in a video game.",
    "a plushie {}.",
    "a origami {}.",
    "art of a {}.",
    "graffiti of a {}.",
    "a drawing of a {}.",
    "a doodle of a {}.",
    "a photo of the {}.",
    "a painting of the {}.",
    "the plastic {}.",
    "a sculpture of the {}.",
    "a sketch of the {}.",
    "a tattoo of the {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "the embroidered {}.",
    "the cartoon {}.",
    "the {} in a video game.",
    "the plushie {}.",
    "the origami {}.",
    "art of the {}.",
    "graffiti of the {}.",
    "a drawing of the {}.",
    "a doodle of the {}.",
)
# ZSCL's CIFAR-100 prompts with its CIFAR-10 templates.
CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)
DTD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {} texture.",
    "a photo of a {} pattern.",
    "a photo of a {} thing.",
    "a photo of a {} object.",
    "a photo of the {} texture.",
    "a photo of the {} pattern.",
    "a photo of the {} thing.",
    "a photo of the {} object.",
)
# ZSCL's names for the sorted folders AnnualCrop, Forest, HerbaceousVegetation, Highway, Industrial, Pasture,
# PermanentCrop, Residential, River, SeaLake.
EUROSAT_CLASSNAMES: tuple[str, ...] = (
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings or commercial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings or homes or apartments",
    "river",
    "lake or sea",
)
EUROSAT_TEMPLATES: tuple[str, ...] = (
    "a centered satellite photo of {}.",
    "a centered satellite photo of a {}.",
    "a centered satellite photo of the {}.",
)
# ZSCL's list for labels 1..102 (torchvision's own differs: "pink-yellow dahlia?").
FLOWERS_CLASSNAMES: tuple[str, ...] = (
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
    "fritillary",
    "red ginger",
    "grape hyacinth",
    "corn poppy",
    "prince of wales feathers",
    "stemless gentian",
    "artichoke",
    "sweet william",
    "carnation",
    "garden phlox",
    "love in the mist",
    "mexican aster",
    "alpine sea holly",
    "ruby-lipped cattleya",
    "cape flower",
    "great masterwort",
    "siam tulip",
    "lenten rose",
    "barbeton daisy",
    "daffodil",
    "sword lily",
    "poinsettia",
    "bolero deep blue",
    "wallflower",
    "marigold",
    "buttercup",
    "oxeye daisy",
    "common dandelion",
    "petunia",
    "wild pansy",
    "primula",
    "sunflower",
    "pelargonium",
    "bishop of llandaff",
    "gaura",
    "geranium",
    "orange dahlia",
    "pink-yellow dahlia",
    "cautleya spicata",
    "japanese anemone",
    "black-eyed susan",
    "silverbush",
    "californian poppy",
    "osteospermum",
    "spring crocus",
    "bearded iris",
    "windflower",
    "tree poppy",
    "gazania",
    "azalea",
    "water lily",
    "rose",
    "thorn apple",
    "morning glory",
    "passion flower",
    "lotus",
    "toad lily",
    "anthurium",
    "frangipani",
    "clematis",
    "hibiscus",
    "columbine",
    "desert-rose",
    "tree mallow",
    "magnolia",
    "cyclamen",
    "watercress",
    "canna lily",
    "hippeastrum",
    "bee balm",
    "ball moss",
    "foxglove",
    "bougainvillea",
    "camellia",
    "mallow",
    "mexican petunia",
    "bromelia",
    "blanket flower",
    "trumpet creeper",
    "blackberry lily",
)
FLOWERS_TEMPLATES: tuple[str, ...] = ("a photo of a {}, a type of flower.",)
FOOD_TEMPLATES: tuple[str, ...] = ("a photo of a {}, a type of food.",)
MNIST_TEMPLATES: tuple[str, ...] = ('a photo of the number: "{}".',)
OXFORD_PET_TEMPLATES: tuple[str, ...] = ("a photo of a {}, a type of pet.",)
STANFORD_CARS_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}, a type of car.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of my {}.",
    "i love my {}!",
    "a photo of my dirty {}.",
    "a photo of my clean {}.",
    "a photo of my new {}.",
    "a photo of my old {}.",
)
SUN397_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
)

T = TypeVar("T")

# What a damaged or truncated file makes torchvision's readers and ours raise (torchvision's take the shape of a
# JSON file for granted: a list where a dict belongs is an AttributeError, deep nesting a RecursionError).
_READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,
    RuntimeError,
    EOFError,
    AttributeError,
    RecursionError,
)


def _reason(err: BaseException | str) -> str:
    """An error's message on one line; a KeyError from torchvision's readers is a class its class list lacks."""
    if isinstance(err, str):
        return err
    if isinstance(err, KeyError):
        return f"class {err.args[0]!r} is not in the class list"
    return " ".join(str(err).split()) or type(err).__name__


def _spaces(names: Sequence[str]) -> list[str]:
    """ZSCL's ``process_labels``: underscores read as spaces."""
    return [name.replace("_", " ") for name in names]


class _FileSplit:
    """A split whose images are files: paths and labels in the order ZSCL's dataset yields them."""

    def __init__(self, paths: list[Path], labels: list[int], label_file: Path):
        self.paths, self.labels = paths, labels
        self.label_file = label_file  # where the labels were read, for errors


class _ArraySplit:
    """A split stored in a few big files: labels up front, pixels (N × H × W [× 3] uint8) read when first needed."""

    def __init__(self, labels: list[int], files: list[Path], label_file: Path, read_pixels: Callable[[], np.ndarray]):
        self.labels, self.files, self.label_file = labels, files, label_file
        self._read_pixels = read_pixels
        self._pixels: np.ndarray | None = None

    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = self._read_pixels()
        return self._pixels


class _MtilSource:
    """One MTIL dataset: ZSCL's class names and templates, and its train and test splits read under ``data_root``."""

    name: str
    folder: str  # the dataset's folder under the data root, as torchvision names it
    layout: str  # what must be under the data root, for errors
    templates: tuple[str, ...]

    def __init__(self, data_root: Path):
        self.data_root = data_root
        self.base = data_root / self.folder
        self._memo: dict[str, object] = {}
        self.require(self.base)

    @cached_property
    def classnames(self) -> list[str]:
        return self._read_classnames()

    def _read_classnames(self) -> list[str]:
        raise NotImplementedError

    def _read_split(self, split: str) -> _FileSplit | _ArraySplit:
        raise NotImplementedError

    def labels(self, split: str) -> list[int]:
        return self._split(split).labels

    def image(self, split: str, index: int) -> Image.Image:
        part = self._split(split)
        if isinstance(part, _ArraySplit):
            # ZSCL's preprocess converts to RGB; MNIST's pixels are grey.
            return Image.fromarray(part.pixels()[index]).convert("RGB")
        path = part.paths[index]
        try:
            return load_image(path)
        except OSError as err:
            raise self.unreadable(path, err) from err

    def fingerprint(self, split: str, indices: Sequence[int]) -> str:
        part = self._split(split)
        if isinstance(part, _FileSplit):
            return files_fingerprint(part.paths[index] for index in indices)
        digest = hashlib.sha256(files_fingerprint(part.files).encode())
        digest.update(json.dumps([int(index) for index in indices]).encode())
        return digest.hexdigest()

    def _split(self, split: str) -> _FileSplit | _ArraySplit:
        if split not in MTIL_SPLITS:
            raise ValueError(f"MTIL datasets have {' and '.join(MTIL_SPLITS)} splits, as ZSCL uses them, not '{split}'")
        return self._once(split, lambda: self._checked(self._read_split(split)))

    def _checked(self, part: _FileSplit | _ArraySplit) -> _FileSplit | _ArraySplit:
        n_classes = len(self.classnames)
        outside = next((label for label in part.labels if not 0 <= label < n_classes), None)
        if outside is not None:
            raise self.unreadable(part.label_file, f"label {outside} is outside ZSCL's {n_classes} classes")
        if isinstance(part, _FileSplit):
            escaping = next((path for path in part.paths if not self._inside(path)), None)
            if escaping is not None:
                raise self.unreadable(
                    part.label_file,
                    f"it names {self._shown(escaping)}; image paths must be relative and stay inside the dataset "
                    f"folder {self.base}",
                )
        return part

    def _inside(self, path: Path) -> bool:
        """Whether a path built from a file list stays in the dataset's folder. The lists' entries (read by
        torchvision or by us) are joined to it, so an entry with '..' or an absolute one leads elsewhere."""
        text, folder = str(path), os.path.join(self.base, "")
        return text.startswith(folder) and stays_inside(text[len(folder) :])

    def _shown(self, path: Path) -> str:
        """A path as its entry in a file list wrote it: relative to the dataset's folder where it starts there."""
        text, folder = str(path), os.path.join(self.base, "")
        return repr(text[len(folder) :] if text.startswith(folder) else text)

    def _once(self, key: str, build: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def require(self, *paths: Path) -> None:
        """Each path exists and is a folder or a regular file, which can be read without blocking."""
        for path in paths:
            if not path.exists():
                raise CftoolError(
                    f"mtil:{self.name}: expected {path} (layout {self.layout} under the data root {self.data_root}; "
                    f"{DATA_ROOT_HINT})"
                )
            if not path.is_dir():
                try:
                    check_regular_file(path)
                except OSError as err:
                    raise self.unreadable(path, err) from None

    def unreadable(self, path: Path, reason: BaseException | str) -> CftoolError:
        return CftoolError(
            f"mtil:{self.name}: cannot read {path} ({_reason(reason)}); "
            f"expected {self.layout} under the data root {self.data_root}"
        )

    def torchvision(self, read_file: Path, build: Callable[[], T]) -> T:
        """torchvision's dataset, with a damaged ``read_file`` reported in one line."""
        try:
            return build()
        except _READ_ERRORS as err:
            raise self.unreadable(read_file, err) from err

    def require_class_folders(self, folder: Path, found: int, besides: str = "") -> None:
        """ZSCL names these classes by a fixed list in the folders' sorted order: another count would mislabel."""
        if found != len(self.classnames):
            raise self.unreadable(
                folder, f"{found} class folders{besides}, ZSCL names {len(self.classnames)} in their sorted order"
            )

    def check_split_classes(self, classes: Sequence[str], label_file: Path) -> None:
        """ZSCL names classes from the train split but labels each split by its own sorted class list, so the two
        agree only when every split holds every class."""
        if _spaces(classes) != self.classnames:
            raise self.unreadable(
                label_file, f"its {len(classes)} classes differ from the train split's {len(self.classnames)}"
            )

    def read_mat(self, path: Path) -> dict[str, object]:
        self.require(path)
        try:
            return _read_mat(path.read_bytes())
        except (OSError, ValueError, struct.error) as err:
            raise self.unreadable(path, err) from err

    def mat_integers(self, path: Path, variable: str) -> list[int]:
        values = self.read_mat(path).get(variable)
        if not isinstance(values, np.ndarray) or values.size == 0 or not np.all(_whole(values)):
            raise self.unreadable(path, f"no numeric array '{variable}' of whole numbers")
        return [int(value) for value in values]


def _zscl_random_split(whole: _FileSplit, split: str) -> _FileSplit:
    """ZSCL's ``split_dataset``: of a permutation seeded with 42, the first ``int(0.8 n)`` train, the rest test."""
    n_train = int(0.8 * len(whole.labels))
    train, test = torch.utils.data.random_split(
        range(len(whole.labels)), [n_train, len(whole.labels) - n_train], generator=torch.Generator().manual_seed(42)
    )
    indices = (train if split == "train" else test).indices
    return _FileSplit([whole.paths[i] for i in indices], [whole.labels[i] for i in indices], whole.label_file)


class _Aircraft(_MtilSource):
    name = "Aircraft"
    folder = "fgvc-aircraft-2013b"
    layout = "fgvc-aircraft-2013b/data/ with variants.txt, images_variant_{train,test}.txt and images/ID.jpg"
    templates = AIRCRAFT_TEMPLATES

    def _dataset(self, split: str) -> datasets.FGVCAircraft:
        label_file = self.base / "data" / f"images_variant_{split}.txt"
        self.require(self.base / "data" / "variants.txt", label_file, self.base / "data" / "images")
        # ZSCL trains on "train", not "trainval", at the variant level (100 classes).
        return self._once(
            f"torchvision {split}",
            lambda: self.torchvision(label_file, lambda: datasets.FGVCAircraft(self.data_root, split=split)),
        )

    def _read_classnames(self) -> list[str]:
        return _spaces(self._dataset("train").classes)

    def _read_split(self, split: str) -> _FileSplit:
        dataset = self._dataset(split)
        # torchvision keeps the (path, label) lists private; reading them avoids decoding images for labels.
        paths = [Path(path) for path in dataset._image_files]
        return _FileSplit(paths, list(dataset._labels), self.base / "data" / f"images_variant_{split}.txt")


class _Caltech101(_MtilSource):
    name = "Caltech101"
    folder = "caltech101"
    layout = "caltech101/101_ObjectCategories/CLASS/image_0001.jpg, BACKGROUND_Google/ among the class folders"
    templates = CALTECH101_TEMPLATES

    def _read_classnames(self) -> list[str]:
        return list(CALTECH101_CLASSNAMES)

    def _whole(self) -> _FileSplit:
        categories = self.base / "101_ObjectCategories"
        # torchvision removes BACKGROUND_Google from the class folders and fails when it is missing.
        self.require(categories / "BACKGROUND_Google")
        dataset = self.torchvision(categories, lambda: datasets.Caltech101(self.data_root))
        self.require_class_folders(categories, len(dataset.categories), " besides BACKGROUND_Google")
        # torchvision numbers each class folder's files image_0001.jpg … image_N.jpg, N the folder's file count.
        paths = [
            categories / dataset.categories[label] / f"image_{number:04d}.jpg"
            for number, label in zip(dataset.index, dataset.y, strict=True)
        ]
        return _FileSplit(paths, list(dataset.y), categories)

    def _read_split(self, split: str) -> _FileSplit:
        return _zscl_random_split(self._once("whole", self._whole), split)


class _RefusedPickle(pickle.UnpicklingError):
    """A pickle that holds more than CIFAR-100's files do."""


class _PickledDtype:
    """Stands for ``numpy.dtype(code, align, copy)`` in a CIFAR pickle, and takes the byte order from the state the
    pickle gives it. Only plain numbers: a dtype of Python objects would let the pickle put objects into an array,
    and numpy's own dtype.__setstate__ accepts states that contradict the dtype (a subarray wider than its itemsize)."""

    def __init__(self, code: object, align: object = False, copy: object = False):
        # Matched before numpy parses it: numpy reads some dtype strings with Python's parser.
        if isinstance(code, str) and _PLAIN_NUMBER_CODE.fullmatch(code):
            try:
                self.dtype = np.dtype(code)
                return
            except TypeError:  # a size numpy lacks, such as 'u3'
                pass
        objects = isinstance(code, str) and code.lstrip("<>|=").startswith("O")
        kind = "Python objects" if objects else "other values than numbers"
        raise _RefusedPickle(f"it holds a numpy array of {kind} (dtype {code!r:.40})")

    def __setstate__(self, state: object) -> None:
        # numpy writes (3, byte order, None, None, None, -1, -1, 0) for a plain number.
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[1] in ("<", ">", "|", "=")
            and state[2:5] == (None, None, None)
        ):
            raise _RefusedPickle(f"it holds a numpy dtype state numpy does not write for {self.dtype}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _PickledArray:
    """Stands for ``numpy.core.multiarray._reconstruct(numpy.ndarray, …)`` in a CIFAR pickle; the state the pickle
    then gives it (shape, dtype, order, raw bytes) becomes ``array`` through np.frombuffer, so that numpy's own
    ndarray.__setstate__ never sees a state the pickle made up."""

    def __init__(self, array_type: object, shape: object, code: object):
        if array_type is not _NDARRAY:
            raise _RefusedPickle("it rebuilds an array of another type than numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # (1, shape, dtype, Fortran order, raw bytes), or the older form without the version that numpy still reads.
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _RefusedPickle("it holds a numpy array state numpy does not write")
        shape, dtype, fortran_order, data = state
        if isinstance(data, str):  # Python 2's str, read with encoding="latin1"
            data = data.encode("latin1")
        if not (
            isinstance(dtype, _PickledDtype)
            and isinstance(shape, tuple)
            and len(shape) <= _NUMPY_MAX_DIMS
            and all(type(size) is int and size >= 0 for size in shape)
            and isinstance(data, bytes)
        ):
            raise _RefusedPickle("it holds a numpy array state numpy does not write")
        if len(data) != math.prod(shape) * dtype.dtype.itemsize:
            raise _RefusedPickle(f"it holds {len(data)} bytes for a numpy array of shape {shape} and {dtype.dtype}")
        self.array = np.frombuffer(data, dtype.dtype).reshape(shape, order="F" if fortran_order else "C")


def _latin1_bytes(text: object, encoding: object) -> bytes:
    """Stands for ``_codecs.encode(text, "latin1")``, how Python 3 pickles bytes at protocols 0 to 2 (CIFAR files
    re-pickled by Python 3 at protocol 2 hold their pixels so)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _RefusedPickle(f"it calls _codecs.encode with {encoding!r}, not 'latin1'")
    return text.encode("latin1")


_NDARRAY = object()  # numpy.ndarray as a pickle names it: only _PickledArray takes it, nothing can call it
_PICKLE_MAX_OPCODES = 1_000_000  # CIFAR-100's training batch, the largest file, holds about 200,000
_PLAIN_NUMBER_CODE = re.compile(r"[<>|=]?[biuf][0-9]{1,2}")  # 'u1' (CIFAR's pixels), '<i8', 'f4' …
_NUMPY_MAX_DIMS = 64
# Every global CIFAR-100's python files name (numpy 2 moved numpy.core to numpy._core), or the same files re-pickled
# by Python 3 name (_codecs.encode), and what stands for each.
_CIFAR_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _PickledArray,
    ("numpy._core.multiarray", "_reconstruct"): _PickledArray,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PickledDtype,
    ("_codecs", "encode"): _latin1_bytes,
}


def _check_opcodes(file: BinaryIO) -> None:
    """Looks over a pickle's opcodes before the unpickler runs them, refusing what would let a file claim far more
    memory than it holds, or trip the unpickler: more opcodes than CIFAR's files hold (each may make an object), a memo
    index beyond the opcodes so far (CPython's unpickler grows its memo table to the index: 9 bytes claim gigabytes),
    and the opcodes of protocol 5 (told of a bytearray too large for memory, the unpickler prints to stderr)."""
    head = file.read(2)
    if len(head) == 2 and head[0] == pickle.PROTO[0] and head[1] > pickle.HIGHEST_PROTOCOL:
        raise _RefusedPickle(
            f"it declares pickle protocol {head[1]}, beyond Python's highest ({pickle.HIGHEST_PROTOCOL}); use the "
            "files of the original cifar-100-python.tar.gz (protocol 2)"
        )
    file.seek(0)
    for count, (opcode, argument, _) in enumerate(pickletools.genops(file)):
        if count == _PICKLE_MAX_OPCODES:
            raise _RefusedPickle(f"it holds more than {_PICKLE_MAX_OPCODES} opcodes")
        if opcode.proto > 4:
            raise _RefusedPickle(
                f"it is a pickle of protocol 5 (opcode {opcode.name}), which cftool does not read; use the files of "
                "the original cifar-100-python.tar.gz (protocol 2), or pickle them again at protocol 4 or lower"
            )
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and argument > count:
            raise _RefusedPickle(f"its opcode {count} stores memo entry {argument}; picklers number them in order")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays of numbers, what CIFAR-100's files hold, and refuses
    any other global the pickle names: unpickling calls whatever it names, os.system included."""

    def find_class(self, module: str, name: str) -> object:
        stand_in = _CIFAR_GLOBALS.get((module, name))
        if stand_in is None:
            raise _RefusedPickle(f"it references {module}.{name}, which could run code")
        return stand_in


class _Cifar100(_MtilSource):
    name = "CIFAR100"
    folder = "cifar-100-python"
    layout = "cifar-100-python/ with the pickled batches train, test and meta"
    templates = CIFAR_TEMPLATES

    def _unpickle(self, path: Path) -> dict:
        self.require(path)
        try:
            with open(path, "rb") as file:
                _check_opcodes(file)
                file.seek(0)
                # The batches were pickled by Python 2; latin1 keeps their byte strings intact, as torchvision does.
                content = _CifarUnpickler(file, encoding="latin1").load()
        except _RefusedPickle as err:
            raise self.unreadable(
                path,
                f"refused: {err}; the CIFAR-100 python files hold only dicts, lists, strings, numbers and numpy "
                "arrays of numbers",
            ) from None
        except (*_READ_ERRORS, pickle.UnpicklingError, MemoryError) as err:
            reason = "it declares more bytes than memory holds" if isinstance(err, MemoryError) else _reason(err)
            raise self.unreadable(path, f"not a complete pickle: {reason}") from err
        if not isinstance(content, dict):
            raise self.unreadable(path, f"holds a {type(content).__name__}, not CIFAR's dict")
        return {key: value.array if isinstance(value, _PickledArray) else value for key, value in content.items()}

    def _read_classnames(self) -> list[str]:
        path = self.base / "meta"
        names = self._unpickle(path).get("fine_label_names")
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise self.unreadable(path, "no 'fine_label_names' list")
        return _spaces(names)

    def _read_split(self, split: str) -> _ArraySplit:
        path = self.base / split
        batch = self._unpickle(path)
        data, labels = batch.get("data"), batch.get("fine_labels")
        image_bytes = 3 * 32 * 32
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
            raise self.unreadable(path, "no 'data' array of uint8 rows")
        if data.shape[1] != image_bytes:
            raise self.unreadable(path, f"rows of {data.shape[1]} bytes, not 32×32×3 = {image_bytes}")
        if not isinstance(labels, list) or len(labels) != len(data):
            raise self.unreadable(path, f"expected 'fine_labels', one per image of its {len(data)}")
        not_integer = next(((i, label) for i, label in enumerate(labels) if type(label) is not int), None)
        if not_integer is not None:  # a float would be truncated, a bool read as 0 or 1
            raise self.unreadable(path, f"label {not_integer[1]!r} of image {not_integer[0]} is not an integer")
        # Rows are channel-planar: R plane, G plane, B plane; images want height × width × channel.
        pixels = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return _ArraySplit(labels, [path], path, lambda: pixels)


class _Dtd(_MtilSource):
    name = "DTD"
    folder = "dtd"
    layout = "dtd/dtd/labels/{train1,test1}.txt and dtd/dtd/images/CLASS/ID.jpg"
    templates = DTD_TEMPLATES

    def _label_file(self, split: str) -> Path:
        return self.base / "dtd" / "labels" / f"{split}1.txt"  # ZSCL uses partition 1

    def _dataset(self, split: str) -> datasets.DTD:
        self.require(self._label_file(split), self.base / "dtd" / "images")
        return self._once(
            f"torchvision {split}",
            lambda: self.torchvision(self._label_file(split), lambda: datasets.DTD(self.data_root, split=split)),
        )

    def _read_classnames(self) -> list[str]:
        return _spaces(self._dataset("train").classes)

    def _read_split(self, split: str) -> _FileSplit:
        dataset = self._dataset(split)
        self.check_split_classes(dataset.classes, self._label_file(split))
        return _FileSplit([Path(path) for path in dataset._image_files], list(dataset._labels), self._label_file(split))


class _EuroSat(_MtilSource):
    name = "EuroSAT"
    folder = "eurosat"
    layout = "eurosat/2750/CLASS/ID.jpg with EuroSAT's ten RGB class folders (AnnualCrop … SeaLake)"
    templates = EUROSAT_TEMPLATES

    def _read_classnames(self) -> list[str]:
        return list(EUROSAT_CLASSNAMES)

    def _whole(self) -> _FileSplit:
        images = self.base / "2750"
        self.require(images)
        dataset = self.torchvision(images, lambda: datasets.EuroSAT(self.data_root))
        self.require_class_folders(images, len(dataset.classes))
        return _FileSplit([Path(path) for path, _ in dataset.samples], [label for _, label in dataset.samples], images)

    def _read_split(self, split: str) -> _FileSplit:
        return _zscl_random_split(self._once("whole", self._whole), split)


class _Flowers(_MtilSource):
    name = "Flowers"
    folder = "flowers-102"
    layout = "flowers-102/ with imagelabels.mat, setid.mat and jpg/image_00001.jpg …"
    templates = FLOWERS_TEMPLATES
    # setid.mat's variable for each split ZSCL uses: 1020 training and 6149 test images.
    _SET_IDS = {"train": "trnid", "test": "tstid"}

    def _read_classnames(self) -> list[str]:
        return list(FLOWERS_CLASSNAMES)

    def _read_split(self, split: str) -> _FileSplit:
        setid_path, labels_path, images = self.base / "setid.mat", self.base / "imagelabels.mat", self.base / "jpg"
        self.require(images)
        image_ids = self.mat_integers(setid_path, self._SET_IDS[split])
        labels = self.mat_integers(labels_path, "labels")  # of image_00001.jpg, image_00002.jpg, …, from 1
        unlabelled = next((image_id for image_id in image_ids if not 1 <= image_id <= len(labels)), None)
        if unlabelled is not None:
            raise self.unreadable(
                setid_path, f"image id {unlabelled} has none of {labels_path.name}'s {len(labels)} labels"
            )
        return _FileSplit(
            [images / f"image_{image_id:05d}.jpg" for image_id in image_ids],
            [labels[image_id - 1] - 1 for image_id in image_ids],
            labels_path,
        )


class _Food(_MtilSource):
    name = "Food"
    folder = "food-101"
    layout = "food-101/meta/{train,test}.json and food-101/images/CLASS/ID.jpg"
    templates = FOOD_TEMPLATES

    def _dataset(self, split: str) -> datasets.Food101:
        label_file = self.base / "meta" / f"{split}.json"
        self.require(label_file, self.base / "images")
        return self._once(
            f"torchvision {split}",
            lambda: self.torchvision(label_file, lambda: datasets.Food101(self.data_root, split=split)),
        )

    def _read_classnames(self) -> list[str]:
        return _spaces(self._dataset("train").classes)

    def _read_split(self, split: str) -> _FileSplit:
        dataset, label_file = self._dataset(split), self.base / "meta" / f"{split}.json"
        self.check_split_classes(dataset.classes, label_file)
        return _FileSplit([Path(path) for path in dataset._image_files], list(dataset._labels), label_file)


class _Mnist(_MtilSource):
    name = "MNIST"
    folder = "MNIST"
    layout = "MNIST/raw/ with the uncompressed {train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte"
    templates = MNIST_TEMPLATES

    def _read_classnames(self) -> list[str]:
        return _spaces(datasets.MNIST.classes)  # "0 - zero" … "9 - nine", as ZSCL takes them

    def _idx_shape(self, path: Path, n_dims: int) -> tuple[int, ...]:
        """The shape an idx file of unsigned bytes declares, after checking the file holds exactly that much."""
        self.require(path)
        header_size = 4 + 4 * n_dims
        with open(path, "rb") as file:
            header = file.read(header_size)
        # Magic number: two zero bytes, element type 0x08 (unsigned byte), number of dimensions.
        if len(header) < header_size or header[:4] != bytes((0, 0, 0x08, n_dims)):
            raise self.unreadable(path, f"not an idx file of {n_dims}-dimensional unsigned bytes")
        shape = struct.unpack(f">{n_dims}I", header[4:])
        expected, actual = header_size + math.prod(shape), path.stat().st_size
        if actual != expected:
            raise self.unreadable(path, f"{actual} bytes where its header promises {expected}: truncated or damaged")
        return shape

    def _read_split(self, split: str) -> _ArraySplit:
        prefix = "train" if split == "train" else "t10k"
        images_path = self.base / "raw" / f"{prefix}-images-idx3-ubyte"
        labels_path = self.base / "raw" / f"{prefix}-labels-idx1-ubyte"
        n_images, *image_shape = self._idx_shape(images_path, 3)
        if image_shape != [28, 28]:  # MNIST's size; a 1 × 50,000,000 image would resize to gigabytes
            height, width = image_shape
            raise self.unreadable(images_path, f"images of {height}×{width} pixels, not MNIST's 28×28")
        (n_labels,) = self._idx_shape(labels_path, 1)
        if n_labels != n_images:
            raise self.unreadable(labels_path, f"{n_labels} labels for the {n_images} images of {images_path.name}")
        labels = self.torchvision(labels_path, lambda: read_label_file(str(labels_path))).tolist()
        return _ArraySplit(
            labels,
            [images_path, labels_path],
            labels_path,
            lambda: self.torchvision(images_path, lambda: read_image_file(str(images_path))).numpy(),
        )


class _OxfordPet(_MtilSource):
    name = "OxfordPet"
    folder = "oxford-iiit-pet"
    layout = "oxford-iiit-pet/annotations/{trainval,test}.txt and oxford-iiit-pet/images/ID.jpg"
    templates = OXFORD_PET_TEMPLATES
    # ZSCL trains on the official trainval list (3680 images) and tests on test (3669).
    _TORCHVISION_SPLITS = {"train": "trainval", "test": "test"}

    def _label_file(self, split: str) -> Path:
        return self.base / "annotations" / f"{self._TORCHVISION_SPLITS[split]}.txt"

    def _dataset(self, split: str) -> datasets.OxfordIIITPet:
        self.require(self._label_file(split), self.base / "images")
        return self._once(
            f"torchvision {split}",
            lambda: self.torchvision(
                self._label_file(split),
                lambda: datasets.OxfordIIITPet(self.data_root, split=self._TORCHVISION_SPLITS[split]),
            ),
        )

    def _read_classnames(self) -> list[str]:
        dataset = self._dataset("train")
        # torchvision names label k after the images labelled k: each label 1..N needs images and one breed.
        if sorted(set(dataset._labels)) != list(range(len(dataset.classes))):
            raise self.unreadable(self._label_file("train"), "labels must run 1..N with one breed name each")
        return _spaces(dataset.classes)

    def _read_split(self, split: str) -> _FileSplit:
        dataset = self._dataset(split)
        return _FileSplit([Path(path) for path in dataset._images], list(dataset._labels), self._label_file(split))


class _StanfordCars(_MtilSource):
    name = "StanfordCars"
    folder = "stanford_cars"
    layout = (
        "stanford_cars/ with devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
        "cars_train/ID.jpg and cars_test/ID.jpg"
    )
    templates = STANFORD_CARS_TEMPLATES

    def _read_classnames(self) -> list[str]:
        path = self.base / "devkit" / "cars_meta.mat"
        names = self.read_mat(path).get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise self.unreadable(path, "no cell array of strings 'class_names'")
        return _spaces(names)

    def _read_split(self, split: str) -> _FileSplit:
        if split == "train":
            annotations_path, images = self.base / "devkit" / "cars_train_annos.mat", self.base / "cars_train"
        else:
            annotations_path, images = self.base / "cars_test_annos_withlabels.mat", self.base / "cars_test"
        self.require(images)
        annotations = self.read_mat(annotations_path).get("annotations")
        if not (
            isinstance(annotations, list)
            and all(isinstance(record, dict) and {"fname", "class"} <= record.keys() for record in annotations)
        ):
            raise self.unreadable(annotations_path, "no struct array 'annotations' of fname and class")
        paths, labels = [], []
        for number, record in enumerate(annotations):
            fname, class_id = record["fname"], _mat_whole_number(record["class"])
            if not isinstance(fname, str):
                raise self.unreadable(annotations_path, f"fname of record {number} is not a file name")
            if class_id is None:
                shown = _mat_shown(record["class"])
                raise self.unreadable(annotations_path, f"class {shown} of record {number} is not a whole number")
            paths.append(images / fname)
            labels.append(class_id - 1)
        return _FileSplit(paths, labels, annotations_path)


class _Sun397(_MtilSource):
    name = "SUN397"
    folder = "SUN397"
    layout = "SUN397/ClassName.txt (lines /a/abbey …) and SUN397/a/abbey/sun_ID.jpg …"
    templates = SUN397_TEMPLATES

    def _dataset(self) -> datasets.SUN397:
        class_file = self.base / "ClassName.txt"
        self.require(class_file)
        return self._once("torchvision", lambda: self.torchvision(class_file, lambda: datasets.SUN397(self.data_root)))

    def _read_classnames(self) -> list[str]:
        return _spaces(self._dataset().classes)  # "apartment_building/outdoor" → "apartment building/outdoor"

    def _read_split(self, split: str) -> _FileSplit:
        dataset = self._dataset()
        class_file = self.base / "ClassName.txt"
        whole = _FileSplit([Path(path) for path in dataset._image_files], list(dataset._labels), class_file)
        return _zscl_random_split(whole, split)


_READERS: dict[str, type[_MtilSource]] = {
    reader.name: reader
    for reader in (
        _Aircraft,
        _Caltech101,
        _Cifar100,
        _Dtd,
        _EuroSat,
        _Flowers,
        _Food,
        _Mnist,
        _OxfordPet,
        _StanfordCars,
        _Sun397,
    )
}


def _normalised(name: str) -> str:
    """Case, spaces, hyphens and underscores ignored: "Food-101", "food_101" and "FOOD101" are one name."""
    return re.sub(r"[\s_-]", "", name).lower()


def mtil_name(name: str) -> str | None:
    """ZSCL's name of the MTIL dataset ``name`` (any case, or an alias such as Cars or Food101); None if unknown."""
    by_name = {_normalised(key): key for key in MTIL_ORDER} | MTIL_ALIASES
    return by_name.get(_normalised(name))


def mtil_source(name: str, data_root: Path) -> ImageSource:
    """The MTIL dataset ``name`` (ZSCL's name, any case, or an alias such as Cars or Food101) under ``data_root``."""
    key = mtil_name(name)
    if key is None:
        raise CftoolError(
            f"mtil:{name}: unknown MTIL dataset; known: {', '.join(MTIL_ORDER)} "
            "(also Cars, Pets, Food101, Flowers102, FGVCAircraft)"
        )
    return _READERS[key](data_root)


# MAT-file v5, the format of the Flowers and Stanford Cars label files (scipy.io.loadmat reads them for torchvision).
_MAT_NUMBER_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8, _MI_UTF16, _MI_UTF32 = 14, 15, 16, 17, 18
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_NUMERIC = range(6, 16)  # double, single, int8 … uint64
_MAT_COMPLEX_FLAG = 0x800
_MAT_TAG_BYTES = 8  # every element starts with a tag this long, so an array holds no more values than its bytes / 8
# What one file may make this reader hold, so that a small file cannot claim gigabytes. The real label files are far
# inside these bounds: the largest, Stanford Cars' training annotations, holds 8,144 records of six small arrays (a
# few MB and some 57,000 values once inflated), nested one level deep.
_MAT_MAX_INFLATED = 64 * 2**20  # bytes inflated from all of a file's compressed variables
_MAT_MAX_VALUES = 1_000_000  # cells, struct records and their fields
_MAT_MAX_DEPTH = 16  # cells and structs within cells and structs
_MAT_MAX_DIMS = 64  # numpy's limit


class _MatBudget:
    """What is left of the bounds above while one file is read."""

    def __init__(self):
        self.inflated = _MAT_MAX_INFLATED
        self.values = _MAT_MAX_VALUES

    def inflate(self, compressed: bytes, order: str) -> bytes:
        """A compressed variable's element, inflated no further than its tag declares and the budget allows
        (zlib.decompress would inflate a bomb whole before its size could be looked at)."""
        inflater = zlib.decompressobj()
        tag = inflater.decompress(compressed, _MAT_TAG_BYTES)
        if len(tag) < _MAT_TAG_BYTES:
            raise ValueError("damaged compressed variable (no element tag)")
        declared = struct.unpack(order + "II", tag)[1]
        if declared > self.inflated:
            raise ValueError(
                f"a compressed variable declares {declared} bytes, more than the {self.inflated} left of the "
                f"{_MAT_MAX_INFLATED} this reader inflates from a label file"
            )
        body = inflater.decompress(inflater.unconsumed_tail, declared)
        if len(body) < declared:
            raise ValueError(f"a compressed variable inflates to {len(body)} of the {declared} bytes it declares")
        # Padding to the next multiple of 8 may follow; anything longer does not belong to the variable.
        if len(inflater.decompress(inflater.unconsumed_tail, _MAT_TAG_BYTES)) == _MAT_TAG_BYTES:
            raise ValueError(f"a compressed variable inflates past the {declared} bytes it declares")
        self.inflated -= declared
        return tag + body

    def spend(self, values: int) -> None:
        if values > self.values:
            raise ValueError(f"more than the {_MAT_MAX_VALUES} cells, records and fields this reader takes from a file")
        self.values -= values


def _read_mat(data: bytes) -> dict[str, object]:
    """A MAT-file v5's variables, shaped as ``loadmat(squeeze_me=True)`` shapes vectors: numeric arrays flat in
    column-major order, char rows as str, cells as lists, struct arrays as lists of dicts."""
    if data.startswith(b"MATLAB 7.3"):
        raise ValueError("a MAT-file v7.3 (HDF5), not v5")
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if len(data) < 128 or order is None:
        raise ValueError("not a MAT-file v5 (no endian mark at byte 126)")
    budget = _MatBudget()
    variables = {}
    for data_type, payload in _mat_elements(data[128:], order):
        if data_type == _MI_COMPRESSED:
            try:
                data_type, payload = next(_mat_elements(budget.inflate(payload, order), order))
            except zlib.error as err:
                raise ValueError(f"damaged compressed variable ({err})") from err
        if data_type != _MI_MATRIX:
            raise ValueError(f"a top-level element of type {data_type}, not a variable")
        name, value = _mat_array(payload, order, budget)
        variables[name] = value
    return variables


def _mat_elements(buffer: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    """(data type, payload) of each data element in ``buffer``."""
    position = 0
    while position < len(buffer):
        if len(buffer) - position < _MAT_TAG_BYTES:
            raise ValueError("truncated data element")
        first, second = struct.unpack_from(order + "II", buffer, position)
        if first >> 16:  # a small element: type and size share the first word, the data fills the second
            if first >> 16 > 4:
                raise ValueError(f"a small data element of {first >> 16} bytes, where 4 fit")
            yield first & 0xFFFF, buffer[position + 4 : position + 4 + (first >> 16)]
            position += _MAT_TAG_BYTES
            continue
        start = position + _MAT_TAG_BYTES
        if start + second > len(buffer):
            raise ValueError(f"truncated data element ({second} bytes declared, {len(buffer) - start} left)")
        yield first, buffer[start : start + second]
        # Elements are padded to 8 bytes, except compressed ones.
        position = start + (second if first == _MI_COMPRESSED else -(-second // 8) * 8)


def _next_element(elements: Iterator[tuple[int, bytes]]) -> tuple[int, bytes]:
    element = next(elements, None)
    if element is None:
        raise ValueError("truncated array")
    return element


def _mat_array(payload: bytes, order: str, budget: _MatBudget, depth: int = 0) -> tuple[str, object]:
    """The name and value of one array (an miMATRIX element's payload), ``depth`` cells or structs down."""
    if not payload:  # an empty array, as cells hold for []
        return "", np.zeros(0)
    if depth > _MAT_MAX_DEPTH:  # deeper, the recursion would exhaust the stack
        raise ValueError(f"cells or structs nested deeper than {_MAT_MAX_DEPTH} levels")
    elements = _mat_elements(payload, order)
    flags = struct.unpack_from(order + "I", _next_element(elements)[1])[0]
    dims_payload = _next_element(elements)[1]
    if len(dims_payload) // 4 > _MAT_MAX_DIMS:
        raise ValueError(f"an array of {len(dims_payload) // 4} dimensions, more than {_MAT_MAX_DIMS}")
    dims = struct.unpack(f"{order}{len(dims_payload) // 4}i", dims_payload)
    name = _next_element(elements)[1].decode("latin1")
    if any(size < 0 for size in dims):
        raise ValueError(f"array '{name}' of dimensions {dims}, which cannot be negative")
    array_class, count = flags & 0xFF, math.prod(dims)
    if array_class in _MX_NUMERIC and not flags & _MAT_COMPLEX_FLAG:
        return name, _mat_numbers(*_next_element(elements), order, count)
    if array_class == _MX_CHAR:
        if count == 0:
            return name, ""
        if dims[0] != 1:
            raise ValueError(f"char array '{name}' of {dims[0]} rows; only single strings are read")
        return name, _mat_text(*_next_element(elements), order)
    if array_class == _MX_CELL:
        _check_count(name, dims, count, payload)
        budget.spend(count)
        return name, [_mat_array(_matrix_payload(elements), order, budget, depth + 1)[1] for _ in range(count)]
    if array_class == _MX_STRUCT:
        name_length = _mat_whole_number(_mat_numbers(*_next_element(elements), order, 1))
        field_bytes = _next_element(elements)[1]
        if name_length is None or name_length <= 0:
            raise ValueError(f"struct '{name}' with field names of {name_length} bytes")
        fields = [
            field_bytes[start : start + name_length].split(b"\0", 1)[0].decode("latin1")
            for start in range(0, len(field_bytes), name_length)
        ]
        _check_count(name, dims, count * max(1, len(fields)), payload)
        budget.spend(count * (1 + len(fields)))
        # Element by element (column-major), each element's fields in order.
        return name, [
            {field: _mat_array(_matrix_payload(elements), order, budget, depth + 1)[1] for field in fields}
            for _ in range(count)
        ]
    raise ValueError(f"array '{name}' of class {array_class}, which these label files do not use")


def _check_count(name: str, dims: tuple[int, ...], count: int, payload: bytes) -> None:
    """Each of an array's ``count`` elements takes a tag at least: dimensions that claim more are refused before any
    is read."""
    if count * _MAT_TAG_BYTES > len(payload):
        raise ValueError(f"array '{name}' of dimensions {dims} claims more elements than its {len(payload)} bytes hold")


def _matrix_payload(elements: Iterator[tuple[int, bytes]]) -> bytes:
    data_type, payload = _next_element(elements)
    if data_type != _MI_MATRIX:
        raise ValueError(f"an element of type {data_type} where an array belongs")
    return payload


def _mat_numbers(data_type: int, payload: bytes, order: str, count: int | None = None) -> np.ndarray:
    if data_type not in _MAT_NUMBER_TYPES:
        raise ValueError(f"numbers of unknown type {data_type}")
    values = np.frombuffer(payload, dtype=np.dtype(order + _MAT_NUMBER_TYPES[data_type]))
    if count is not None and values.size != count:
        raise ValueError(f"{values.size} numbers for an array of {count}")
    return values


def _mat_text(data_type: int, payload: bytes, order: str) -> str:
    if data_type == _MI_UTF8:
        return payload.decode("utf-8")
    if data_type in (_MI_UTF16, _MI_UTF32):
        width = 16 if data_type == _MI_UTF16 else 32
        return payload.decode(f"utf-{width}-{'le' if order == '<' else 'be'}")
    # MATLAB stores most text as one UTF-16 code unit per character, as uint16 (or uint8, or any number type).
    codes = _mat_numbers(data_type, payload, order)
    not_codes = ~_whole(codes) | (codes < 0) | (codes > 0xFFFF)
    if not_codes.any():
        raise ValueError(f"char array holding {codes[not_codes][0]}, which is no character code")
    return codes.astype("<u2").tobytes().decode("utf-16-le")


def _whole(values: np.ndarray) -> np.ndarray:
    """Elementwise: finite, with no fractional part."""
    return np.isfinite(values) & (values == np.round(values))


def _mat_whole_number(value: object) -> int | None:
    """The whole number a one-element numeric array holds, as annotation fields and struct headers do; else None."""
    if isinstance(value, np.ndarray) and value.size == 1 and _whole(value).all():
        return int(value.reshape(-1)[0])
    return None


def _mat_shown(value: object) -> str:
    """A value as an error names it: a one-element array by its number."""
    return str(value.reshape(-1)[0]) if isinstance(value, np.ndarray) and value.size == 1 else repr(value)
