"""Training-image augmentation as the reference codes apply it, at the image size and normalisation of the model in use.

- ``coop``: CoOp's configs (``configs/trainers/CoOp/*.yaml``: ``INPUT.TRANSFORMS: [random_resized_crop, random_flip,
  normalize]``, ``INTERPOLATION: bicubic``) as Dassl builds them (``dassl/data/transforms/transforms.py``): a random
  resized crop at Dassl's default scale ``INPUT.RRCROP_SCALE`` (0.08, 1) and torchvision's default aspect ratios
  (3/4, 4/3), then a horizontal flip with probability 0.5.
- ``zscl``: ZSCL's training transform (``mtil/clip/clip.py``): a bicubic random resized crop at scale (0.9, 1) and
  the default aspect ratios, which is open_clip's own training transform.

Both then do what the eval preprocessing does after its resize: RGB, a tensor, the model's mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from torchvision.transforms import Compose, RandomHorizontalFlip

from cftool.errors import CftoolError
from cftool.options import AUGMENTATION, AUGMENTATIONS, COOP_AUGMENT, NO_AUGMENT, PROTOCOL_AUGMENTATION, ZSCL_AUGMENT

if TYPE_CHECKING:
    from cftool.zoo import ZooModel

CROP_SCALES = {COOP_AUGMENT: (0.08, 1.0), ZSCL_AUGMENT: (0.9, 1.0)}
COOP_FLIP_PROBABILITY = 0.5  # torchvision's default, which Dassl's random_flip keeps


def default_augmentation(source: str) -> str:
    """The augmentation of the reference protocol a `--data` source belongs to (``coop:…``, ``mtil:…``)."""
    return PROTOCOL_AUGMENTATION.get(source.partition(":")[0], AUGMENTATION)


def check_augmentation(augment: str) -> None:
    if augment not in AUGMENTATIONS:
        raise CftoolError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")


def training_transform(augment: str, zoo: ZooModel) -> Callable:
    """What training images go through under ``augment``; ``none`` is the model's eval preprocessing."""
    check_augmentation(augment)
    if augment == NO_AUGMENT:
        return zoo.preprocess
    # open_clip builds the eval preprocessing from this config, so the crop's size and the normalisation are the
    # model's own: [bicubic random resized crop, RGB, tensor, normalisation].
    crop, *to_normalised_tensor = image_transform_v2(
        PreprocessCfg(**zoo.model.visual.preprocess_cfg),
        is_train=True,
        aug_cfg=AugmentationCfg(scale=CROP_SCALES[augment]),
    ).transforms
    if augment == COOP_AUGMENT:
        return Compose([crop, RandomHorizontalFlip(COOP_FLIP_PROBABILITY), *to_normalised_tensor])
    return Compose([crop, *to_normalised_tensor])
