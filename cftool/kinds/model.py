"""The `model` kind: full fine-tuning of every weight of the chosen towers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cftool.encode.zero_shot import HeadFn, zero_shot_head
from cftool.io.checkpoint import CheckpointReader
from cftool.io.header import MODEL_KIND
from cftool.kinds.method import Solution, TowerMethod, interpolate_weights, tower_of
from cftool.options import FULL, TOWERS, TRAIN_TEMPLATE
from cftool.zoo import ZooModel


class Full(TowerMethod):
    """Every weight of the chosen towers; the logit scale stays as pretrained."""

    name, kind = FULL.name, MODEL_KIND
    # A `model` file holds every weight, so it applies to any base of its architecture (its tensors' shapes are checked
    # as they load): a sequential fine-tune, made from the previous session's model, is evaluated over the original
    # base.
    self_contained = True

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        towers: Sequence[str] = TOWERS,
        train_templates: str = TRAIN_TEMPLATE,
    ):
        super().__init__(zoo, classnames, templates, towers, train_templates)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(tower_of(name) in self.towers)

    def solution(self) -> Solution:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def load_trained(self, ckpt: CheckpointReader) -> None:
        self.zoo.load_state_dict(ckpt.load_all(), ckpt.path)

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        zoo.load_state_dict(ckpt.load_all(), ckpt.path)
        return zero_shot_head

    @classmethod
    def weights_of(cls, base: dict[str, torch.Tensor], ckpt: CheckpointReader) -> dict[str, torch.Tensor]:
        return ckpt.load_all()

    @classmethod
    def interpolated(
        cls, zoo: ZooModel, ends: Sequence[CheckpointReader | None], alpha: float
    ) -> tuple[dict[str, torch.Tensor], dict]:
        base = zoo.model.state_dict()
        weights = [cls.weights_of(base, end) if end is not None else base for end in ends]
        return interpolate_weights(weights[0], weights[1], alpha), {}

    def export(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().contiguous() for name, t in self.model.state_dict().items()}
