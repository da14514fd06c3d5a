"""The ImageFolder and CoOp readers on small folders in the exact real layouts, and the generic protocol."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cftool.data import DatasetSpec, load_task
from cftool.errors import CftoolError


def write_png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def colour_of(label: int) -> tuple[int, int, int]:
    return (40 * label, 255 - 40 * label, 7)


@pytest.fixture
def image_folder(tmp_path):
    """folder:PATH with train/test split folders, 4 classes, 5 train and 2 test images each."""
    root = tmp_path / "shapes"
    for label, name in enumerate(["blue_square", "circle", "red_star", "triangle"]):
        for i in range(5):
            write_png(root / "train" / name / f"{i}.png", colour_of(label))
        for i in range(2):
            write_png(root / "test" / name / f"{i}.png", colour_of(label))
    return root


def test_image_folder_splits_classes_and_pixels(image_folder):
    task = load_task(f"folder:{image_folder}")
    assert task.classnames == ["blue square", "circle", "red star", "triangle"]
    assert task.templates == ["a photo of a {}."]
    train, test = task.split("train"), task.split("test")
    assert len(train) == 20 and len(test) == 8
    for image, label in test:
        assert image.getpixel((0, 0)) == colour_of(label)


def test_image_folder_without_split_folders_serves_every_split(tmp_path):
    for label, name in enumerate(["a", "b"]):
        write_png(tmp_path / "flat" / name / "x.png", colour_of(label))
    task = load_task(f"folder:{tmp_path / 'flat'}")
    assert len(task.split("train")) == len(task.split("test")) == 2


def test_base_novel_halves_relabel_and_few_shot_is_seeded(image_folder):
    base = load_task(DatasetSpec(f"folder:{image_folder}", classes="base", shots=3, seed=1))
    novel = load_task(DatasetSpec(f"folder:{image_folder}", classes="novel"))
    assert base.classnames == ["blue square", "circle"]
    assert novel.classnames == ["red star", "triangle"]
    train = base.split("train")
    assert sorted(train.labels) == [0, 0, 0, 1, 1, 1]
    assert [image.getpixel((0, 0)) for image, _ in novel.split("test")][0] == colour_of(2)
    again = load_task(DatasetSpec(f"folder:{image_folder}", classes="base", shots=3, seed=1)).split("train")
    other = load_task(DatasetSpec(f"folder:{image_folder}", classes="base", shots=3, seed=2)).split("train")
    assert train.items == again.items
    assert train.items != other.items
    assert len(base.split("test")) == 4  # few-shot sampling applies to training only


def test_odd_class_count_puts_the_middle_class_in_base(tmp_path):
    for label, name in enumerate("abcde"):
        write_png(tmp_path / "five" / name / "x.png", colour_of(label))
    assert load_task(DatasetSpec(f"folder:{tmp_path / 'five'}", classes="base")).classnames == ["a", "b", "c"]


def test_dataset_spec_round_trips_through_json():
    spec = DatasetSpec("coop:OxfordPets", classes="base", shots=16, seed=3)
    assert DatasetSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ("folder:/nonexistent/cftool", "no such directory"),
        ("nonsense", "expected toy:TASK"),
        ("tape:x", "unknown dataset kind 'tape'"),
        ("coop:ImageNet21k", "unknown CoOp dataset"),
        ("toy:no-such-task", "unknown toy task"),
    ],
)
def test_bad_dataset_specs_are_one_line_errors(spec, message, tmp_path):
    with pytest.raises(CftoolError, match=message) as info:
        load_task(spec, data_root=tmp_path)
    assert "\n" not in str(info.value)


def test_bad_spec_options_are_refused():
    with pytest.raises(CftoolError, match="--classes"):
        DatasetSpec("toy:x", classes="half")
    with pytest.raises(CftoolError, match="--shots"):
        DatasetSpec("toy:x", shots=0)


@pytest.fixture
def coop_root(tmp_path):
    """CoOp's OxfordPets layout: oxford_pets/images/*.jpg and oxford_pets/split_zhou_OxfordPets.json."""
    root = tmp_path / "data"
    names = ["abyssinian", "beagle", "boxer"]
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        for split_name, count in (("train", 4), ("val", 1), ("test", 2)):
            for i in range(count):
                filename = f"{name.capitalize()}_{split_name}{i}.jpg"
                write_png(root / "oxford_pets" / "images" / filename, colour_of(label))
                split[split_name].append([filename, label, name])
    (root / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return root


def test_coop_reader_follows_the_split_file(coop_root):
    task = load_task("coop:OxfordPets", data_root=coop_root)
    assert task.classnames == ["abyssinian", "beagle", "boxer"]
    assert task.templates == ["a photo of a {}, a type of pet."]
    assert [len(task.split(s)) for s in ("train", "val", "test")] == [12, 3, 6]
    for image, label in task.split("test"):
        assert image.convert("RGB").getpixel((4, 4))[0] == pytest.approx(colour_of(label)[0], abs=8)  # JPEG


def test_coop_names_are_case_insensitive_and_the_data_root_defaults_to_the_environment_then_data(
    coop_root, tmp_path, monkeypatch
):
    assert load_task("coop:oxfordpets", data_root=coop_root).name == "OxfordPets"
    monkeypatch.setenv("CFTOOL_DATA_ROOT", str(coop_root))
    assert load_task("coop:OxfordPets").name == "OxfordPets"
    monkeypatch.delenv("CFTOOL_DATA_ROOT")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(CftoolError, match="under the data root data; set it with --data-root ROOT or CFTOOL_DATA_RO"):
        load_task("coop:OxfordPets")
    (tmp_path / "elsewhere" / "data").symlink_to(coop_root)
    assert load_task("coop:OxfordPets").name == "OxfordPets"


def test_coop_reader_names_the_missing_split_file(tmp_path):
    (tmp_path / "dtd").mkdir()
    with pytest.raises(CftoolError, match="split_zhou_DescribableTextures.json"):
        load_task("coop:DescribableTextures", data_root=tmp_path)


def test_coop_reader_refuses_a_damaged_split_file(coop_root):
    (coop_root / "oxford_pets" / "split_zhou_OxfordPets.json").write_text('{"train": [["a.jpg", 5, "x"]]}')
    with pytest.raises(CftoolError, match="labels are not 0..0"):
        load_task("coop:OxfordPets", data_root=coop_root)
    (coop_root / "oxford_pets" / "split_zhou_OxfordPets.json").write_text("not json")
    with pytest.raises(CftoolError, match="not a CoOp split file"):
        load_task("coop:OxfordPets", data_root=coop_root)


@pytest.mark.parametrize("reader", ["folder", "coop", "toy"])
def test_a_split_fingerprint_names_its_images_and_labels(reader, image_folder, coop_root):
    spec, data_root = {
        "folder": (f"folder:{image_folder}", None),
        "coop": ("coop:OxfordPets", coop_root),
        "toy": ("toy:food", None),
    }[reader]
    task = load_task(spec, data_root=data_root)
    fingerprint = task.split("train").fingerprint()
    assert load_task(spec, data_root=data_root).split("train").fingerprint() == fingerprint
    assert task.split("test").fingerprint() != fingerprint
    shots = load_task(DatasetSpec(spec, shots=1), data_root=data_root).split("train")
    assert shots.fingerprint() != fingerprint
    assert load_task(DatasetSpec(spec, shots=1, seed=1), data_root=data_root).split("train").fingerprint() != (
        shots.fingerprint()
    )


def test_editing_an_image_changes_the_fingerprint_and_a_missing_one_is_named(image_folder, tmp_path):
    task = load_task(f"folder:{image_folder}")
    before = task.split("test").fingerprint()
    write_png(image_folder / "test" / "circle" / "1.png", (1, 2, 3))
    os.utime(image_folder / "test" / "circle" / "1.png", ns=(1, 1))
    assert task.split("test").fingerprint() != before

    (image_folder / "test" / "circle" / "1.png").unlink()
    with pytest.raises(CftoolError, match=r"cannot read image .*circle/1\.png"):
        task.split("test").fingerprint()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_or_missing_image_is_one_line_naming_it_whatever_the_workers(image_folder, coop_root, workers, cli):
    from conftest import one_line_error

    corrupt = image_folder / "test" / "circle" / "0.png"
    corrupt.write_bytes(b"not an image")
    error = one_line_error(cli("eval", "--zs", "tiny", "--data", f"folder:{image_folder}", "--workers", workers))
    assert str(corrupt) in error and "cannot read image" in error and "Traceback" not in error

    missing = next((coop_root / "oxford_pets" / "images").glob("*.jpg"))
    missing.unlink()
    error = one_line_error(
        cli("eval", "--zs", "tiny", "--data", "coop:OxfordPets", "--data-root", coop_root, "--workers", workers)
    )
    assert missing.name in error and "Traceback" not in error


def test_training_on_a_reference_protocols_data_augments_as_its_reference_does(coop_root, cli, tmp_path, caplog):
    from cftool.data.augment import default_augmentation
    from cftool.io.checkpoint import open_checkpoint

    assert [default_augmentation(s) for s in ("coop:Pets", "mtil:DTD", "toy:food", "folder:x")] == [
        "coop",
        "zscl",
        "none",
        "none",
    ]
    output = tmp_path / "pets.safetensors"
    result = cli(
        "finetune",
        "--zs",
        "tiny",
        "--data",
        "coop:OxfordPets",
        "--data-root",
        coop_root,
        "--method",
        "coop",
        "--iterations",
        "2",
        "--batch-size",
        "4",
        "-o",
        output,
    )
    assert result.code == 0, result.stderr
    assert "--augment coop: image features are recomputed" in caplog.text
    with open_checkpoint(output) as ckpt:
        assert ckpt.header.config["augment"] == "coop"


def test_bad_data_is_one_line_not_a_nan_a_silent_drop_or_a_crash(tmp_path, coop_root):
    empty_test = tmp_path / "empty-test"
    write_png(empty_test / "train" / "a" / "0.png", colour_of(0))
    write_png(empty_test / "train" / "b" / "0.png", colour_of(1))
    (empty_test / "test").mkdir()
    with pytest.raises(CftoolError, match="the test split has no images"):
        load_task(f"folder:{empty_test}").split("test")

    extra_class = tmp_path / "extra-class"
    write_png(extra_class / "train" / "a" / "0.png", colour_of(0))
    write_png(extra_class / "test" / "a" / "0.png", colour_of(0))
    write_png(extra_class / "test" / "zebra" / "0.png", colour_of(1))
    with pytest.raises(CftoolError, match=r"class folder\(s\) zebra are not in"):
        load_task(f"folder:{extra_class}").split("test")

    one_class = tmp_path / "one-class"
    write_png(one_class / "a" / "0.png", colour_of(0))
    with pytest.raises(CftoolError, match="its novel half is empty"):
        load_task(DatasetSpec(f"folder:{one_class}", classes="novel"))

    split_file = coop_root / "oxford_pets" / "split_zhou_OxfordPets.json"
    split_file.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CftoolError, match="nested too deeply") as error:
        load_task("coop:OxfordPets", data_root=coop_root)
    assert "\n" not in str(error.value)
