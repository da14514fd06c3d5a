"""The eleven toy tasks of `mtil-tiny`, one per MTIL domain, all drawn from the toy world.

Each task reads one factor of a scene (or a combination) while other factors vary, so a classifier
has to ignore nuisances the pretraining captions also describe. Some tasks also have a house style,
as real datasets do (`mnist`: large white digits on plain backgrounds): a narrower distribution than
pretraining's, where the zero-shot prompt is a little off and a few labelled images show how, which
is what few-shot prompt learning exploits on real benchmarks. Class lists are ordered
so that the first half (base in `base2new-tiny`) and the second half (novel) cover comparable
factors but differ in one a learned prompt context can latch on to (warm vs cool colours, low vs
high digits, ...).

Tasks overlap as MTIL's datasets do (CIFAR100 and Caltech101 share objects; Aircraft and Cars are fine-grained
cousins), so that what one task teaches can help another: `cifar100`'s coarse mix of objects holds `caltech101`'s
shapes and `mnist`'s digits under the same names, `aircraft`'s colour-shape classes refine `flowers`' colours and
`caltech101`'s shapes, and `sun397` names pairs of those shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cftool.data.toyworld import (
    DIGITS,
    DIRECTIONS,
    HELDOUT_COMBOS,
    LETTERS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    Scene,
    count_scene,
    pair_scene,
    render,
    single_scene,
    stable_seed,
)
from cftool.options import (
    SPLITS,  # val: as many images as test, rendered from seeds of their own
    TOY_AIRCRAFT,
    TOY_CALTECH101,
    TOY_CARS,
    TOY_CIFAR100,
    TOY_DTD,
    TOY_EUROSAT,
    TOY_FLOWERS,
    TOY_FOOD,
    TOY_HELDOUT,
    TOY_MNIST,
    TOY_OXFORDPET,
    TOY_SUN397,
)

SceneSampler = Callable[[int, np.random.Generator], Scene]


@dataclass(frozen=True)
class ToyTask:
    """A labelled image set whose examples are rendered on demand from (task, split, index)."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    n_train: int
    n_test: int
    scene_for_label: SceneSampler = field(repr=False, compare=False)
    # The labels examples cycle through; all classes unless a task is restricted to some of them.
    label_cycle: tuple[int, ...] = ()

    def _check(self, split: str, index: int) -> None:
        if split not in SPLITS:
            raise ValueError(f"toy:{self.name} has splits {SPLITS}, not {split!r}")
        size = self.n_train if split == "train" else self.n_test  # val has test's size
        if not 0 <= index < size:
            raise IndexError(f"toy:{self.name} {split} index {index} out of range [0, {size})")

    def label(self, split: str, index: int) -> int:
        self._check(split, index)
        cycle = self.label_cycle or range(len(self.classnames))
        return cycle[index % len(cycle)]

    def example(self, split: str, index: int) -> tuple[Image.Image, int]:
        label = self.label(split, index)
        rng = np.random.default_rng(stable_seed("task", self.name, split, index))
        return render(self.scene_for_label(label, rng)), label


# ---------------------------------------------------------------- class lists

WARM_COLOURS = ("red", "orange", "yellow", "pink")
COOL_COLOURS = ("green", "cyan", "blue", "purple")
FINE_GRAINED_SHAPES = ("circle", "square", "triangle", "star", "hexagon")
COLOUR_SHAPES = tuple((c, s) for c in WARM_COLOURS + COOL_COLOURS for s in FINE_GRAINED_SHAPES)
# Round and angular shapes alternate so both halves mix them.
SHAPE_CLASSES = (
    "circle",
    "square",
    "ring",
    "triangle",
    "semicircle",
    "pentagon",
    "star",
    "diamond",
    "hexagon",
    "cross",
)
COLOUR_CLASSES = ("red", "orange", "yellow", "pink", "brown", "green", "cyan", "blue", "purple", "white")
# `cifar100`'s coarse mix of every kind of object: shapes (as `caltech101`'s), digits (as `mnist`'s) and letters, in
# halves that each hold five of every kind, so a base-to-novel split sees all three.
SYMBOL_CLASSES = tuple(
    name
    for half in (slice(0, 5), slice(5, 10))
    for name in (*SHAPE_CLASSES[half], *(f"digit {d}" for d in DIGITS[half]), *(f"letter {x}" for x in LETTERS[half]))
)
PAIR_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
SHAPE_PAIRS = tuple((a, b) for i, a in enumerate(PAIR_SHAPES) for b in PAIR_SHAPES[i + 1 :])


def _colour_shape(label: int, rng: np.random.Generator) -> Scene:
    colour, shape = COLOUR_SHAPES[label]
    return single_scene(rng, shape, pretraining=False, colour=colour, texture="plain")


def _shape(label: int, rng: np.random.Generator) -> Scene:
    return single_scene(rng, SHAPE_CLASSES[label], pretraining=False)


def _symbol(label: int, rng: np.random.Generator) -> Scene:
    kind, _, glyph = SYMBOL_CLASSES[label].partition(" ")
    if glyph:
        return single_scene(rng, kind, pretraining=False, glyph=glyph)
    return single_scene(rng, kind, pretraining=False)


def _texture(label: int, rng: np.random.Generator) -> Scene:
    return single_scene(rng, str(rng.choice(SHAPES)), pretraining=False, texture=TEXTURES[label])


def _position(label: int, rng: np.random.Generator) -> Scene:
    kind = str(rng.choice([*SHAPES, "digit", "letter"]))
    return single_scene(rng, kind, pretraining=False, position=POSITIONS[label])


def _colour(label: int, rng: np.random.Generator) -> Scene:
    return single_scene(
        rng, str(rng.choice(SHAPES)), pretraining=False, colour=COLOUR_CLASSES[label], texture="plain", size="small"
    )


def _count(label: int, rng: np.random.Generator) -> Scene:
    return count_scene(rng, label + 1, pretraining=False)


def _digit(label: int, rng: np.random.Generator) -> Scene:
    return single_scene(
        rng, "digit", pretraining=False, glyph=DIGITS[label], colour="white", size="large", texture="plain"
    )


def _size(label: int, rng: np.random.Generator) -> Scene:
    return single_scene(rng, str(rng.choice(SHAPES)), pretraining=False, size=SIZES[label])


def _direction(label: int, rng: np.random.Generator) -> Scene:
    return single_scene(rng, "arrow", pretraining=False, direction=DIRECTIONS[label], colour="white", texture="plain")


def _pair(label: int, rng: np.random.Generator) -> Scene:
    shapes = SHAPE_PAIRS[label]
    return pair_scene(rng, shapes if rng.random() < 0.5 else shapes[::-1], pretraining=False)


def _task(
    name: str,
    classnames: tuple[str, ...],
    templates: tuple[str, ...],
    sampler: SceneSampler,
    n_train: int = 4000,
    n_test: int = 1000,
) -> ToyTask:
    return ToyTask(name, classnames, templates, n_train, n_test, sampler)


# Benchmark order follows MTIL: Aircraft, Caltech101, CIFAR100, DTD, EuroSAT, Flowers, Food, MNIST,
# OxfordPet, Cars, SUN397.
TOY_TASKS: dict[str, ToyTask] = {
    task.name: task
    for task in (
        _task(
            TOY_AIRCRAFT,
            tuple(f"{c} {s}" for c, s in COLOUR_SHAPES),
            ("a photo of a {}.", "a picture of a {}.", "a drawing of a {}."),
            _colour_shape,
        ),
        _task(TOY_CALTECH101, SHAPE_CLASSES, ("a photo of a {}.", "an image of a {}.", "a {}."), _shape),
        _task(
            TOY_CIFAR100,
            SYMBOL_CLASSES,
            ("a photo of a {}.", "a picture of a {}.", "a {}."),
            _symbol,
        ),
        _task(
            TOY_DTD, TEXTURES, ("a photo of a {} texture.", "a {} background.", "a shape on a {} background."), _texture
        ),
        _task(
            TOY_EUROSAT,
            POSITIONS,
            ("a photo of an object in the {}.", "a shape in the {}.", "a symbol in the {}."),
            _position,
        ),
        _task(
            TOY_FLOWERS,
            COLOUR_CLASSES,
            ("a photo of a {} object.", "a {} shape.", "a picture of a {} object."),
            _colour,
        ),
        _task(
            TOY_FOOD,
            tuple(f"{w} {'shape' if w == 'one' else 'shapes'}" for w in NUMBER_WORDS),
            ("a photo of {}.", "{}.", "a picture of {}."),
            _count,
        ),
        _task(
            TOY_MNIST, DIGITS, ('a photo of the number "{}".', "the digit {}.", "a picture of the number {}."), _digit
        ),
        _task(TOY_OXFORDPET, SIZES, ("a photo of a {} shape.", "a {} object.", "a picture of a {} shape."), _size),
        _task(
            TOY_CARS,
            DIRECTIONS,
            ("a photo of an arrow pointing {}.", "an arrow pointing {}.", "an image of an arrow pointing {}."),
            _direction,
        ),
        _task(
            TOY_SUN397,
            tuple(f"a {a} and a {b}" for a, b in SHAPE_PAIRS),
            ("a photo of {}.", "{}.", "a picture of {}."),
            _pair,
        ),
    )
}

# Test images of the colour-shape combinations pretraining never shows, scored against the full
# `aircraft` label space.
HELDOUT_TASK = ToyTask(
    TOY_HELDOUT,
    TOY_TASKS[TOY_AIRCRAFT].classnames,
    TOY_TASKS[TOY_AIRCRAFT].templates,
    0,
    400,
    _colour_shape,
    label_cycle=tuple(i for i, combo in enumerate(COLOUR_SHAPES) if combo in HELDOUT_COMBOS),
)


def heldout_examples() -> ToyTask:
    """The held-out-combination probe: a test-only task over `aircraft`'s classes, every image a held-out combo."""
    return HELDOUT_TASK
