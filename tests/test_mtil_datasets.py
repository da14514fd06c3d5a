"""MTIL's eleven datasets, fabricated small in their real layouts, read as ZSCL's MTIL code reads them."""

import json
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cftool.data.mtil.readers import mtil_source
from cftool.data.mtil.tables import MTIL_ORDER
from cftool.errors import CftoolError

JPEG_TOLERANCE = 2  # a solid 8×8 JPEG at quality 100 decodes within 1 of its colour; labels' colours differ by > 20


def colour_of(label: int) -> tuple[int, int, int]:
    return ((label * 53) % 256, (label * 101 + 40) % 256, (label * 29 + 90) % 256)


def write_jpeg(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour_of(label)).save(path, "JPEG", quality=100, subsampling=0)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def zscl_split(n: int) -> tuple[list[int], list[int]]:
    """ZSCL's split_dataset restated: torch.utils.data.random_split([0.8 n, rest]) with seed 42 is this permutation."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(42)).tolist()
    n_train = int(0.8 * n)
    return permutation[:n_train], permutation[n_train:]


# MAT-file v5 writer (the subset the Flowers and Stanford Cars files use), little-endian.
MI_INT8, MI_UINT8, MI_UINT16, MI_INT32, MI_UINT32, MI_DOUBLE, MI_MATRIX, MI_COMPRESSED = 1, 2, 4, 5, 6, 9, 14, 15
MX_CELL, MX_STRUCT, MX_CHAR, MX_DOUBLE, MX_UINT16 = 1, 2, 4, 6, 11


def mat_element(data_type: int, payload: bytes) -> bytes:
    return struct.pack("<II", data_type, len(payload)) + payload + bytes(-len(payload) % 8)


def mat_small_element(data_type: int, payload: bytes) -> bytes:
    return struct.pack("<HH", data_type, len(payload)) + payload.ljust(4, b"\0")


def mat_array(array_class: int, dims: tuple[int, ...], body: bytes, name: str = "") -> bytes:
    header = (
        mat_element(MI_UINT32, struct.pack("<II", array_class, 0))
        + mat_element(MI_INT32, struct.pack(f"<{len(dims)}i", *dims))
        + mat_element(MI_INT8, name.encode())
    )
    return mat_element(MI_MATRIX, header + body)


def mat_doubles(values: list[float], name: str = "") -> bytes:
    return mat_array(
        MX_DOUBLE, (1, len(values)), mat_element(MI_DOUBLE, struct.pack(f"<{len(values)}d", *values)), name
    )


def mat_doubles_stored_as_bytes(values: list[int], name: str = "") -> bytes:
    """A double array that MATLAB stores compactly as uint8, as it does for small whole numbers."""
    return mat_array(MX_DOUBLE, (len(values), 1), mat_element(MI_UINT8, bytes(values)), name)


def mat_uint16s(values: list[int], name: str = "") -> bytes:
    return mat_array(
        MX_UINT16, (1, len(values)), mat_element(MI_UINT16, struct.pack(f"<{len(values)}H", *values)), name
    )


def mat_text(text: str, name: str = "") -> bytes:
    return mat_array(
        MX_CHAR, (1, len(text)), mat_element(MI_UINT16, struct.pack(f"<{len(text)}H", *map(ord, text))), name
    )


def mat_cell(items: list[bytes], name: str = "") -> bytes:
    return mat_array(MX_CELL, (1, len(items)), b"".join(items), name)


def mat_struct(records: list[dict[str, bytes]], name: str = "") -> bytes:
    fields, width = list(records[0]), 32
    body = (
        mat_small_element(MI_INT32, struct.pack("<i", width))
        + mat_element(MI_INT8, b"".join(field.encode().ljust(width, b"\0") for field in fields))
        + b"".join(record[field] for record in records for field in fields)
    )
    return mat_array(MX_STRUCT, (1, len(records)), body, name)


def write_mat(path: Path, *variables: bytes, compress: bool = False) -> None:
    header = (
        b"MATLAB 5.0 MAT-file, written by the cftool tests".ljust(116) + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    )
    elements = (
        [struct.pack("<II", MI_COMPRESSED, len(z)) + z for z in map(zlib.compress, variables)]
        if compress
        else variables
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"".join(elements))


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, 0x08 for unsigned bytes, number of dimensions), big-endian sizes, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@dataclass
class Expected:
    classnames: list[str]  # the full list, or ZSCL's first and last for its fixed lists
    n_classes: int
    n_templates: int
    first_template: str
    train_labels: list[int]
    test_labels: list[int]
    exact_pixels: bool = False  # pixels stored raw rather than as JPEG


def make_aircraft(root: Path) -> Expected:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Falcon 2000"]
    write_text(data / "variants.txt", "".join(f"{variant}\n" for variant in variants))
    splits = {"train": [2, 0, 1, 2], "val": [1], "test": [1, 0]}
    for split, labels in splits.items():
        ids = [f"{split}{i:04d}" for i in range(len(labels))]
        write_text(
            data / f"images_variant_{split}.txt",
            "".join(f"{i} {variants[label]}\n" for i, label in zip(ids, labels, strict=True)),
        )
        for image_id, label in zip(ids, labels, strict=True):
            write_jpeg(data / "images" / f"{image_id}.jpg", label)
    return Expected(variants, 3, 2, "a photo of a {}, a type of aircraft.", splits["train"], splits["test"])


def make_caltech101(root: Path) -> Expected:
    categories = root / "caltech101" / "101_ObjectCategories"
    write_jpeg(categories / "BACKGROUND_Google" / "image_0001.jpg", 0)
    images_per_class = [3] + [1] * 100
    whole = []
    for label, count in enumerate(images_per_class):
        for number in range(1, count + 1):
            write_jpeg(categories / f"class_{label:03d}" / f"image_{number:04d}.jpg", label)
            whole.append(label)
    train, test = zscl_split(len(whole))
    return Expected(
        ["off-center face", "yin and yang symbol"],
        101,
        34,
        "a photo of a {}.",
        [whole[i] for i in train],
        [whole[i] for i in test],
    )


def make_cifar100(root: Path) -> Expected:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = ["apple", "aquarium_fish", "baby"]
    with open(folder / "meta", "wb") as file:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["fruit", "fish"]}, file, protocol=2)
    splits = {"train": [2, 0, 1, 2], "test": [1, 0]}
    for split, labels in splits.items():
        # Each row: the red plane, then green, then blue, 32×32 each.
        rows = np.stack([np.repeat(np.array(colour_of(label), np.uint8), 32 * 32) for label in labels])
        batch = {"data": rows, "fine_labels": labels, "coarse_labels": [0] * len(labels), "batch_label": split}
        with open(folder / split, "wb") as file:
            pickle.dump(batch, file, protocol=2)
    return Expected(
        ["apple", "aquarium fish", "baby"], 3, 18, "a photo of a {}.", splits["train"], splits["test"], True
    )


def make_dtd(root: Path) -> Expected:
    data = root / "dtd" / "dtd"
    train = [
        "zigzagged/zigzagged_0001.jpg",
        "banded/banded_0001.jpg",
        "blotchy/blotchy_0002.jpg",
        "banded/banded_0003.jpg",
    ]
    test = ["blotchy/blotchy_0005.jpg", "banded/banded_0004.jpg", "zigzagged/zigzagged_0007.jpg"]
    classes = ["banded", "blotchy", "zigzagged"]
    for split, rows in (("train", train), ("val", train), ("test", test)):
        write_text(data / "labels" / f"{split}1.txt", "".join(f"{row}\n" for row in rows))
        for row in rows:
            write_jpeg(data / "images" / row, classes.index(row.split("/")[0]))
    return Expected(classes, 3, 8, "a photo of a {} texture.", [2, 0, 1, 0], [1, 0, 2])


EUROSAT_FOLDERS = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def make_eurosat(root: Path) -> Expected:
    whole = []
    for label, folder in enumerate(EUROSAT_FOLDERS):
        for number in (1, 2):
            write_jpeg(root / "eurosat" / "2750" / folder / f"{folder}_{number}.jpg", label)
            whole.append(label)
    train, test = zscl_split(len(whole))
    return Expected(
        ["annual crop land", "lake or sea"],
        10,
        3,
        "a centered satellite photo of {}.",
        [whole[i] for i in train],
        [whole[i] for i in test],
    )


def make_flowers(root: Path) -> Expected:
    base = root / "flowers-102"
    labels = [1, 102, 50, 1, 102, 2]  # of image_00001.jpg … image_00006.jpg, counted from 1
    for image_id, label in enumerate(labels, 1):
        write_jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", label - 1)
    write_mat(base / "imagelabels.mat", mat_doubles_stored_as_bytes(labels, "labels"))
    write_mat(
        base / "setid.mat",
        mat_uint16s([2, 1, 5], "trnid"),
        mat_uint16s([3], "valid"),
        mat_uint16s([6, 4], "tstid"),
    )
    return Expected(
        ["pink primrose", "blackberry lily"], 102, 1, "a photo of a {}, a type of flower.", [101, 0, 101], [1, 0]
    )


def make_food(root: Path) -> Expected:
    base = root / "food-101"
    # torchvision lists images in the JSON's class order but labels them by the sorted class list.
    train = {
        "waffles": ["waffles/100", "waffles/101"],
        "apple_pie": ["apple_pie/200"],
        "beef_tartare": ["beef_tartare/300"],
    }
    test = {"apple_pie": ["apple_pie/201"], "beef_tartare": ["beef_tartare/301"], "waffles": ["waffles/102"]}
    classes = ["apple_pie", "beef_tartare", "waffles"]
    for split, metadata in (("train", train), ("test", test)):
        write_text(base / "meta" / f"{split}.json", json.dumps(metadata))
        for name, images in metadata.items():
            for image in images:
                write_jpeg(base / "images" / f"{image}.jpg", classes.index(name))
    return Expected(
        ["apple pie", "beef tartare", "waffles"], 3, 1, "a photo of a {}, a type of food.", [2, 2, 0, 1], [0, 1, 2]
    )


def mnist_images(labels: list[int]) -> np.ndarray:
    return np.stack([np.full((28, 28), 20 * label + 5, np.uint8) for label in labels])


def make_mnist(root: Path) -> Expected:
    raw = root / "MNIST" / "raw"
    splits = {"train": [7, 0, 9], "t10k": [3, 1]}
    for prefix, labels in splits.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", mnist_images(labels))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.array(labels))
    return Expected(["0 - zero", "9 - nine"], 10, 1, 'a photo of the number: "{}".', splits["train"], splits["t10k"])


def make_oxford_pet(root: Path) -> Expected:
    base = root / "oxford-iiit-pet"
    breeds = {"Abyssinian": (1, 1), "american_bulldog": (2, 2), "yorkshire_terrier": (3, 2)}  # class id, species
    splits = {
        "trainval": ["Abyssinian_100", "american_bulldog_10", "yorkshire_terrier_5", "Abyssinian_101"],
        "test": ["yorkshire_terrier_6", "american_bulldog_11"],
    }
    for split, images in splits.items():
        lines = []
        for image in images:
            class_id, species = breeds[image.rsplit("_", 1)[0]]
            lines.append(f"{image} {class_id} {species} {class_id}\n")
            write_jpeg(base / "images" / f"{image}.jpg", class_id - 1)
        write_text(base / "annotations" / f"{split}.txt", "".join(lines))
    (base / "annotations" / "trimaps").mkdir()
    return Expected(
        ["Abyssinian", "American Bulldog", "Yorkshire Terrier"],
        3,
        1,
        "a photo of a {}, a type of pet.",
        [0, 1, 2, 0],
        [2, 1],
    )


def car_annotation(fname: str, class_id: int) -> dict[str, bytes]:
    box = {
        field: mat_doubles([value])
        for field, value in zip(("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"), (1, 2, 7, 8), strict=True)
    }
    return {**box, "class": mat_doubles_stored_as_bytes([class_id]), "fname": mat_text(fname)}


def make_stanford_cars(root: Path) -> Expected:
    base = root / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "smart fortwo Convertible 2012"]
    write_mat(base / "devkit" / "cars_meta.mat", mat_cell([mat_text(name) for name in names], "class_names"))
    splits = {"train": [3, 1, 2, 1], "test": [2, 3]}  # class ids from 1
    for split, class_ids in splits.items():
        fnames = [f"{i:05d}.jpg" for i in range(1, len(class_ids) + 1)]
        for fname, class_id in zip(fnames, class_ids, strict=True):
            write_jpeg(base / f"cars_{split}" / fname, class_id - 1)
        annotations = mat_struct([car_annotation(f, c) for f, c in zip(fnames, class_ids, strict=True)], "annotations")
        if split == "train":
            write_mat(base / "devkit" / "cars_train_annos.mat", annotations)
        else:
            write_mat(base / "cars_test_annos_withlabels.mat", annotations, compress=True)
    return Expected(names, 3, 9, "a photo of a {}, a type of car.", [2, 0, 1, 0], [1, 2])


def make_sun397(root: Path) -> Expected:
    base = root / "SUN397"
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    write_text(base / "ClassName.txt", "".join(f"{name}\n" for name in classes))
    for label, (name, count) in enumerate(zip(classes, (3, 3, 4), strict=True)):
        for number in range(count):
            write_jpeg(base / name.lstrip("/") / f"sun_{label}{number:03d}.jpg", label)
    # ZSCL's order is the file system's, as Path.rglob walks it.
    whole = [classes.index("/" + str(path.parent.relative_to(base))) for path in base.rglob("sun_*.jpg")]
    train, test = zscl_split(len(whole))
    return Expected(
        ["abbey", "apartment building/outdoor", "bakery/shop"],
        3,
        2,
        "a photo of a {}.",
        [whole[i] for i in train],
        [whole[i] for i in test],
    )


MAKERS = {
    "Aircraft": make_aircraft,
    "Caltech101": make_caltech101,
    "CIFAR100": make_cifar100,
    "DTD": make_dtd,
    "EuroSAT": make_eurosat,
    "Flowers": make_flowers,
    "Food": make_food,
    "MNIST": make_mnist,
    "OxfordPet": make_oxford_pet,
    "StanfordCars": make_stanford_cars,
    "SUN397": make_sun397,
}


def pixel_of(image: Image.Image) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel((3, 3))


def test_order_is_the_protocols():
    assert MTIL_ORDER == tuple(MAKERS)


@pytest.mark.parametrize("name", list(MAKERS))
def test_reads_classes_templates_splits_and_pixels_as_zscl(tmp_path, name):
    expected = MAKERS[name](tmp_path)
    source = mtil_source(name, tmp_path)
    assert source.name == name
    assert len(source.classnames) == expected.n_classes
    if len(expected.classnames) == expected.n_classes:
        assert source.classnames == expected.classnames
    else:
        assert [source.classnames[0], source.classnames[-1]] == expected.classnames
    assert len(source.templates) == expected.n_templates and source.templates[0] == expected.first_template
    assert all(template.count("{}") == 1 for template in source.templates)
    assert source.labels("train") == expected.train_labels
    assert source.labels("test") == expected.test_labels
    for split in ("train", "test"):
        for index, label in enumerate(source.labels(split)):
            pixel = pixel_of(source.image(split, index))
            if name == "MNIST":
                assert pixel == (20 * label + 5,) * 3
            elif expected.exact_pixels:
                assert pixel == colour_of(label)
            else:
                assert max(abs(a - b) for a, b in zip(pixel, colour_of(label), strict=True)) <= JPEG_TOLERANCE


def test_names_ignore_case_and_accept_aliases(tmp_path):
    make_stanford_cars(tmp_path)
    make_oxford_pet(tmp_path)
    make_food(tmp_path)
    make_flowers(tmp_path)
    for alias, name in [
        ("cars", "StanfordCars"),
        ("stanford_cars", "StanfordCars"),
        ("Pets", "OxfordPet"),
        ("oxford-iiit-pet", "OxfordPet"),
        ("Food101", "Food"),
        ("food", "Food"),
        ("Flowers102", "Flowers"),
        ("FLOWERS", "Flowers"),
    ]:
        assert mtil_source(alias, tmp_path).name == name


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(CftoolError) as caught:
        mtil_source("ImageNet", tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("mtil:ImageNet: unknown MTIL dataset")
    assert all(name in message for name in MTIL_ORDER)


def test_missing_dataset_names_the_path_and_layout(tmp_path):
    with pytest.raises(CftoolError) as caught:
        mtil_source("DTD", tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"expected {tmp_path / 'dtd'}" in message and "dtd/dtd/labels/{train1,test1}.txt" in message
    assert f"under the data root {tmp_path}; set it with --data-root ROOT or CFTOOL_DATA_ROOT=ROOT" in message


def test_missing_split_file_is_named(tmp_path):
    make_food(tmp_path)
    (tmp_path / "food-101" / "meta" / "test.json").unlink()
    source = mtil_source("Food", tmp_path)
    assert len(source.labels("train")) == 4
    with pytest.raises(CftoolError, match=r"mtil:Food: expected .*food-101/meta/test\.json \(layout food-101/meta/"):
        source.labels("test")


def test_only_train_and_test_splits(tmp_path):
    make_mnist(tmp_path)
    with pytest.raises(ValueError, match="train and test splits.*not 'val'"):
        mtil_source("MNIST", tmp_path).labels("val")


def test_truncated_mnist_file_is_named(tmp_path):
    make_mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(CftoolError) as caught:
        mtil_source("MNIST", tmp_path).labels("train")
    message = str(caught.value)
    assert "\n" not in message and f"cannot read {images}" in message and "truncated" in message
    assert "MNIST/raw/" in message


def test_mnist_labels_must_match_images(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.array([3, 1, 4]))
    with pytest.raises(CftoolError, match="3 labels for the 2 images of t10k-images-idx3-ubyte"):
        mtil_source("MNIST", tmp_path).labels("test")


def test_truncated_cifar_pickle_is_named(tmp_path):
    make_cifar100(tmp_path)
    batch = tmp_path / "cifar-100-python" / "train"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(CftoolError) as caught:
        mtil_source("CIFAR100", tmp_path).labels("train")
    message = str(caught.value)
    assert "\n" not in message and f"cannot read {batch} (not a complete pickle" in message


def test_malformed_dtd_split_file_is_named(tmp_path):
    make_dtd(tmp_path)
    split_file = tmp_path / "dtd" / "dtd" / "labels" / "train1.txt"
    split_file.write_text("banded_0001.jpg\n")
    with pytest.raises(CftoolError, match=f"cannot read {split_file} .*dtd/dtd/labels/"):
        len(mtil_source("DTD", tmp_path).classnames)


def test_dtd_test_split_without_every_class_is_refused(tmp_path):
    # ZSCL would label the test images by the test file's own sorted classes and silently shift them.
    make_dtd(tmp_path)
    write_text(tmp_path / "dtd" / "dtd" / "labels" / "test1.txt", "blotchy/blotchy_0005.jpg\n")
    with pytest.raises(CftoolError, match="its 1 classes differ from the train split's 3"):
        mtil_source("DTD", tmp_path).labels("test")


def test_damaged_mat_file_is_named(tmp_path):
    make_flowers(tmp_path)
    setid = tmp_path / "flowers-102" / "setid.mat"
    setid.write_bytes(setid.read_bytes()[:150])
    with pytest.raises(CftoolError) as caught:
        mtil_source("Flowers", tmp_path).labels("train")
    message = str(caught.value)
    assert "\n" not in message and f"cannot read {setid} (truncated" in message and "flowers-102/" in message


def test_flowers_label_beyond_zscls_classes_is_refused(tmp_path):
    make_flowers(tmp_path)
    write_mat(tmp_path / "flowers-102" / "imagelabels.mat", mat_doubles([1, 103, 50, 1, 102, 2], "labels"))
    with pytest.raises(CftoolError, match="imagelabels.mat .*label 102 is outside ZSCL's 102 classes"):
        mtil_source("Flowers", tmp_path).labels("train")


def test_caltech101_needs_zscls_101_class_folders(tmp_path):
    make_caltech101(tmp_path)
    categories = tmp_path / "caltech101" / "101_ObjectCategories"
    (categories / "class_100" / "image_0001.jpg").unlink()
    (categories / "class_100").rmdir()
    with pytest.raises(CftoolError, match="100 class folders besides BACKGROUND_Google, ZSCL names 101"):
        mtil_source("Caltech101", tmp_path).labels("train")


def test_unreadable_image_is_named_and_labels_need_no_images(tmp_path):
    make_oxford_pet(tmp_path)
    image = tmp_path / "oxford-iiit-pet" / "images" / "american_bulldog_11.jpg"
    image.write_bytes(b"not a jpeg")
    source = mtil_source("Pets", tmp_path)
    assert source.labels("test") == [2, 1]
    with pytest.raises(CftoolError) as caught:
        source.image("test", 1)
    message = str(caught.value)
    assert "\n" not in message and f"mtil:OxfordPet: cannot read {image} (" in message


def test_fingerprint_follows_the_images(tmp_path):
    make_food(tmp_path)
    source = mtil_source("Food", tmp_path)
    before = source.fingerprint("train", [0, 1])
    assert source.fingerprint("train", [0, 2]) != before
    image = tmp_path / "food-101" / "images" / "waffles" / "101.jpg"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert source.fingerprint("train", [0, 1]) != before


def test_fingerprint_of_one_file_datasets_follows_file_and_indices(tmp_path):
    make_mnist(tmp_path)
    source = mtil_source("MNIST", tmp_path)
    before = source.fingerprint("train", [0, 1])
    assert source.fingerprint("train", [0, 2]) != before
    assert source.fingerprint("test", [0, 1]) != before
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    write_idx(images, mnist_images([7, 0, 8]))
    stat = images.stat()
    os.utime(images, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert mtil_source("MNIST", tmp_path).fingerprint("train", [0, 1]) != before


def test_the_mtil_benchmark_runs_as_typed_on_the_eleven_datasets(tmp_path, monkeypatch, capsys):
    """`--benchmark mtil` needs only the data root (here from CFTOOL_DATA_ROOT) and a model: its default is ViT-B/16,
    whose weights are not cached here, so the run names both ways to provide them; with a model it evaluates the
    eleven datasets in MTIL's order."""
    from cftool.cli import main

    for make in MAKERS.values():
        make(tmp_path)
    monkeypatch.setenv("CFTOOL_DATA_ROOT", str(tmp_path))
    monkeypatch.setattr("cftool.zoo.models.cached_tag_weights", lambda cfg: None)  # whatever this machine caches
    assert main(["eval", "--benchmark", "mtil"]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "ViT-B-16:openai" in error and "--zs ARCH:/path/to/weights.pt" in error
    assert main(["eval", "--benchmark", "mtil", "--zs", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["task"] for row in report["models"][0]["results"]] == list(MTIL_ORDER)
