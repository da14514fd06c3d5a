"""Damaged or hostile dataset files (issue 20, round 2): each reader refuses them with one line naming the file,
before running code from them, blocking on them or allocating more than they hold."""

import io
import json
import os
import pickle
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from cftool.data import load_task
from cftool.data.mtil.readers import mtil_source
from cftool.errors import CftoolError
from tests.test_mtil_datasets import (
    MI_COMPRESSED,
    MI_DOUBLE,
    MI_MATRIX,
    MX_CHAR,
    MX_DOUBLE,
    car_annotation,
    make_aircraft,
    make_flowers,
    make_food,
    make_mnist,
    make_oxford_pet,
    make_stanford_cars,
    mat_array,
    mat_cell,
    mat_doubles,
    mat_element,
    mat_struct,
    mat_text,
    write_mat,
    write_text,
)

MIB = 2**20


def refusal(read) -> str:
    """The one-line message of the CftoolError that ``read()`` raises."""
    with pytest.raises(CftoolError) as caught:
        read()
    message = str(caught.value)
    assert "\n" not in message
    return message


# CIFAR-100's python files: dicts pickled by Python 2's cPickle at protocol 2, read with encoding="latin1".


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str (BINSTRING), as the cPickle that wrote CIFAR-100's files did (Python 3 writes
    them at protocol 2 as calls of _codecs.encode)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def python2_pickle(content: dict) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(content)
    # The numpy that wrote the files named its module numpy.core; numpy 2 names it numpy._core.
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


CIFAR_NAMES = [b"apple", b"aquarium_fish", b"baby"]
CIFAR_LABELS = {"train": [2, 0, 1, 2], "test": [1, 0]}


def cifar_content(file: str) -> dict:
    if file == "meta":
        return {b"fine_label_names": CIFAR_NAMES, b"coarse_label_names": [b"fruit_and_vegetables", b"fish"]}
    labels = CIFAR_LABELS[file]
    return {
        b"filenames": [f"image_{i:06d}.png".encode() for i in range(len(labels))],
        b"batch_label": b"training batch 1 of 1" if file == "train" else b"testing batch 1 of 1",
        b"fine_labels": labels,
        b"coarse_labels": [label % 2 for label in labels],
        b"data": np.stack([np.full(3 * 32 * 32, 40 * label, np.uint8) for label in labels]),
    }


def write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for file in ("meta", "train", "test"):
        (folder / file).write_bytes(python2_pickle(cifar_content(file)))
    return folder


class RunsCommand:
    """Unpickled, it runs a shell command: what a hostile pickle does instead of rebuilding a value."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize(
    "file, command", [("meta", "eval"), ("test", "eval"), ("meta", "finetune"), ("train", "finetune")]
)
def test_a_cifar_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, cli, file, command):
    root = tmp_path / "data"
    folder = write_cifar100(root)
    source = mtil_source("CIFAR100", root)  # the files as Python 2 wrote them pass the allowlist
    assert source.classnames == ["apple", "aquarium fish", "baby"]
    assert source.labels("train") == CIFAR_LABELS["train"]
    assert source.image("test", 0).getpixel((5, 5)) == (40, 40, 40)

    marker = tmp_path / "MARKER"
    hostile = {**cifar_content(file), b"batch_label": RunsCommand(f"touch {marker}")}
    (folder / file).write_bytes(python2_pickle(hostile))
    output = tmp_path / "out.safetensors"
    data = ["--zs", "tiny", "--data", "mtil:CIFAR100", "--data-root", root, "--device", "cpu"]
    training = ["--method", "coop", "--iterations", "1", "--batch-size", "2", "-o", output]
    error = one_line_error(cli(command, *data, *(training if command == "finetune" else [])))
    assert not marker.exists()
    assert f"cannot read {folder / file} (refused: it references {os.system.__module__}.system" in error
    assert not output.exists()


def test_a_cifar_pickle_of_python_objects_in_a_numpy_array_is_refused(tmp_path):
    folder = write_cifar100(tmp_path)
    objects = np.array([[b"x"] * 3072], dtype=object)
    (folder / "train").write_bytes(python2_pickle({**cifar_content("train"), b"data": objects, b"fine_labels": [0]}))
    message = refusal(lambda: mtil_source("CIFAR100", tmp_path).labels("train"))
    assert f"cannot read {folder / 'train'} (refused: it holds a numpy array of Python objects" in message


def test_a_cifar_pickle_declaring_more_bytes_than_memory_holds_is_one_line(tmp_path, cli):
    folder = write_cifar100(tmp_path)
    # Protocol 2, then a protocol-5 bytearray of 2**62 bytes: CPython's unpickler prints to stderr as it fails.
    (folder / "meta").write_bytes(b"\x80\x02\x96" + struct.pack("<Q", 2**62) + b".")
    error = one_line_error(cli("eval", "--zs", "tiny", "--data", "mtil:CIFAR100", "--data-root", tmp_path))
    assert f"cannot read {folder / 'meta'} (not a complete pickle: it declares more bytes than memory holds)" in error


def test_a_cifar_pickle_whose_memo_index_runs_far_ahead_is_refused_before_the_memo_grows(tmp_path):
    folder = write_cifar100(tmp_path)
    # None, stored as memo entry 2**24: CPython's unpickler would grow its memo table to 2**25 entries (256 MB).
    (folder / "meta").write_bytes(b"\x80\x02N" + b"r" + struct.pack("<I", 2**24) + b".")
    tracemalloc.start()
    try:
        message = refusal(lambda: mtil_source("CIFAR100", tmp_path).classnames)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"cannot read {folder / 'meta'} (refused: its opcode 2 stores memo entry 16777216" in message
    assert peak < 16 * MIB


def test_a_cifar_pickle_of_more_opcodes_than_the_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("cftool.data.mtil.cifar_pickle._PICKLE_MAX_OPCODES", 1000)  # the bound, lowered to stay fast
    folder = write_cifar100(tmp_path)
    (folder / "meta").write_bytes(b"\x80\x02(" + b"N" * 1000 + b"l.")  # a list of a thousand Nones
    message = refusal(lambda: mtil_source("CIFAR100", tmp_path).classnames)
    assert f"cannot read {folder / 'meta'} (refused: it holds more than 1000 opcodes" in message


@pytest.mark.parametrize("label", [1.0, 1.7, True, "1", None])
def test_cifar_labels_must_be_integers(tmp_path, label):
    folder = write_cifar100(tmp_path)
    (folder / "test").write_bytes(python2_pickle({**cifar_content("test"), b"fine_labels": [0, label]}))
    message = refusal(lambda: mtil_source("CIFAR100", tmp_path).labels("test"))
    assert f"cannot read {folder / 'test'} (label {label!r} of image 1 is not an integer" in message


# Images and label files that are not regular files: open() on a FIFO waits for a writer that never comes.


def read_without_blocking(read, fifo: Path, seconds: float = 5) -> str:
    """``read()``'s one-line refusal. The read runs in a thread: if it is still blocked after ``seconds`` (opening
    the FIFO waits for a writer), a writer that leaves at once releases it (the reader sees an empty file) and the
    test fails, rather than hanging."""
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            read()
        except BaseException as err:  # handed to the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
        pytest.fail(f"reading blocked on the FIFO {fifo}")
    error = outcome.get("error")
    assert isinstance(error, CftoolError), error
    assert "\n" not in str(error)
    return str(error)


def write_png(path: Path, shade: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (shade, shade, shade)).save(path)


def make_coop_pets(root: Path) -> Path:
    """CoOp's OxfordPets layout with two classes and one image of each per split; returns the split file."""
    dataset = root / "oxford_pets"
    rows = {}
    for split in ("train", "val", "test"):
        rows[split] = []
        for label, name in enumerate(("abyssinian", "beagle")):
            write_png(dataset / "images" / f"{name}_{split}.jpg", 60 * label)
            rows[split].append([f"{name}_{split}.jpg", label, name])
    split_file = dataset / "split_zhou_OxfordPets.json"
    split_file.write_text(json.dumps(rows))
    return split_file


def read_test_images(spec: str, root: Path | None = None) -> None:
    for _ in load_task(spec, data_root=root).split("test"):
        pass


def as_fifo(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("reader", ["folder", "coop", "mtil"])
def test_a_fifo_given_as_an_image_is_refused_without_blocking(tmp_path, reader):
    if reader == "folder":
        write_png(tmp_path / "shapes" / "circle" / "0.png")
        fifo = tmp_path / "shapes" / "square" / "0.png"
        write_png(fifo)
        read = lambda: read_test_images(f"folder:{tmp_path / 'shapes'}")  # noqa: E731
    elif reader == "coop":
        make_coop_pets(tmp_path)
        fifo = tmp_path / "oxford_pets" / "images" / "beagle_test.jpg"
        read = lambda: read_test_images("coop:OxfordPets", tmp_path)  # noqa: E731
    else:
        make_oxford_pet(tmp_path)
        fifo = tmp_path / "oxford-iiit-pet" / "images" / "american_bulldog_11.jpg"
        read = lambda: read_test_images("mtil:OxfordPet", tmp_path)  # noqa: E731
    message = read_without_blocking(read, as_fifo(fifo))
    assert f"{fifo}" in message and "a FIFO, not a regular file" in message


@pytest.mark.parametrize("reader", ["coop", "mtil"])
def test_a_fifo_given_as_a_label_file_is_refused_without_blocking(tmp_path, reader):
    if reader == "coop":
        aircraft = tmp_path / "fgvc_aircraft"
        write_text(aircraft / "variants.txt", "707-320\n")
        fifo = as_fifo(aircraft / "variants.txt")
        read = lambda: load_task("coop:FGVCAircraft", data_root=tmp_path)  # noqa: E731
    else:
        make_aircraft(tmp_path)
        fifo = as_fifo(tmp_path / "fgvc-aircraft-2013b" / "data" / "images_variant_train.txt")
        read = lambda: mtil_source("Aircraft", tmp_path).labels("train")  # noqa: E731
    message = read_without_blocking(read, fifo)
    assert f"{fifo}" in message and "a FIFO, not a regular file" in message


# Decompression bombs: a small file that inflates to far more memory than it holds.


def write_png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width × height grey pixels and holds none: opening it reads only the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns above 89.5 M pixels and refuses above twice that
def test_a_decompression_bomb_image_is_refused_in_one_line(tmp_path, cli, side):
    write_png(tmp_path / "shapes" / "circle" / "0.png")
    bomb = tmp_path / "shapes" / "square" / "0.png"
    write_png_header(bomb, side, side)
    data = ["--data", f"folder:{tmp_path / 'shapes'}", "--workers", "0"]  # a failed worker takes 5 s to shut down
    error = one_line_error(cli("eval", "--zs", "tiny", *data, "--device", "cpu"))
    assert f"folder:{bomb}: cannot read image (Image size ({side * side} pixels) exceeds limit of" in error


def inflating_variable(declared: int, inflated: int) -> bytes:
    """An miCOMPRESSED element whose stream starts with an miMATRIX tag declaring ``declared`` bytes and inflates to
    ``inflated`` bytes in all; compressed in chunks so that the test never holds the inflated bytes."""
    compressor, chunk = zlib.compressobj(), bytes(MIB)
    parts = [compressor.compress(struct.pack("<II", MI_MATRIX, declared))]
    for start in range(8, inflated, MIB):
        parts.append(compressor.compress(chunk[: min(MIB, inflated - start)]))
    stream = b"".join(parts) + compressor.flush()
    return struct.pack("<II", MI_COMPRESSED, len(stream)) + stream


@pytest.mark.parametrize(
    "declared, reason",
    [
        (100 * MIB, "declares 104857600 bytes, more than"),  # told the truth: refused before inflating
        (64, "inflates past the 64 bytes it declares"),  # lied: inflated no further than it declared
    ],
)
def test_a_compressed_mat_variable_is_inflated_no_further_than_bounded(tmp_path, declared, reason):
    make_flowers(tmp_path)
    labels = tmp_path / "flowers-102" / "imagelabels.mat"
    header = labels.read_bytes()[:128]
    labels.write_bytes(header + inflating_variable(declared, 100 * MIB))
    assert labels.stat().st_size < 1 * MIB
    tracemalloc.start()
    try:
        message = refusal(lambda: mtil_source("Flowers", tmp_path).labels("train"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"cannot read {labels} (" in message and reason in message
    assert peak < 16 * MIB


def test_an_mnist_idx_declaring_images_other_than_28_by_28_is_refused(tmp_path):
    make_mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    header = bytes((0, 0, 0x08, 3)) + struct.pack(">3I", 1, 1, 50_000_000)
    with open(images, "wb") as file:
        file.write(header)
        file.truncate(len(header) + 50_000_000)  # sparse: the size the header declares, written in no time
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(bytes((0, 0, 8, 1, 0, 0, 0, 1, 7)))
    message = refusal(lambda: mtil_source("MNIST", tmp_path).labels("train"))
    assert f"cannot read {images} (images of 1×50000000 pixels, not MNIST's 28×28" in message


# Values that used to escape as tracebacks.


@pytest.mark.parametrize("path", ["images/a\0.jpg", "../outside.jpg", "/etc/hostname", "images/../../outside.jpg", ""])
def test_coop_split_rows_must_name_a_file_inside_the_dataset_folder(tmp_path, path):
    split_file = make_coop_pets(tmp_path)
    rows = json.loads(split_file.read_text())
    rows["val"][1][0] = path
    split_file.write_text(json.dumps(rows))
    message = refusal(lambda: load_task("coop:OxfordPets", data_root=tmp_path))
    assert f"{split_file}: row 1 of 'val' names {path!r}" in message
    assert "image paths must be relative and stay inside the dataset folder" in message


def test_coop_aircraft_image_ids_must_stay_inside_the_dataset_folder(tmp_path):
    aircraft = tmp_path / "fgvc_aircraft"
    write_text(aircraft / "variants.txt", "707-320\n")
    for split in ("train", "val", "test"):
        write_text(aircraft / f"images_variant_{split}.txt", "1000 707-320\n")
    write_text(aircraft / "images_variant_test.txt", "1000 707-320\n../../outside 707-320\n")
    message = refusal(lambda: load_task("coop:FGVCAircraft", data_root=tmp_path))
    assert f"{aircraft / 'images_variant_test.txt'}:2: image id '../../outside'" in message
    assert "must stay inside the dataset folder" in message


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400"])  # Python's json reads them all
def test_coop_split_labels_must_be_finite(tmp_path, number):
    split_file = make_coop_pets(tmp_path)
    split_file.write_text(split_file.read_text().replace('"beagle_train.jpg", 1,', f'"beagle_train.jpg", {number},'))
    message = refusal(lambda: load_task("coop:OxfordPets", data_root=tmp_path))
    assert f"{split_file}: not a CoOp split file ({number} is not a finite number)" in message


@pytest.mark.parametrize("label", ["1.0", "1.7", "true", "false", '"1"'])  # int() would take each for 1 or 0
def test_coop_split_labels_must_be_integers(tmp_path, label):
    split_file = make_coop_pets(tmp_path)
    split_file.write_text(split_file.read_text().replace('"beagle_train.jpg", 1,', f'"beagle_train.jpg", {label},'))
    message = refusal(lambda: load_task("coop:OxfordPets", data_root=tmp_path))
    assert f"{split_file}: row 1 of 'train' has the label {label}; labels are integers" in message


def test_coop_text_files_may_start_with_a_byte_order_mark(tmp_path):
    imagenet = tmp_path / "imagenet"
    (imagenet / "classnames.txt").parent.mkdir(parents=True)
    (imagenet / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n", encoding="utf-8-sig")
    for wnid in ("n01440764", "n01443537"):
        for split in ("train", "val"):
            write_png(imagenet / "images" / split / wnid / f"{wnid}_0.JPEG")
    assert load_task("coop:ImageNet", data_root=tmp_path).classnames == ["tench", "goldfish"]


def rewrite_mtil_list(root: Path, dataset: str, entry: str) -> Path:
    """Names ``entry`` in the training list of ``dataset`` (made by its maker); returns that list."""
    if dataset == "Food":
        make_food(root)
        path = root / "food-101" / "meta" / "train.json"
        lists = {"apple_pie": [entry], "beef_tartare": ["beef_tartare/300"], "waffles": ["waffles/100"]}
        path.write_text(json.dumps(lists))
    elif dataset == "Aircraft":
        make_aircraft(root)
        path = root / "fgvc-aircraft-2013b" / "data" / "images_variant_train.txt"
        path.write_text(f"{entry} 707-320\n0001 A300B4\n0002 Falcon 2000\n")
    elif dataset == "OxfordPet":
        make_oxford_pet(root)
        path = root / "oxford-iiit-pet" / "annotations" / "trainval.txt"
        path.write_text(f"{entry} 1 1 1\namerican_bulldog_10 2 2 2\nyorkshire_terrier_5 3 2 3\n")
    else:
        make_stanford_cars(root)
        path = root / "stanford_cars" / "devkit" / "cars_train_annos.mat"
        write_mat(path, mat_struct([car_annotation(entry, 1), car_annotation("00002.jpg", 2)], "annotations"))
    return path


@pytest.mark.parametrize(
    "dataset, entry",
    [
        ("Food", "../../../outside"),  # torchvision splits Food's entries at "/": an absolute one stays inside
        ("Aircraft", "../../../outside"),
        ("Aircraft", "/etc/outside"),
        ("Aircraft", "00\x001"),  # a NUL byte, which no path can hold
        ("OxfordPet", "../outside"),
        ("OxfordPet", "/etc/outside"),
        ("StanfordCars", "../outside.jpg"),
        ("StanfordCars", "/etc/outside.jpg"),
    ],
)
def test_mtil_file_lists_must_stay_inside_the_dataset_folder(tmp_path, dataset, entry):
    label_file = rewrite_mtil_list(tmp_path, dataset, entry)
    message = refusal(lambda: mtil_source(dataset, tmp_path).labels("train"))
    assert f"cannot read {label_file} (" in message and repr(entry)[1:-1] in message
    assert "image paths must be relative and stay inside the dataset folder" in message


def write_setid(root: Path, train_ids: bytes) -> Path:
    setid = root / "flowers-102" / "setid.mat"
    write_mat(setid, train_ids, mat_doubles([3], "valid"), mat_doubles([6, 4], "tstid"))
    return setid


def mat_ids_of_dims(dims: tuple[int, ...]) -> bytes:
    return mat_array(MX_DOUBLE, dims, mat_element(MI_DOUBLE, struct.pack("<3d", 2, 1, 5)), "trnid")


@pytest.mark.parametrize(
    "train_ids, reason",
    [
        (mat_doubles([2, float("inf")], "trnid"), "no numeric array 'trnid' of whole numbers"),
        (mat_ids_of_dims((-3, -1)), "dimensions (-3, -1), which cannot be negative"),
        (mat_ids_of_dims((1,) * 99 + (3,)), "an array of 100 dimensions"),
    ],
    ids=["inf", "negative dimensions", "100 dimensions"],
)
def test_flowers_mat_numbers_and_dimensions_must_make_sense(tmp_path, train_ids, reason):
    make_flowers(tmp_path)
    setid = write_setid(tmp_path, train_ids)
    message = refusal(lambda: mtil_source("Flowers", tmp_path).labels("train"))
    assert f"cannot read {setid} (" in message and reason in message


def mat_text_as_doubles(codes: list[float]) -> bytes:
    return mat_array(MX_CHAR, (1, len(codes)), mat_element(MI_DOUBLE, struct.pack(f"<{len(codes)}d", *codes)))


def nested_cells(depth: int) -> bytes:
    inner = mat_text("Acura RL Sedan 2012")
    for _ in range(depth):
        inner = mat_cell([inner])
    return inner


CLASS_NAMES_THAT_ARE_NOT_TEXT = {
    "cells nested 3000 deep": (lambda: nested_cells(3000), "nested deeper than"),
    "char codes of 65.5": (lambda: mat_text_as_doubles([65.5, 66]), "char array holding 65.5"),
    "char codes of -1": (lambda: mat_text_as_doubles([65, -1]), "char array holding -1.0"),
}


@pytest.mark.parametrize("case", list(CLASS_NAMES_THAT_ARE_NOT_TEXT))
def test_stanford_cars_class_names_that_are_not_text_are_refused(tmp_path, case):
    make_name, reason = CLASS_NAMES_THAT_ARE_NOT_TEXT[case]
    make_stanford_cars(tmp_path)
    meta = tmp_path / "stanford_cars" / "devkit" / "cars_meta.mat"
    write_mat(meta, mat_cell([mat_text("AM General Hummer SUV 2000"), make_name(), mat_text("smart")], "class_names"))
    message = refusal(lambda: mtil_source("StanfordCars", tmp_path).classnames)
    assert f"cannot read {meta} (" in message and reason in message


def test_mat_text_stored_as_whole_doubles_is_read(tmp_path):
    make_stanford_cars(tmp_path)
    meta = tmp_path / "stanford_cars" / "devkit" / "cars_meta.mat"
    names = [mat_text("Hummer"), mat_text_as_doubles(list(map(ord, "Acura"))), mat_text("smart")]
    write_mat(meta, mat_cell(names, "class_names"))
    assert mtil_source("StanfordCars", tmp_path).classnames == ["Hummer", "Acura", "smart"]


@pytest.mark.parametrize(
    "annotations, reason",
    [
        (mat_doubles([1, 2, 3], "annotations"), "no struct array 'annotations' of fname and class"),
        (mat_cell([mat_doubles([1]), mat_doubles([2])], "annotations"), "no struct array 'annotations'"),
        (
            mat_struct([{**car_annotation("00001.jpg", 1), "class": mat_doubles([float("inf")])}], "annotations"),
            "class inf of record 0 is not a whole number",
        ),
        (
            mat_struct([{**car_annotation("00001.jpg", 1), "class": mat_text("3")}], "annotations"),
            "class '3' of record 0 is not a whole number",
        ),
        (
            mat_struct([{**car_annotation("00001.jpg", 1), "fname": mat_doubles([1])}], "annotations"),
            "fname of record 0 is not a file name",
        ),
    ],
    ids=["numbers", "cell of numbers", "class inf", "class text", "fname a number"],
)
def test_stanford_cars_annotations_of_the_wrong_type_are_refused(tmp_path, annotations, reason):
    make_stanford_cars(tmp_path)
    path = tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    write_mat(path, annotations)
    message = refusal(lambda: mtil_source("StanfordCars", tmp_path).labels("train"))
    assert f"cannot read {path} (" in message and reason in message
