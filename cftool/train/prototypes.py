"""Class prototypes of a task for ConDU's router (DESIGN §5.3), from zero-shot features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_prototypes(image_features: torch.Tensor, labels: torch.Tensor, text_head: torch.Tensor) -> torch.Tensor:
    """[n_classes, embed_dim]: normalise((mean normalised image feature of the class + its text feature) / 2).

    ``image_features`` are normalised zero-shot features of the training images; ``text_head`` [embed_dim,
    n_classes] is the zero-shot head, the normalised mean of normalised template features. Every class must have an
    image.
    """
    n_classes = text_head.shape[1]
    sums = torch.zeros(n_classes, image_features.shape[1]).index_add_(0, labels, image_features.float())
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1)
    image_means = sums / counts.unsqueeze(1)
    return F.normalize((image_means + text_head.T.float()) / 2, dim=-1)
