"""The `head` kind: a linear classifier on normalised image features, started at the zero-shot head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cftool.encode.zero_shot import HeadFn
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, check_shapes
from cftool.io.header import HEAD_KIND
from cftool.kinds.method import Method, Solution, class_weight_path_logits, copy_into, zero_shot_class_features
from cftool.options import HEAD
from cftool.zoo import ZooModel


class LinearHead(Method):
    """A linear classifier on normalised image features, initialised from the zero-shot head (unit rows) and scaled
    by the base model's logit scale, so it starts with the zero-shot model's logits; both encoders frozen.

    The weight is stored without the scale: its rows stay comparable with the zero-shot text features (MergeTune's
    zero-shot counterpart), and an optimiser's steps are relative to unit-norm rows.
    """

    name, kind = HEAD.name, HEAD_KIND

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        weight: torch.Tensor | None = None,
    ):
        super().__init__(zoo, classnames, templates)
        if weight is None:
            weight = zero_shot_class_features(zoo, self.classnames, self.templates)
        self.head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=self.device)
        self.head.weight = nn.Parameter(weight.float().to(self.device))

    def solution(self) -> Solution:
        return {"head.weight": self.head.weight}

    def logits_at(self, inputs: torch.Tensor, solution: Solution) -> torch.Tensor:
        return self.model.logit_scale.exp() * inputs @ solution["head.weight"].T

    def path_logits(
        self, inputs: torch.Tensor, start: Solution, end: Solution, alphas: Sequence[float], end_logits: torch.Tensor
    ) -> torch.Tensor:
        scale, key = self.model.logit_scale.exp(), "head.weight"
        return class_weight_path_logits(scale, inputs, start[key], end[key], alphas, renormalise=False)

    def class_text_features(self, solution: Solution) -> torch.Tensor:
        return F.normalize(solution["head.weight"], dim=-1)

    def load_trained(self, ckpt: CheckpointReader) -> None:
        copy_into({"head.weight": self.head.weight}, ckpt, {"head.weight": "head.weight"})

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        classnames = ckpt.header.classnames or []
        check_shapes(ckpt.path, ckpt.tensors, {"head.weight": (len(classnames), zoo.model.text_projection.shape[-1])})
        return cls(zoo, classnames, [], weight=ckpt["head.weight"]).eval_head

    @classmethod
    def interpolated(
        cls, zoo: ZooModel, ends: Sequence[CheckpointReader | None], alpha: float
    ) -> tuple[dict[str, torch.Tensor], dict]:
        return {"head.weight": torch.lerp(*_head_ends(zoo, ends), alpha)}, {}

    @torch.no_grad()
    def eval_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        if list(classnames) != self.classnames:
            raise CftoolError(
                f"a linear head is tied to its {len(self.classnames)} training classes "
                f"({', '.join(self.classnames[:3])}, ...) but the data has {len(classnames)} "
                f"({', '.join(classnames[:3])}, ...); evaluate it on the task and classes it was trained on"
            )
        return self.head.weight.detach().float().T.cpu()

    def export(self) -> dict[str, torch.Tensor]:
        return {"head.weight": self.head.weight.detach().cpu().contiguous()}


def _head_ends(zoo: ZooModel, readers: Sequence[CheckpointReader | None]) -> list[torch.Tensor]:
    """Both ends' head weights [n_classes, embed_dim]; the zero-shot end is the zero-shot head of the same classes."""
    known = [r for r in readers if r is not None]
    if len({tuple(r.header.classnames or []) for r in known}) > 1:
        raise CftoolError(f"interpolate: {known[0].path} and {known[1].path} are heads of different classes")
    templates = (known[0].header.config or {}).get("templates")
    if not templates:
        raise CftoolError(
            f"{known[0].path}: records no templates, so its zero-shot head cannot be built; use two heads"
        )
    zero_shot = zero_shot_class_features(zoo, known[0].header.classnames or [], templates)
    return [r["head.weight"].float() if r is not None else zero_shot for r in readers]
