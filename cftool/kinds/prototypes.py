"""Class prototypes of a task for ConDU's router (docs/design.md §5.3), as ConDU's ``finetune.py`` computes them after
training (ConDU_Ascend/src/models/finetune.py:171-209; few_shot_finetune.py:184-222 is the same code).

- The images: the **whole** training split, few-shot runs included (both files iterate ``dataset.train_loader``,
  finetune.py:178, few_shot_finetune.py:191, not the shots), seen through the **training** transform (the dataset is
  built with ``train_preprocess``, finetune.py:20-21), by the pretrained model (finetune.py:30, :183).
- Per class: the mean of the normalised image features (finetune.py:184-202), plus the mean over the templates of
  the normalised text features, **not** normalised again (:197-199), halved, then normalised (:203, :208).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cftool.data import TaskData
from cftool.data.augment import training_transform
from cftool.data.specs import PROTOTYPES_STREAM
from cftool.encode.features import image_features
from cftool.encode.zero_shot import encode_images
from cftool.options import NO_AUGMENT
from cftool.zoo import ZooModel


def class_prototypes(image_features: torch.Tensor, labels: torch.Tensor, text_means: torch.Tensor) -> torch.Tensor:
    """[n_classes, embed_dim]: normalise((mean normalised image feature of the class + its text mean) / 2).

    ``image_features`` are normalised zero-shot features of the training images; ``text_means`` [embed_dim,
    n_classes] (laid out as a zero-shot head) the mean of each class's normalised template features, not normalised
    again (``class_text_means``, transposed). Every class must have an image.
    """
    n_classes = text_means.shape[1]
    sums = torch.zeros(n_classes, image_features.shape[1]).index_add_(0, labels, image_features.float())
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1)
    image_means = sums / counts.unsqueeze(1)
    return F.normalize((image_means + text_means.T.float()) / 2, dim=-1)


def task_prototypes(
    zoo: ZooModel,
    task: TaskData,
    text_means: torch.Tensor,
    augment: str,
    cache_dir: Path | None = None,
    batch_size: int = 256,
    workers: int = 0,
    advance: Callable[[int], None] = lambda n: None,
    eval_features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The task's prototypes from the zoo model's zero-shot features: its whole training split through the training
    transform of ``augment`` (one seeded view of each image), and ``text_means``, the ``class_text_means`` of its
    classes over its templates.

    ``eval_features``: (features, labels) of the training split through the eval preprocessing, already computed
    for the feature cache; reused where they are the ones needed, those of the whole split unaugmented.
    """
    if augment != NO_AUGMENT:
        split = task.full_training_split(training_transform(augment, zoo), draw_stream=PROTOTYPES_STREAM)
        features, labels = encode_images(zoo, split, batch_size, workers, advance)
    elif eval_features is not None and task.spec.shots is None:
        features, labels = eval_features
    else:
        # Kept under --cache-dir with --shots too: a sweep over seeds or shot counts of one task reads the same whole
        # split each time (the cache file is named by the images, so it is never taken for the shots' features).
        split = task.full_training_split(zoo.preprocess)
        features, labels = image_features(zoo, split, cache_dir, batch_size, workers, advance)
    return class_prototypes(features, labels, text_means.T.cpu())
