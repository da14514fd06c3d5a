"""Zero-shot classification: image features once per image, a text head per label space, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cftool.data import TaskData, class_subset
from cftool.metrics import harmonic_mean, top1_accuracy
from cftool.options import BASE_CLASSES, NOVEL_CLASSES
from cftool.zoo import ZooModel

# (zoo, classnames, templates) -> [embed_dim, n_classes] weights that normalised image features are scored against;
# `zero_shot_head` for full weights, a learned prompt or linear head for adapted checkpoints.
HeadFn = Callable[[ZooModel, list[str], list[str]], torch.Tensor]


@dataclass(frozen=True)
class TaskResult:
    task: str
    classes: str  # all | base | novel
    accuracy: float
    num_classes: int
    num_images: int


def autocast(device: torch.device):
    """bf16 autocast on GPU; CPU runs in fp32, where autocast would only slow matrix products down."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.inference_mode()
def encode_images(
    zoo: ZooModel,
    dataset,
    batch_size: int = 256,
    workers: int = 0,
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features and labels of every image of ``dataset`` (which yields preprocessed tensors)."""
    device = next(zoo.model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    features, labels = [], []
    for images, batch_labels in loader:
        with autocast(device):
            batch_features = zoo.model.encode_image(images.to(device), normalize=True)
        features.append(batch_features.float().cpu())
        labels.append(batch_labels)
        advance(len(batch_labels))
    if not features:
        return torch.empty(0, zoo.model.text_projection.shape[-1]), torch.empty(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels)


# Prompts per pass of the text tower wherever the features of many are made: its activations grow with the batch, and
# every class × template of a dataset at once (Caltech101's 3,434 prompts) held ~9 GB on ViT-B/16.
PROMPTS_PER_PASS = 256


@torch.inference_mode()
def template_features(zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[n_classes, n_templates, embed_dim] normalised float32 text features of every class in every template, on the
    model's device, encoded ``PROMPTS_PER_PASS`` prompts at a time."""
    device = next(zoo.model.parameters()).device
    prompts = [template.format(name) for name in classnames for template in templates]
    parts = []
    for start in range(0, len(prompts), PROMPTS_PER_PASS):
        tokens = zoo.tokenizer(prompts[start : start + PROMPTS_PER_PASS]).to(device)
        with autocast(device):
            parts.append(zoo.model.encode_text(tokens, normalize=True).float())
    return torch.cat(parts).reshape(len(classnames), len(templates), -1)


@torch.inference_mode()
def class_text_means(zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[n_classes, embed_dim] on the model's device: each class's normalised template text features, averaged and not
    normalised again. The zero-shot head normalises them (``head_of_means``); ConDU's prototypes take them as they
    are. Made once where both are needed."""
    return template_features(zoo, classnames, templates).mean(dim=1)


def head_of_means(means: torch.Tensor) -> torch.Tensor:
    """[embed_dim, n_classes] zero-shot head of ``class_text_means``: each class's mean normalised."""
    return F.normalize(means, dim=-1).T.cpu()


@torch.inference_mode()
def zero_shot_head(zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[embed_dim, n_classes] head: class names × templates through the model's own text tower, averaged and
    normalised (open_clip's ``build_zero_shot_classifier``, in bounded passes)."""
    return head_of_means(class_text_means(zoo, classnames, templates))


@dataclass(frozen=True)
class LabelSpace:
    """The classes a prediction picks among: one task's own, or the union of several tasks' (each task's classes with
    that task's templates, side by side, so a class name two tasks share is two classes). The evaluated task's
    label ``y`` is column ``offset + y``."""

    groups: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (classnames, templates) of each task
    offset: int = 0

    @classmethod
    def own(cls, task: TaskData) -> LabelSpace:
        return cls(((tuple(task.classnames), tuple(task.templates)),))

    @classmethod
    def union(cls, tasks: list[TaskData], task: TaskData) -> LabelSpace:
        """Every one of ``tasks``' classes, in their order; ``task`` (one of them) is the one being evaluated."""
        names = [t.name for t in tasks]
        if task.name not in names:
            raise ValueError(f"task {task.name!r} is not among the union's tasks {names}")
        index = names.index(task.name)
        offset = sum(len(t.classnames) for t in tasks[:index])
        return cls(tuple((tuple(t.classnames), tuple(t.templates)) for t in tasks), offset)

    def __len__(self) -> int:
        return sum(len(classnames) for classnames, _ in self.groups)

    def head(self, zoo: ZooModel, head: HeadFn = zero_shot_head) -> torch.Tensor:
        """[embed_dim, len(self)]: ``head`` built for each task's classes with its templates, side by side."""
        return torch.cat([head(zoo, list(classnames), list(templates)) for classnames, templates in self.groups], 1)

    def labels(self, own_labels: torch.Tensor) -> torch.Tensor:
        """The evaluated task's labels as columns of this space."""
        return own_labels + self.offset

    def key(self) -> list:
        """What the space is, for cache keys: the classes and templates of each task, and the offset."""
        return [[list(classnames), list(templates)] for classnames, templates in self.groups] + [self.offset]


def evaluate_zero_shot(
    zoo: ZooModel,
    tasks: list[TaskData],
    split: str = "test",
    batch_size: int = 256,
    workers: int = 0,
    advance: Callable[[int], None] = lambda n: None,
    head: HeadFn = zero_shot_head,
) -> list[TaskResult]:
    """Top-1 accuracy of ``zoo`` on each task's ``split``, within each task's own label space scored by ``head``."""
    results = []
    for task in tasks:
        dataset = task.split(split, zoo.preprocess)
        features, labels = encode_images(zoo, dataset, batch_size, workers, advance)
        logits = features @ head(zoo, task.classnames, task.templates)
        results.append(
            TaskResult(task.name, task.spec.classes, top1_accuracy(logits, labels), len(task.classnames), len(labels))
        )
    return results


@dataclass(frozen=True)
class Base2NewResult:
    task: str
    base: float
    novel: float
    hm: float
    num_base_classes: int
    num_novel_classes: int


def evaluate_base2new(
    zoo: ZooModel,
    tasks: list[TaskData],
    split: str = "test",
    batch_size: int = 256,
    workers: int = 0,
    advance: Callable[[int], None] = lambda n: None,
    head: HeadFn = zero_shot_head,
) -> list[Base2NewResult]:
    """CoOp's protocol: base and novel halves each evaluated within their own label space, then HM."""
    results = []
    for task in tasks:
        halves = [
            TaskData(task.spec.with_classes(classes), task.source, class_subset(len(task.source.classnames), classes))
            for classes in (BASE_CLASSES, NOVEL_CLASSES)
        ]
        base, novel = evaluate_zero_shot(zoo, halves, split, batch_size, workers, advance, head)
        results.append(
            Base2NewResult(
                task.name,
                base.accuracy,
                novel.accuracy,
                harmonic_mean(base.accuracy, novel.accuracy),
                base.num_classes,
                novel.num_classes,
            )
        )
    return results
