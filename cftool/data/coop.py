"""`coop:NAME` — CoOp's dataset layout under `--data-root`, read through its `split_zhou_*.json` files.

Each split file maps ``train``/``val``/``test`` to ``[image path relative to the image folder, label, class name]``
triples; class names and order come from it, templates are CoOp's per-dataset ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import default_loader

from cftool.data.specs import files_fingerprint
from cftool.errors import CftoolError


@dataclass(frozen=True)
class CoopLayout:
    dataset_dir: str
    image_dir: str
    split_file: str
    template: str


COOP_DATASETS = {
    "OxfordPets": CoopLayout("oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
    "OxfordFlowers": CoopLayout(
        "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower."
    ),
    "Caltech101": CoopLayout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}."),
    "DescribableTextures": CoopLayout("dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    "EuroSAT": CoopLayout("eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
    "Food101": CoopLayout("food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    "SUN397": CoopLayout("sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    "StanfordCars": CoopLayout("stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
    "UCF101": CoopLayout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
}


class CoopSource:
    def __init__(self, name: str, layout: CoopLayout, root: Path):
        self.name = name
        self.templates = (layout.template,)
        dataset_dir = root / layout.dataset_dir
        split_path = dataset_dir / layout.split_file
        if not split_path.is_file():
            raise CftoolError(
                f"coop:{name}: expected CoOp's split file at {split_path} "
                f"(layout {layout.dataset_dir}/{layout.split_file} "
                f"and {layout.dataset_dir}/{layout.image_dir or '.'}/ under --data-root {root})"
            )
        self._image_dir = dataset_dir / layout.image_dir
        try:
            splits = json.loads(split_path.read_text())
            self._splits = {split: [(path, int(label)) for path, label, _ in rows] for split, rows in splits.items()}
            names = {int(label): classname for rows in splits.values() for _, label, classname in rows}
        except (ValueError, TypeError, AttributeError) as err:
            raise CftoolError(
                f"{split_path}: not a CoOp split file ({err}); expected train/val/test lists of [path, label, class]"
            ) from err
        if sorted(names) != list(range(len(names))):
            raise CftoolError(f"{split_path}: labels are not 0..{len(names) - 1}; the split file is damaged")
        self.classnames = [names[i] for i in range(len(names))]

    def labels(self, split: str) -> list[int]:
        if split not in self._splits:
            raise ValueError(f"the split file has no '{split}' split (found: {', '.join(self._splits)})")
        return [label for _, label in self._splits[split]]

    def image(self, split: str, index: int) -> Image.Image:
        path = self._image_dir / self._splits[split][index][0]
        try:
            return default_loader(str(path))
        except OSError as err:
            raise CftoolError(f"coop:{self.name}: cannot read image {path} ({err})") from err

    def fingerprint(self, split: str, indices: Sequence[int]) -> str:
        return files_fingerprint(self._image_dir / self._splits[split][index][0] for index in indices)


def coop_source(name: str, data_root: Path | None) -> CoopSource:
    by_lower = {key.lower(): key for key in COOP_DATASETS}
    key = by_lower.get(name.lower())
    if key is None:
        raise CftoolError(f"coop:{name}: unknown CoOp dataset; known: {', '.join(COOP_DATASETS)}")
    if data_root is None:
        raise CftoolError(f"coop:{name} needs --data-root, the folder that holds {COOP_DATASETS[key].dataset_dir}/")
    return CoopSource(key, COOP_DATASETS[key], data_root)
