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
import re
import struct
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from cftool.data.mtil.cifar_pickle import CifarUnpickler, PickledArray, RefusedPickle, check_opcodes
from cftool.data.mtil.matlab import is_whole, mat_shown, mat_whole_number, parse_mat
from cftool.data.mtil.tables import (
    AIRCRAFT_TEMPLATES,
    CALTECH101_CLASSNAMES,
    CALTECH101_TEMPLATES,
    CIFAR_TEMPLATES,
    DTD_TEMPLATES,
    EUROSAT_CLASSNAMES,
    EUROSAT_TEMPLATES,
    FLOWERS_CLASSNAMES,
    FLOWERS_TEMPLATES,
    FOOD_TEMPLATES,
    MNIST_TEMPLATES,
    MTIL_ALIASES,
    MTIL_ORDER,
    MTIL_SPLITS,
    OXFORD_PET_TEMPLATES,
    STANFORD_CARS_TEMPLATES,
    SUN397_TEMPLATES,
)
from cftool.data.specs import (
    DATA_ROOT_HINT,
    ImageSource,
    check_regular_file,
    files_fingerprint,
    load_image,
    stays_inside,
)
from cftool.errors import CftoolError

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
            return parse_mat(path.read_bytes())
        except (OSError, ValueError, struct.error) as err:
            raise self.unreadable(path, err) from err

    def mat_integers(self, path: Path, variable: str) -> list[int]:
        values = self.read_mat(path).get(variable)
        if not isinstance(values, np.ndarray) or values.size == 0 or not np.all(is_whole(values)):
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


class _Cifar100(_MtilSource):
    name = "CIFAR100"
    folder = "cifar-100-python"
    layout = "cifar-100-python/ with the pickled batches train, test and meta"
    templates = CIFAR_TEMPLATES

    def _unpickle(self, path: Path) -> dict:
        self.require(path)
        try:
            with open(path, "rb") as file:
                check_opcodes(file)
                file.seek(0)
                # The batches were pickled by Python 2; latin1 keeps their byte strings intact, as torchvision does.
                content = CifarUnpickler(file, encoding="latin1").load()
        except RefusedPickle as err:
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
        return {key: value.array if isinstance(value, PickledArray) else value for key, value in content.items()}

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
            fname, class_id = record["fname"], mat_whole_number(record["class"])
            if not isinstance(fname, str):
                raise self.unreadable(annotations_path, f"fname of record {number} is not a file name")
            if class_id is None:
                shown = mat_shown(record["class"])
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
