"""The embedded toy world: composable scenes, their rendering and their captions.

A scene is a grey textured background with one or more coloured items (geometric shapes, digit or
letter glyphs, arrows). Everything random about a scene lives in the `Scene` value itself, so
rendering is a pure function of the scene and every image is reproducible from the integers that
seeded its sampling. Some colour-shape combinations and some caption phrasings never occur in
pretraining, so that zero-shot accuracy on them measures generalisation rather than lookup.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 30),
    "pink": (240, 120, 185),
    "brown": (130, 75, 35),
    "green": (40, 165, 55),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 215),
    "purple": (135, 55, 195),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "semicircle")
TEXTURES = (
    "plain",
    "horizontally striped",
    "vertically striped",
    "diagonally striped",
    "checkered",
    "dotted",
    "gridded",
    "wavy",
    "speckled",
    "ringed",
)
# Positions are cells of a 3x3 grid, row-major.
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
SIZES = ("small", "medium", "large")
DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Arrow directions counter-clockwise from "right", 45 degrees apart.
DIRECTIONS = ("right", "upper right", "up", "upper left", "left", "lower left", "down", "lower right")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")

# Never rendered in pretraining (in any scene kind); tasks still contain them.
HELDOUT_COMBOS = frozenset(
    {
        ("red", "hexagon"),
        ("orange", "star"),
        ("yellow", "triangle"),
        ("pink", "square"),
        ("green", "circle"),
        ("cyan", "hexagon"),
        ("blue", "star"),
        ("purple", "triangle"),
    }
)
# Caption wrappers: pretraining uses the first list only; task prompts may use the second.
PRETRAINING_WRAPPERS = ("{}.", "an image of {}.", "a picture of {}.", "a drawing of {}.", "there is {}.", "{} here.")
HELDOUT_WRAPPERS = ("a photo of {}.", "a rendering of {}.")

_SHAPE_RADIUS = {"small": (6, 8), "medium": (10, 13), "large": (15, 19)}
_GLYPH_FONT_SIZE = {"small": (18, 21), "medium": (25, 29), "large": (33, 38)}
PIXEL_NOISE = 6.0
_CELL_CENTRES = (IMAGE_SIZE / 6, IMAGE_SIZE / 2, 5 * IMAGE_SIZE / 6)


@dataclass(frozen=True)
class Item:
    kind: str  # a shape name, "arrow", "digit" or "letter"
    colour: str
    size: str
    x: float
    y: float
    angle: float  # degrees counter-clockwise; an arrow's direction, a small tilt otherwise
    rgb: tuple[int, int, int]  # the named colour after per-image jitter
    scale: int  # radius, or font size for glyphs, in pixels
    glyph: str = ""  # the character drawn for digits and letters


@dataclass(frozen=True)
class Scene:
    texture: str
    tones: tuple[int, int]  # the two grey levels the texture alternates between
    tint: tuple[int, int, int]  # a colour mixed into the background, so object colour is not the only colour
    tint_strength: float
    period: int
    phase: int
    noise_seed: int
    items: tuple[Item, ...]
    relation: str = ""  # for two-item scenes: "left of" or "above" (first item relative to second)


def stable_seed(*parts: object) -> list[int]:
    """Seed material for numpy that, unlike hash(), is the same in every process."""
    return [zlib.crc32(str(part).encode()) for part in parts]


# ---------------------------------------------------------------- sampling


def sample_item(
    rng: np.random.Generator,
    kind: str,
    colour: str | None = None,
    size: str | None = None,
    position: str | None = None,
    direction: str | None = None,
    glyph: str = "",
    centre: tuple[float, float] | None = None,
) -> Item:
    colour = colour or str(rng.choice(list(COLOURS)))
    size = size or str(rng.choice(SIZES))
    if centre is None:
        cell = POSITIONS.index(position or str(rng.choice(POSITIONS)))
        jitter = rng.uniform(-5, 5, size=2)
        centre = (_CELL_CENTRES[cell % 3] + jitter[0], _CELL_CENTRES[cell // 3] + jitter[1])
    if kind == "arrow":
        angle = 45.0 * DIRECTIONS.index(direction or str(rng.choice(DIRECTIONS))) + rng.uniform(-8, 8)
    else:
        angle = rng.uniform(-12, 12)
    base = np.array(COLOURS[colour])
    rgb = tuple(int(v) for v in np.clip(base + rng.integers(-55, 56, size=3), 0, 255))
    low, high = (_GLYPH_FONT_SIZE if kind in ("digit", "letter") else _SHAPE_RADIUS)[size]
    scale = int(rng.integers(low, high + 1))
    return Item(kind, colour, size, float(centre[0]), float(centre[1]), float(angle), rgb, scale, glyph)


def sample_background(rng: np.random.Generator, texture: str | None = None) -> dict:
    low = int(rng.integers(55, 165))
    tint = COLOURS[str(rng.choice(list(COLOURS)))]
    return dict(
        texture=texture or str(rng.choice(TEXTURES)),
        tones=(low, low + int(rng.integers(25, 60))),
        tint=tint,
        tint_strength=float(rng.choice([0.0, rng.uniform(0.2, 0.45)])),
        period=int(rng.integers(6, 11)),
        phase=int(rng.integers(0, 16)),
        noise_seed=int(rng.integers(2**31)),
    )


def allowed_in_pretraining(colour: str, kind: str) -> bool:
    return (colour, kind) not in HELDOUT_COMBOS


@dataclass(frozen=True)
class Look:
    """Background and colour shared by a contrast group of pretraining examples."""

    background: dict
    colour: str


def choose_colour(rng: np.random.Generator, kind: str, pretraining: bool, look: Look | None) -> str:
    """The look's colour where allowed, else a random one; held-out combinations only outside pretraining."""
    if look and (not pretraining or allowed_in_pretraining(look.colour, kind)):
        return look.colour
    colours = [c for c in COLOURS if not pretraining or allowed_in_pretraining(c, kind)]
    return str(rng.choice(colours))


def background_for(rng: np.random.Generator, look: Look | None, texture: str | None = None) -> dict:
    return look.background if look else sample_background(rng, texture)


def single_scene(
    rng: np.random.Generator,
    kind: str,
    pretraining: bool,
    texture: str | None = None,
    look: Look | None = None,
    **item_attributes,
) -> Scene:
    """One item of `kind` (a shape, "arrow", "digit" or "letter"); unspecified attributes are random."""
    background = background_for(rng, look, texture)
    if "colour" not in item_attributes:
        item_attributes["colour"] = choose_colour(rng, kind, pretraining, look)
    if kind in ("digit", "letter") and "glyph" not in item_attributes:
        item_attributes["glyph"] = str(rng.choice(DIGITS if kind == "digit" else LETTERS))
    return Scene(items=(sample_item(rng, kind, **item_attributes),), **background)


def count_scene(rng: np.random.Generator, count: int, pretraining: bool, look: Look | None = None) -> Scene:
    """`count` small copies of one shape in one colour, on distinct cells of the 3x3 grid."""
    background = background_for(rng, look)
    shape = str(rng.choice(SHAPES))
    colour = choose_colour(rng, shape, pretraining, look)
    cells = rng.choice(len(POSITIONS), size=count, replace=False)
    items = tuple(sample_item(rng, shape, colour=colour, size="small", position=POSITIONS[c]) for c in cells)
    return Scene(items=items, **background)


def pair_scene(rng: np.random.Generator, shapes: tuple[str, str], pretraining: bool, look: Look | None = None) -> Scene:
    """Two different shapes side by side or one above the other, in two different colours."""
    background = background_for(rng, look)
    relation = str(rng.choice(["left of", "above"]))
    along, across = rng.uniform(16, 24), rng.uniform(22, 42)
    first_centre, second_centre = (along, across), (IMAGE_SIZE - along, across)
    if relation == "above":
        first_centre, second_centre = first_centre[::-1], second_centre[::-1]
    first_colour = choose_colour(rng, shapes[0], pretraining, look)
    second_colour = first_colour
    while second_colour == first_colour:
        second_colour = choose_colour(rng, shapes[1], pretraining, None)
    items = (
        sample_item(rng, shapes[0], colour=first_colour, size="medium", centre=first_centre),
        sample_item(rng, shapes[1], colour=second_colour, size="medium", centre=second_centre),
    )
    return Scene(items=items, relation=relation, **background)


# ---------------------------------------------------------------- rendering


@functools.cache
def _pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _texture_mask(scene: Scene) -> np.ndarray:
    y, x = _pixel_grid()
    p, ph = scene.period, scene.phase
    half = p / 2
    match scene.texture:
        case "plain":
            return np.zeros_like(x, dtype=bool)
        case "horizontally striped":
            return ((y + ph) // half) % 2 == 0
        case "vertically striped":
            return ((x + ph) // half) % 2 == 0
        case "diagonally striped":
            return ((x + y + ph) // (half * 1.4)) % 2 == 0
        case "checkered":
            return (((x + ph) // p) + ((y + ph) // p)) % 2 == 0
        case "dotted":
            return np.hypot((x + ph) % p - half, (y + ph) % p - half) < p * 0.28
        case "gridded":
            return ((x + ph) % p < 1.5) | ((y + ph) % p < 1.5)
        case "wavy":
            return ((y + 3 * np.sin(x * np.pi / p) + ph) // half) % 2 == 0
        case "speckled":
            return np.random.default_rng(scene.noise_seed).random(x.shape) < 0.3
        case "ringed":
            cy, cx = 16 + ph * 2, 48 - ph * 2
            return (np.hypot(x - cx, y - cy) // half) % 2 == 0
    raise ValueError(f"unknown texture {scene.texture!r}")


def _polygon(item: Item, unit_points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Scale, rotate (counter-clockwise on screen) and place unit-radius points."""
    theta = np.deg2rad(item.angle)
    cos, sin = np.cos(theta), np.sin(theta)
    return [
        (item.x + item.scale * (px * cos + py * sin), item.y + item.scale * (py * cos - px * sin))
        for px, py in unit_points
    ]


def _regular(n: int, start_deg: float, radius: float = 1.0) -> list[tuple[float, float]]:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return [(radius * np.cos(a), -radius * np.sin(a)) for a in angles]


_STAR = [p for pair in zip(_regular(5, 90), _regular(5, 126, 0.45), strict=True) for p in pair]
_CROSS = [
    (-0.3, -1),
    (0.3, -1),
    (0.3, -0.3),
    (1, -0.3),
    (1, 0.3),
    (0.3, 0.3),
    (0.3, 1),
    (-0.3, 1),
    (-0.3, 0.3),
    (-1, 0.3),
    (-1, -0.3),
    (-0.3, -0.3),
]
_ARROW = [(1, 0), (0, -0.8), (0, -0.3), (-1, -0.3), (-1, 0.3), (0, 0.3), (0, 0.8)]
_SEMICIRCLE = [(np.cos(a), -np.sin(a) + 0.4) for a in np.linspace(0, np.pi, 16)]
_UNIT_POLYGONS = {
    "square": _regular(4, 45, 1.15),
    "triangle": _regular(3, 90, 1.2),
    "diamond": [(0, -1.3), (0.75, 0), (0, 1.3), (-0.75, 0)],
    "pentagon": _regular(5, 90, 1.05),
    "hexagon": _regular(6, 0, 1.05),
    "star": [(x * 1.3, y * 1.3) for x, y in _STAR],
    "cross": _CROSS,
    "arrow": [(x * 1.3, y * 1.3) for x, y in _ARROW],
    "semicircle": _SEMICIRCLE,
}


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _draw_item(draw: ImageDraw.ImageDraw, item: Item) -> None:
    r = item.scale
    box = (item.x - r, item.y - r, item.x + r, item.y + r)
    if item.kind == "circle":
        draw.ellipse(box, fill=item.rgb)
    elif item.kind == "ring":
        draw.ellipse(box, outline=item.rgb, width=max(2, r // 3))
    elif item.kind in ("digit", "letter"):
        draw.text((item.x, item.y), item.glyph, fill=item.rgb, font=_font(item.scale), anchor="mm")
    else:
        draw.polygon(_polygon(item, _UNIT_POLYGONS[item.kind]), fill=item.rgb)


def render(scene: Scene) -> Image.Image:
    low, high = scene.tones
    grey = np.where(_texture_mask(scene), high, low).astype(np.float32)[:, :, None]
    background = (1 - scene.tint_strength) * grey + scene.tint_strength * np.array(scene.tint, np.float32)
    image = Image.fromarray(background.round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        _draw_item(draw, item)
    # Sensor-like noise blurs low-contrast textures and close colours into each other, as real photos do.
    noise = np.random.default_rng([scene.noise_seed, 1]).normal(0, PIXEL_NOISE, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).round().astype(np.uint8))


# ---------------------------------------------------------------- captions


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def item_noun(item: Item, rng: np.random.Generator, generic_allowed: bool = True) -> str:
    """What the item is; where `generic_allowed`, sometimes only a generic noun, so that attribute-only prompts
    are in distribution."""
    if generic_allowed and rng.random() < 0.2:
        return str(rng.choice(["shape", "object", "symbol"]))
    if item.kind == "digit":
        return str(rng.choice([f"digit {item.glyph}", f"number {item.glyph}", f'"{item.glyph}"']))
    if item.kind == "letter":
        return str(rng.choice([f"letter {item.glyph}", f'"{item.glyph}"']))
    return item.kind


def item_phrase(item: Item, rng: np.random.Generator, count_word: str = "", named: str = "") -> str:
    """A noun phrase with a random subset of the item's attributes, e.g. 'a large red star'.

    `named` is a factor the phrase must state: "identity" (the noun is never generic) or "size".
    """
    noun = item_noun(item, rng, generic_allowed=named != "identity")
    size_probability = 1.0 if named == "size" else 0.5
    adjectives = [a for a, p in ((item.size, size_probability), (item.colour, 0.4)) if rng.random() < p]
    phrase = " ".join([*adjectives, plural(noun) if count_word not in ("", "one") else noun])
    if item.kind == "arrow":
        phrase += f" pointing {DIRECTIONS[round(item.angle / 45) % 8]}"
    return f"{count_word} {phrase}" if count_word else with_article(phrase)


def position_of(item: Item) -> str:
    column, row = (min(2, int(v // (IMAGE_SIZE / 3))) for v in (item.x, item.y))
    return POSITIONS[3 * row + column]


def background_phrase(scene: Scene) -> str:
    return f"on a {scene.texture} background"


def caption(scene: Scene, rng: np.random.Generator, named: str = "") -> str:
    """A caption from a random subset of the scene's factors, always including `named` (a contrast group's
    varying factor) where given."""
    items = scene.items
    if len(items) == 2 and scene.relation:
        first, second = item_phrase(items[0], rng, named=named), item_phrase(items[1], rng, named=named)
        body = str(rng.choice([f"{first} {scene.relation} {second}", f"{first} and {second}", f"{second} and {first}"]))
    elif len(items) > 1 or rng.random() < 0.15:
        body = item_phrase(items[0], rng, count_word=NUMBER_WORDS[len(items) - 1], named=named)
    else:
        body = item_phrase(items[0], rng, named=named)
        if named == "position" or rng.random() < 0.7:
            body += f" in the {position_of(items[0])}"
    if named == "background" or rng.random() < 0.3:
        body += f" {background_phrase(scene)}"
    elif rng.random() < 0.1:
        body = with_article(f"{scene.texture} background")
    return str(rng.choice(PRETRAINING_WRAPPERS)).format(body)


# ---------------------------------------------------------------- pretraining stream

# Consecutive pretraining examples form contrast groups of this size; a batch holds many groups.
GROUP_SIZE = 8
SINGLE_ITEM_KINDS = ("shape", "digit", "letter", "arrow")  # the group kinds that draw a varying factor
SCENE_KINDS = (*SINGLE_ITEM_KINDS, "count", "pair")
SCENE_KIND_WEIGHTS = (0.20, 0.16, 0.26, 0.14, 0.10, 0.14)
# What a group of single-item scenes varies: the item's identity (shape, glyph or arrow direction) half the time,
# the background's texture a quarter, else its position or its size.
VARYING_FACTORS = ("identity", "identity", "identity", "identity", "background", "background", "position", "size")
IDENTITY_ATTRIBUTES = ("shape", "glyph", "direction")


@dataclass(frozen=True)
class ContrastGroup:
    """Pretraining examples that share their look and their items, except for one varying factor.

    Inside a group only the `varying` factor tells captions apart, and every caption names it, so the
    contrastive loss cannot match a group's captions to its images by the large, easy factors (colour,
    background) or by a factor the captions happen to mention: it has to learn the varying one. Groups that
    vary the background's texture keep its tones and tint, so that only the texture pattern tells them apart.
    """

    look: Look
    kind: str  # one of SCENE_KINDS; count groups vary the count, pair groups the two shapes
    varying: str  # one of VARYING_FACTORS
    shared: dict  # the item attributes every member has, except the varying one

    def member_attributes(self) -> dict:
        """The shared attributes a member keeps; the varying ones it samples itself."""
        varying = IDENTITY_ATTRIBUTES if self.varying == "identity" else (self.varying,)
        return {name: value for name, value in self.shared.items() if name not in varying}


def sample_group(rng: np.random.Generator) -> ContrastGroup:
    kind = str(rng.choice(SCENE_KINDS, p=SCENE_KIND_WEIGHTS))
    varying = str(rng.choice(VARYING_FACTORS)) if kind in SINGLE_ITEM_KINDS else "identity"
    shared = dict(size=str(rng.choice(SIZES)), position=str(rng.choice(POSITIONS)))
    if kind == "shape":
        shared["shape"] = str(rng.choice(SHAPES))
    if kind == "arrow":
        shared["direction"] = str(rng.choice(DIRECTIONS))
    if kind in ("digit", "letter"):
        shared["glyph"] = str(rng.choice(DIGITS if kind == "digit" else LETTERS))
    return ContrastGroup(Look(sample_background(rng), str(rng.choice(list(COLOURS)))), kind, varying, shared)


def pretraining_scene(rng: np.random.Generator, group: ContrastGroup) -> Scene:
    if group.kind == "count":
        return count_scene(rng, int(rng.integers(1, len(NUMBER_WORDS) + 1)), pretraining=True, look=group.look)
    if group.kind == "pair":
        first, second = rng.choice(SHAPES, size=2, replace=False)
        return pair_scene(rng, (str(first), str(second)), pretraining=True, look=group.look)
    attributes = group.member_attributes()
    kind = (attributes.pop("shape", None) or str(rng.choice(SHAPES))) if group.kind == "shape" else group.kind
    look = group.look
    if group.varying == "background":
        look = Look({**look.background, "texture": str(rng.choice(TEXTURES))}, look.colour)
    return single_scene(rng, kind, pretraining=True, look=look, **attributes)


def pretraining_sample(index: int, seed: int) -> tuple[Scene, str]:
    """Scene and caption number `index` of the pretraining stream for `seed`."""
    if index < 0:
        raise IndexError(f"pretraining index must be non-negative, got {index}")
    group = sample_group(np.random.default_rng(stable_seed("pretraining-group", seed, index // GROUP_SIZE)))
    rng = np.random.default_rng(stable_seed("pretraining", seed, index))
    scene = pretraining_scene(rng, group)
    return scene, caption(scene, rng, named=group.varying)


def pretraining_example(index: int, seed: int) -> tuple[Image.Image, str]:
    """Image and caption number `index` of the pretraining stream; held-out combos and phrasings never occur."""
    scene, text = pretraining_sample(index, seed)
    return render(scene), text
