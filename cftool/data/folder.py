"""`folder:PATH` — an ImageFolder (one sub-folder per class), optionally with train/val/test split folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from cftool.data.specs import files_fingerprint, load_image
from cftool.errors import CftoolError
from cftool.options import SPLITS

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class FolderSource:
    """``PATH/{train,val,test}/CLASS/*.png``, or ``PATH/CLASS/*.png`` which then serves every split.

    Class names are the folder names with underscores read as spaces; the class order (and so the
    base/novel halves) is the sorted folder order, shared by all splits.
    """

    templates = DEFAULT_TEMPLATES

    def __init__(self, root: Path):
        if not root.is_dir():
            raise CftoolError(
                f"folder:{root}: no such directory; expected class folders, or train/ and test/ folders of them"
            )
        self.name = root.name
        split_dirs = {split: root / split for split in SPLITS if (root / split).is_dir()}
        self._split_dirs = split_dirs or {split: root for split in SPLITS}
        class_dir_root = next(iter(self._split_dirs.values()))
        try:
            folder_names, self._class_to_idx = find_classes(class_dir_root)
        except FileNotFoundError as err:
            raise CftoolError(f"folder:{root}: {err}") from err
        self.classnames = [name.replace("_", " ") for name in folder_names]
        self._samples: dict[str, list[tuple[str, int]]] = {}

    def _split_samples(self, split: str) -> list[tuple[str, int]]:
        if split not in self._split_dirs:
            raise ValueError(f"no '{split}' folder (found: {', '.join(sorted(self._split_dirs))})")
        if split not in self._samples:
            self._check_same_classes(split)
            _refuse_symlink_loops(self._split_dirs[split])
            self._samples[split] = make_dataset(
                self._split_dirs[split], self._class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True
            )
        return self._samples[split]

    def _check_same_classes(self, split: str) -> None:
        """A class folder that only one split has would be dropped silently (or shift every label): refuse it."""
        try:
            found, _ = find_classes(self._split_dirs[split])
        except FileNotFoundError:
            found = []  # a split folder with no class folders holds no images
        missing = sorted(set(found) - set(self._class_to_idx))
        if missing:
            first_split = next(iter(self._split_dirs.values()))
            raise CftoolError(
                f"folder:{self._split_dirs[split]}: class folder(s) {', '.join(missing[:3])} are not in "
                f"{first_split}; every split must use the same class folders"
            )

    def labels(self, split: str) -> list[int]:
        return [label for _, label in self._split_samples(split)]

    def image(self, split: str, index: int) -> Image.Image:
        path = self._split_samples(split)[index][0]
        try:
            return load_image(path)
        except OSError as err:
            raise CftoolError(f"folder:{path}: cannot read image ({err}); replace or remove the file") from err

    def fingerprint(self, split: str, indices: Sequence[int]) -> str:
        samples = self._split_samples(split)
        return files_fingerprint(Path(samples[index][0]) for index in indices)


def _refuse_symlink_loops(top: Path) -> None:
    """torchvision walks class folders following symbolic links: a link to a folder it is already inside would list
    the same images again at every level (until the path grows too long) as if they were more images."""
    inside = {str(top): {os.path.realpath(top)}}  # each folder walked: the real folders from ``top`` down to it
    for folder, subfolders, _ in os.walk(top, followlinks=True):
        ancestors = inside.pop(folder)
        for name in subfolders:
            real = os.path.realpath(os.path.join(folder, name))
            if real in ancestors:
                raise CftoolError(
                    f"folder:{os.path.join(folder, name)}: a symbolic link to {real}, a folder it is inside: its "
                    "images would be listed again and again; remove the link"
                )
            inside[os.path.join(folder, name)] = ancestors | {real}
