"""CoOp's eleven base-to-novel datasets and ImageNet's four shifted test sets, fabricated in their real layouts
(folder and file names, split-file rows as CoOp's split files write them), read as CoOp reads them.

Expected class names, labels and prompts are written by hand from CoOp's `datasets/*.py` and
`trainers/{coop,zsclip}.py`: the reader's class names are what CoOp's PromptLearner puts into the prompt.
"""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cftool.data import DatasetSpec, load_task
from cftool.data.coop import COOP_BASE2NEW_ORDER, COOP_IMAGENET_VARIANTS, coop_source
from cftool.errors import CftoolError

SPLIT_SIZES = {"train": 2, "val": 1, "test": 1}  # images per class


def colour_of(label: int) -> tuple[int, int, int]:
    return (60 * label, 255 - 60 * label, 30)


def write_image(path: Path, label: int) -> None:
    """A tiny solid image whose colour says its class; the format follows the extension (.jpg, .JPEG, .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour_of(label)).save(path)


def write_split_file(dataset_dir: Path, name: str, image_subdir: str, classes: list[tuple[str, str]]) -> None:
    """``split_zhou_<name>.json`` for ``classes`` = [(image path pattern with {split} and {i}, class name as the
    split file writes it)], label = position, and the images it names."""
    split = {}
    for split_name, count in SPLIT_SIZES.items():
        split[split_name] = []
        for label, (pattern, classname) in enumerate(classes):
            for i in range(count):
                relative = pattern.format(split=split_name, i=i)
                write_image(dataset_dir / image_subdir / relative, label)
                split[split_name].append([relative, label, classname])
    (dataset_dir / f"split_zhou_{name}.json").write_text(json.dumps(split))


IMAGENET_NAMES = {
    "n01440764": "tench",
    "n01443537": "goldfish",
    "n01484850": "great white shark",
    "n01491361": "tiger shark",
    "n01494475": "hammerhead shark",
}


def write_imagenet_classnames(path: Path) -> None:
    """CoOp's classnames.txt (CLIP's names), deliberately out of wnid order: the label comes from the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in reversed(IMAGENET_NAMES.items())))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coop-data")
    # Rows as CoOp's split files hold them: the generating code in each datasets/<name>.py decides the name.
    write_split_file(
        root / "oxford_pets",
        "OxfordPets",
        "images",
        [  # lower-cased breed from the file name
            ("Abyssinian_{split}{i}.jpg", "abyssinian"),
            ("american_bulldog_{split}{i}.jpg", "american_bulldog"),
            ("american_pit_bull_terrier_{split}{i}.jpg", "american_pit_bull_terrier"),
            ("basset_hound_{split}{i}.jpg", "basset_hound"),
        ],
    )
    write_split_file(
        root / "oxford_flowers",
        "OxfordFlowers",
        "jpg",
        [  # cat_to_name.json
            ("image_0{split}{i}1.jpg", "pink primrose"),
            ("image_0{split}{i}2.jpg", "hard-leaved pocket orchid"),
            ("image_0{split}{i}3.jpg", "canterbury bells"),
        ],
    )
    write_split_file(
        root / "caltech-101",
        "Caltech101",
        "101_ObjectCategories",
        [  # folder names, four renamed
            ("Faces/image_{split}{i}.jpg", "face"),
            ("Leopards/image_{split}{i}.jpg", "leopard"),
            ("airplanes/image_{split}{i}.jpg", "airplane"),
            ("yin_yang/image_{split}{i}.jpg", "yin_yang"),
        ],
    )
    write_split_file(
        root / "dtd",
        "DescribableTextures",
        "images",
        [
            ("banded/banded_{split}{i}.jpg", "banded"),
            ("blotchy/blotchy_{split}{i}.jpg", "blotchy"),
            ("braided/braided_{split}{i}.jpg", "braided"),
        ],
    )
    write_split_file(
        root / "eurosat",
        "EuroSAT",
        "2750",
        [  # folder names replaced by eurosat.py's NEW_CNAMES
            ("AnnualCrop/AnnualCrop_{split}{i}.jpg", "Annual Crop Land"),
            ("Forest/Forest_{split}{i}.jpg", "Forest"),
            ("HerbaceousVegetation/HerbaceousVegetation_{split}{i}.jpg", "Herbaceous Vegetation Land"),
            ("Highway/Highway_{split}{i}.jpg", "Highway or Road"),
        ],
    )
    write_split_file(
        root / "food-101",
        "Food101",
        "images",
        [  # folder names
            ("apple_pie/{split}{i}.jpg", "apple_pie"),
            ("baby_back_ribs/{split}{i}.jpg", "baby_back_ribs"),
            ("baklava/{split}{i}.jpg", "baklava"),
        ],
    )
    write_split_file(
        root / "sun397",
        "SUN397",
        "SUN397",
        [  # path after the letter, reversed, joined by spaces
            ("a/abbey/sun_{split}{i}.jpg", "abbey"),
            ("a/airplane_cabin/sun_{split}{i}.jpg", "airplane_cabin"),
            ("a/apartment_building/outdoor/sun_{split}{i}.jpg", "outdoor apartment_building"),
        ],
    )
    write_split_file(
        root / "stanford_cars",
        "StanfordCars",
        "",
        [  # cars_meta.mat name with the year first
            ("cars_{split}/0{i}001.jpg", "2000 AM General Hummer SUV"),
            ("cars_{split}/0{i}002.jpg", "2012 Acura RL Sedan"),
            ("cars_{split}/0{i}003.jpg", "2008 Acura TL Type-S"),
        ],
    )
    write_split_file(
        root / "ucf101",
        "UCF101",
        "UCF-101-midframes",
        [  # CamelCase action split at capitals by `_`
            ("Apply_Eye_Makeup/v_ApplyEyeMakeup_{split}{i}.jpg", "Apply_Eye_Makeup"),
            ("Archery/v_Archery_{split}{i}.jpg", "Archery"),
            ("Baby_Crawling/v_BabyCrawling_{split}{i}.jpg", "Baby_Crawling"),
        ],
    )

    imagenet = root / "imagenet"
    write_imagenet_classnames(imagenet / "classnames.txt")
    for label, wnid in enumerate(["n01440764", "n01443537", "n01484850", "n01491361"]):
        for split, count in (("train", 2), ("val", 1)):
            for i in range(count):
                write_image(imagenet / "images" / split / wnid / f"{wnid}_{split}{i}.JPEG", label)

    aircraft = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172", "F-16A/B"]
    aircraft.mkdir()
    (aircraft / "variants.txt").write_text("".join(f"{variant}\n" for variant in variants))
    for split, count in SPLIT_SIZES.items():
        lines = []
        for label, variant in enumerate(variants):
            for i in range(count):
                image_id = f"{label}{i}{len(split)}0001"
                write_image(aircraft / "images" / f"{image_id}.jpg", label)
                lines.append(f"{image_id} {variant}\n")
        (aircraft / f"images_variant_{split}.txt").write_text("".join(lines))

    v2 = root / "imagenetv2"
    v2.mkdir()
    (v2 / "classnames.txt").write_text("".join(f"{wnid} {name}\n" for wnid, name in IMAGENET_NAMES.items()))
    for label in range(len(IMAGENET_NAMES)):
        write_image(v2 / "imagenetv2-matched-frequency-format-val" / str(label) / "a.jpeg", label)
    for folder, image_subdir in (
        ("imagenet-sketch", "images"),
        ("imagenet-adversarial", "imagenet-a"),
        ("imagenet-rendition", "imagenet-r"),
    ):
        write_imagenet_classnames(root / folder / "classnames.txt")
        # A and R hold a 200-class subset of ImageNet's folders, beside a README.txt CoOp skips.
        for label, wnid in enumerate(["n01443537", "n01491361"]):
            write_image(root / folder / image_subdir / wnid / "0.png", label)
        (root / folder / image_subdir / "README.txt").write_text("about the data")
    return root


EXPECTED = {  # class names as CoOp's prompt sees them, and one prompt as the text tower reads it
    "ImageNet": (["tench", "goldfish", "great white shark", "tiger shark"], 2, "a photo of a great white shark."),
    "Caltech101": (["face", "leopard", "airplane", "yin yang"], 3, "a photo of a yin yang."),
    "OxfordPets": (
        ["abyssinian", "american bulldog", "american pit bull terrier", "basset hound"],
        2,
        "a photo of a american pit bull terrier, a type of pet.",
    ),
    "StanfordCars": (
        ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2008 Acura TL Type-S"],
        2,
        "a photo of a 2008 Acura TL Type-S.",
    ),
    "OxfordFlowers": (
        ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
        1,
        "a photo of a hard-leaved pocket orchid, a type of flower.",
    ),
    "Food101": (["apple pie", "baby back ribs", "baklava"], 1, "a photo of baby back ribs, a type of food."),
    "FGVCAircraft": (["707-320", "A300B4", "Cessna 172", "F-16A/B"], 3, "a photo of a F-16A/B, a type of aircraft."),
    "SUN397": (
        ["abbey", "airplane cabin", "outdoor apartment building"],
        2,
        "a photo of a outdoor apartment building.",
    ),
    "DescribableTextures": (["banded", "blotchy", "braided"], 0, "banded texture."),
    "EuroSAT": (
        ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road"],
        0,
        "a centered satellite photo of Annual Crop Land.",
    ),
    "UCF101": (["Apply Eye Makeup", "Archery", "Baby Crawling"], 0, "a photo of a person doing Apply Eye Makeup."),
}


def test_the_base_to_novel_order_is_cocoops_table():
    assert COOP_BASE2NEW_ORDER == (
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
    assert set(EXPECTED) == set(COOP_BASE2NEW_ORDER)


def close_to(pixel, colour) -> bool:
    return all(abs(a - b) <= 8 for a, b in zip(pixel, colour, strict=True))  # JPEG rounds a solid colour slightly


@pytest.mark.parametrize("name", COOP_BASE2NEW_ORDER)
def test_each_dataset_reads_as_coop_reads_it(name, data_root):
    classnames, prompted, prompt = EXPECTED[name]
    task = load_task(f"coop:{name}", data_root=data_root)
    assert task.name == name
    assert task.classnames == classnames
    assert task.templates[0].format(task.classnames[prompted]) == prompt
    for split, count in SPLIT_SIZES.items():
        assert task.split(split).labels == [label for label in range(len(classnames)) for _ in range(count)], split
        # The colour drawn for a class comes back under its label: paths, labels and order agree.
        for image, label in task.split(split):
            assert close_to(image.getpixel((0, 0)), colour_of(label)), (split, label)


def test_imagenet_test_split_is_its_val_folder_and_halves_follow_wnid_order(data_root):
    source = coop_source("ImageNet", data_root)
    assert source.labels("test") == source.labels("val") == [0, 1, 2, 3]
    assert source.fingerprint("test", range(4)) == source.fingerprint("val", range(4))
    assert source.fingerprint("test", range(4)) != source.fingerprint("train", range(4))
    base = load_task(DatasetSpec("coop:ImageNet", classes="base"), data_root=data_root)
    novel = load_task(DatasetSpec("coop:ImageNet", classes="novel"), data_root=data_root)
    assert base.classnames == ["tench", "goldfish"]
    assert novel.classnames == ["great white shark", "tiger shark"]
    assert len(novel.split("test")) == 2


@pytest.mark.parametrize(
    "name, classnames",
    [
        ("ImageNetV2", ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"]),
        ("ImageNetSketch", ["goldfish", "tiger shark"]),
        ("ImageNetA", ["goldfish", "tiger shark"]),
        ("ImageNetR", ["goldfish", "tiger shark"]),
    ],
)
def test_imagenet_variants_are_test_only_with_imagenets_names(name, classnames, data_root):
    assert name in COOP_IMAGENET_VARIANTS
    task = load_task(f"coop:{name}", data_root=data_root)
    assert task.classnames == classnames
    assert task.templates == ["a photo of a {}."]
    test = task.split("test")
    assert test.labels == list(range(len(classnames)))
    assert all(close_to(image.getpixel((0, 0)), colour_of(label)) for image, label in test)
    with pytest.raises(CftoolError, match="no 'train' split"):
        task.split("train")


@pytest.mark.parametrize(
    "typed, canonical",
    [
        ("Flowers102", "OxfordFlowers"),
        ("flowers", "OxfordFlowers"),
        ("oxford_flowers", "OxfordFlowers"),
        ("DTD", "DescribableTextures"),
        ("Aircraft", "FGVCAircraft"),
        ("fgvc_aircraft", "FGVCAircraft"),
        ("FGVCAircraft", "FGVCAircraft"),
        ("Pets", "OxfordPets"),
        ("CARS", "StanfordCars"),
        ("Food", "Food101"),
        ("UCF", "UCF101"),
        ("imagenet", "ImageNet"),
        ("eurosat", "EuroSAT"),
        ("imagenet-a", "ImageNetA"),
        ("ImageNet_Sketch", "ImageNetSketch"),
    ],
)
def test_names_users_type_resolve_to_coops(typed, canonical, data_root):
    assert coop_source(typed, data_root).name == canonical


def test_an_unknown_name_lists_the_known_ones(data_root):
    with pytest.raises(CftoolError, match="unknown CoOp dataset; known: ImageNet, Caltech101") as info:
        coop_source("Places365", data_root)
    assert "\n" not in str(info.value) and "FGVCAircraft" in str(info.value) and "flowers102" in str(info.value)


def copy_dataset(data_root: Path, tmp_path: Path, folder: str) -> Path:
    """A private copy of one fabricated dataset, to damage."""
    shutil.copytree(data_root / folder, tmp_path / folder)
    return tmp_path


def assert_refused(name: str, root: Path, match: str, split: str | None = None) -> None:
    """Reading ``coop:name`` (and, with ``split``, its images) fails with a one-line error matching ``match``."""
    with pytest.raises(CftoolError, match=match) as info:
        task = load_task(f"coop:{name}", data_root=root)
        if split is not None:
            list(task.split(split))
    assert "\n" not in str(info.value)


def test_missing_files_are_named_with_the_expected_layout(data_root, tmp_path):
    empty = tmp_path / "empty"
    for name, folder in (("ImageNet", "imagenet"), ("Aircraft", "fgvc_aircraft"), ("SUN397", "sun397")):
        assert_refused(name, empty, rf"expected CoOp's {folder}/ folder at .*--data-root ROOT or CFTOOL_DATA_ROOT")
    for folder in ("imagenet", "fgvc_aircraft", "imagenet-rendition", "sun397"):
        (empty / folder).mkdir(parents=True)
    assert_refused("ImageNet", empty, r"expected CoOp's classnames.txt.* at .*imagenet/classnames\.txt")
    assert_refused("Aircraft", empty, r"expected FGVC-Aircraft's variants.txt.*fgvc_aircraft/variants\.txt")
    assert_refused("ImageNetR", empty, r"imagenet-rendition/classnames\.txt")
    assert_refused("SUN397", empty, r"split_zhou_SUN397\.json .*sun397/SUN397/")

    root = copy_dataset(data_root, tmp_path, "fgvc_aircraft")
    (root / "fgvc_aircraft" / "images_variant_test.txt").unlink()
    assert_refused("FGVCAircraft", root, r"expected FGVC-Aircraft's images_variant_test\.txt, lines '<image id>")


def test_imagenet_needs_both_image_folders_with_the_same_classes(data_root, tmp_path):
    root = copy_dataset(data_root, tmp_path, "imagenet")
    (root / "imagenet" / "images" / "val" / "n01491361" / "n01491361_val0.JPEG").unlink()
    (root / "imagenet" / "images" / "val" / "n01491361").rmdir()
    assert_refused("ImageNet", root, r"hold different class folders \(3 and 4\)")
    (root / "imagenet" / "images" / "val").rename(root / "imagenet" / "images" / "validation")
    assert_refused("ImageNet", root, r"expected ImageNet's val images, one <wnid> folder per class at .*images/val")


def test_malformed_lines_are_named_by_file_and_line(data_root, tmp_path):
    root = copy_dataset(data_root, tmp_path, "imagenet")
    names = root / "imagenet" / "classnames.txt"
    names.write_text(names.read_text() + "n09999999\n")
    assert_refused("ImageNet", root, r"classnames\.txt:6: malformed line 'n09999999'; expected '<wnid> <class name>'")
    names.write_text("n01440764 tench\n")
    assert_refused("ImageNet", root, r"classnames\.txt has no line for the class folder\(s\) n01443537")

    root = copy_dataset(data_root, tmp_path, "fgvc_aircraft")
    train = root / "fgvc_aircraft" / "images_variant_train.txt"
    train.write_text("0001 Boeing 999\n")
    assert_refused("FGVCAircraft", root, r"images_variant_train\.txt:1: variant 'Boeing 999' is not in .*variants\.txt")
    train.write_text("0001\n")
    assert_refused("FGVCAircraft", root, r"images_variant_train\.txt:1: malformed line '0001'")


def test_a_damaged_split_file_row_is_named(data_root, tmp_path):
    root = copy_dataset(data_root, tmp_path, "ucf101")
    split_path = root / "ucf101" / "split_zhou_UCF101.json"
    split = json.loads(split_path.read_text())
    split["test"][1] = ["Archery/x.jpg", "one"]
    split_path.write_text(json.dumps(split))
    assert_refused("UCF101", root, r"split_zhou_UCF101\.json: row 1 of 'test' is \['Archery/x\.jpg', 'one'\]")
    split["test"][1] = ["Archery/x.jpg", 7, "Archery"]
    split_path.write_text(json.dumps(split))
    assert_refused("UCF101", root, r"'test' has labels \[7\] that no training row names")
    split["train"][0][2] = "ApplyEyeMakeup"
    split_path.write_text(json.dumps(split))
    assert_refused("UCF101", root, r"label 0 is named both 'ApplyEyeMakeup' and 'Apply_Eye_Makeup'")


def test_an_unreadable_image_is_named(data_root, tmp_path):
    root = copy_dataset(data_root, tmp_path, "dtd")
    (root / "dtd" / "images" / "blotchy" / "blotchy_test0.jpg").write_bytes(b"not a jpeg")
    assert_refused("DTD", root, r"coop:DescribableTextures: cannot read image .*blotchy_test0\.jpg", split="test")


def test_the_base2new_benchmark_runs_all_eleven_in_coops_order(data_root, cli):
    import json

    result = cli("eval", "--benchmark", "base2new", "--zs", "tiny", "--data-root", data_root, "--json")
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)["models"][0]["results"]
    assert [row["task"] for row in rows] == list(COOP_BASE2NEW_ORDER)
    assert all({"base", "novel", "hm"} <= row.keys() for row in rows)
