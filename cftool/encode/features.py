"""Image features of a frozen image tower, computed once per (weights, data, preprocessing) and optionally kept in a
cache folder, so that training over many epochs runs the image encoder once rather than once per epoch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cftool.data import TaskSplit
from cftool.encode.zero_shot import encode_images
from cftool.io.checkpoint import save_checkpoint
from cftool.zoo import ZooModel


def cache_file(cache_dir: Path, zoo: ZooModel, dataset: TaskSplit) -> Path:
    """One file per base weights, images and labels, and preprocessing, so a stale cache is never read."""
    key = json.dumps([zoo.weights_sha256, dataset.fingerprint(), repr(zoo.preprocess)])
    return cache_dir / f"features-{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def image_features(
    zoo: ZooModel,
    dataset: TaskSplit,
    cache_dir: Path | None = None,
    batch_size: int = 256,
    workers: int = 0,
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised zero-shot image features [n, embed_dim] (float32, CPU) and labels of ``dataset``, in its order."""
    path = cache_file(cache_dir, zoo, dataset) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = load_file(path)
        except (SafetensorError, OSError):
            stored = {}  # a damaged cache file is recomputed and replaced
        if _is_intact(stored, dataset, zoo.model.visual.output_dim):
            advance(len(dataset))
            return stored["features"], stored["labels"]
    features, labels = encode_images(zoo, dataset, batch_size, workers, advance)
    # encode_images runs in inference mode; autograd may not save its tensors for backward, so copy them out.
    features, labels = features.clone(), labels.clone()
    if path is not None:
        save_checkpoint(path, {"features": features, "labels": labels}, header=None, overwrite=True)
    return features, labels


def _is_intact(stored: dict[str, torch.Tensor], dataset: TaskSplit, width: int) -> bool:
    """Whether a cache file holds what this function writes for ``dataset``: one finite float32 feature row of the
    image tower's ``width`` per image, and the images' labels. Anything else (a damaged or edited file) is
    recomputed and replaced."""
    features, labels = stored.get("features"), stored.get("labels")
    return (
        features is not None
        and labels is not None
        and features.dtype == torch.float32
        and tuple(features.shape) == (len(dataset), width)
        and bool(torch.isfinite(features).all())
        and labels.tolist() == dataset.labels
    )
