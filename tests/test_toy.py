"""The toy world and its tasks: determinism, shapes of the label spaces, held-out factors."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from cftool.data import BENCHMARKS, class_subset
from cftool.data.toy import HELDOUT_TASK, IMAGE_SIZE, TOY_TASKS, heldout_examples, pretraining_example
from cftool.data.toytasks import COLOUR_SHAPES
from cftool.data.toyworld import HELDOUT_COMBOS, HELDOUT_WRAPPERS, SHAPES, pretraining_sample

MTIL_ORDER = (
    "aircraft",
    "caltech101",
    "cifar100",
    "dtd",
    "eurosat",
    "flowers",
    "food",
    "mnist",
    "oxfordpet",
    "cars",
    "sun397",
)


def pixels_digest(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_eleven_tasks_in_mtil_order():
    assert tuple(TOY_TASKS) == MTIL_ORDER
    assert all(task.name == name for name, task in TOY_TASKS.items())


def test_label_spaces_have_the_required_sizes():
    sizes = [len(task.classnames) for task in TOY_TASKS.values()]
    assert max(sizes) >= 30
    assert sum(size >= 10 for size in sizes) >= 3
    assert len(set(sizes)) >= 5, "label spaces should differ in size"


@pytest.mark.parametrize("name", MTIL_ORDER)
def test_task_is_well_formed(name):
    task = TOY_TASKS[name]
    assert len(set(task.classnames)) == len(task.classnames)
    assert task.templates and all("{}" in template for template in task.templates)
    assert task.n_train >= 2000 and task.n_test >= 500
    for split in ("train", "test"):
        image, label = task.example(split, 7)
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
        assert label == task.label(split, 7)
    labels = [task.label("train", i) for i in range(task.n_train)]
    counts = np.bincount(labels, minlength=len(task.classnames))
    assert counts.min() >= 16 and counts.max() - counts.min() <= 1, "every class needs enough, balanced examples"


@pytest.mark.parametrize("name", MTIL_ORDER)
def test_examples_are_pure_functions_of_task_split_index(name):
    task = TOY_TASKS[name]
    first = pixels_digest(task.example("test", 3)[0])
    random.seed(1)
    np.random.seed(1)
    task.example("test", 4)
    assert pixels_digest(task.example("test", 3)[0]) == first


def test_pretraining_stream_is_deterministic():
    image, text = pretraining_example(11, seed=0)
    again_image, again_text = pretraining_example(11, seed=0)
    assert pixels_digest(image) == pixels_digest(again_image) and text == again_text
    assert pixels_digest(pretraining_example(11, seed=1)[0]) != pixels_digest(image)


@pytest.mark.parametrize("name", MTIL_ORDER)
def test_train_and_test_images_are_disjoint(name):
    task = TOY_TASKS[name]
    train = {pixels_digest(task.example("train", i)[0]) for i in range(100)}
    test = {pixels_digest(task.example("test", i)[0]) for i in range(100)}
    val = {pixels_digest(task.example("val", i)[0]) for i in range(100)}
    assert not train & test and not val & (train | test)


def test_bad_split_or_index_is_refused():
    task = TOY_TASKS["mnist"]
    with pytest.raises(ValueError):
        task.example("dev", 0)
    with pytest.raises(IndexError):
        task.label("test", task.n_test)
    with pytest.raises(IndexError):
        task.example("train", -1)
    with pytest.raises(IndexError):
        pretraining_example(-1, seed=0)


def test_heldout_combos_and_phrasings_never_occur_in_pretraining():
    for index in range(3000):
        scene, text = pretraining_sample(index, seed=0)
        assert not any((item.colour, item.kind) in HELDOUT_COMBOS for item in scene.items), (index, text)
        assert not any(text.startswith(wrapper.split("{}")[0]) for wrapper in HELDOUT_WRAPPERS), text


def test_heldout_probe_covers_only_heldout_combos():
    probe = heldout_examples()
    assert probe is HELDOUT_TASK and probe.classnames == TOY_TASKS["aircraft"].classnames
    seen = {COLOUR_SHAPES[probe.label("test", i)] for i in range(probe.n_test)}
    assert seen == set(HELDOUT_COMBOS)
    assert all(shape in SHAPES for _, shape in seen)


def test_every_task_uses_a_phrasing_pretraining_never_shows():
    heldout_prefixes = tuple(wrapper.split("{}")[0] for wrapper in HELDOUT_WRAPPERS)
    for task in TOY_TASKS.values():
        assert any(template.startswith(heldout_prefixes) for template in task.templates), task.name


# The stream `tiny` was pretrained on: a change to the world's sampling or rendering breaks this test,
# and then the shipped weights must be pretrained again (see benchmarks/RESULTS.md).
PRETRAINING_STREAM_DIGEST = "8290ff5a8a2465104505b3501f18f63dc373af015068885f2cc630f95513c1e6"


def test_pretraining_stream_is_the_one_tiny_was_trained_on():
    digest = hashlib.sha256()
    for index in range(64):
        image, text = pretraining_example(index, seed=0)
        digest.update(image.tobytes())
        digest.update(text.encode())
    assert digest.hexdigest() == PRETRAINING_STREAM_DIGEST


@pytest.mark.parametrize(
    "name, style",
    [
        ("aircraft", {"texture": "plain"}),
        ("flowers", {"texture": "plain", "size": "small"}),
        ("mnist", {"texture": "plain", "size": "large", "colour": "white"}),
        ("cars", {"texture": "plain", "colour": "white"}),
        ("dtd", {}),
    ],
)
def test_house_styled_tasks_keep_their_style_and_vary_the_rest(name, style):
    task = TOY_TASKS[name]
    labels = (0, len(task.classnames) - 1)
    scenes = [task.scene_for_label(label, np.random.default_rng(seed)) for seed in range(20) for label in labels]
    found = {
        "texture": {scene.texture for scene in scenes},
        "size": {scene.items[0].size for scene in scenes},
        "colour": {scene.items[0].colour for scene in scenes},
    }
    for factor, values in found.items():
        assert values == {style[factor]} if factor in style else len(values) > 1, (factor, values)


def test_base2new_tiny_has_every_task_with_two_novel_classes_or_more():
    names = [spec.source.removeprefix("toy:") for spec in BENCHMARKS["base2new-tiny"].tasks]
    assert names == [name for name in MTIL_ORDER if name != "oxfordpet"]
    for name in names:
        assert len(class_subset(len(TOY_TASKS[name].classnames), "novel")) >= 2, name


def test_cifar100_shares_classes_with_caltech101_and_mnist_in_both_halves():
    symbols = TOY_TASKS["cifar100"]
    shapes = set(TOY_TASKS["caltech101"].classnames)
    digits = {f"digit {d}" for d in TOY_TASKS["mnist"].classnames}
    assert shapes | digits <= set(symbols.classnames)
    for half in ("base", "novel"):
        names = [symbols.classnames[i] for i in class_subset(len(symbols.classnames), half)]
        kinds = [name.split()[0] if " " in name else "shape" for name in names]
        assert {kind: kinds.count(kind) for kind in kinds} == {"shape": 5, "digit": 5, "letter": 5}, half


@pytest.mark.parametrize("label", [0, 5, 10])  # a circle, the digit 0, the letter A
def test_cifar100_draws_the_object_its_class_names(label):
    symbols = TOY_TASKS["cifar100"]
    item = symbols.scene_for_label(label, np.random.default_rng(0)).items[0]
    kind, _, glyph = symbols.classnames[label].partition(" ")
    assert (item.kind, item.glyph) == (kind, glyph)
