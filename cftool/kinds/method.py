"""What a fine-tuning method is: the base of the four methods, each a small module around the open_clip model of
a ``ZooModel`` and each in the module of the checkpoint kind it writes (``prompt``, ``head``, ``lora``, ``model``).

A method exposes its trainable parameters (everything else is frozen), ``forward`` from normalised image
features (frozen image tower) or images to logits, ``export`` of what it learned as checkpoint tensors, and
``eval_head`` (a ``HeadFn``) so that any label space can be evaluated with it.

For MergeTune (docs/design.md §5.1) a method also names its *solution*, the point that linear paths between two
solutions run through: the unnormalised class text features of a prompt (the text encoder's outputs, normalised only
after interpolating, as MergeTune's code does), the weight of a head, the changed weights of full fine-tuning
and the factors that make LoRA's. ``logits_at`` scores with any such point, so a path costs one matrix product per
point for prompts and heads (image features of the frozen tower are reused) and one forward pass per point for
weights.

A freshly built method is the zero-shot model (the hand-written context, the zero-shot head, LoRA's B = 0, the base
weights); ``load_trained`` moves it to a checkpoint's solution, and the classmethod ``apply`` applies a checkpoint
to the base for inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cftool.encode.text import class_text_head, mean_per_class, template_tokens
from cftool.encode.zero_shot import HeadFn, class_text_means, head_of_means, zero_shot_head
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, check_shapes
from cftool.options import (
    FIRST_TEMPLATE,
    IMAGE_TOWER,
    PROTOCOL_TRAIN_TEMPLATES,
    TEXT_TOWER,
    TOWERS,
    TRAIN_TEMPLATE,
    TRAIN_TEMPLATES,
)
from cftool.zoo import ZooModel

# A method's point on MergeTune's paths (see the module docstring), by tensor name.
Solution = dict[str, torch.Tensor]
# TRAIN_TEMPLATES: which of a task's templates the text head of a tower method's training loss is built from. ZSCL's
# MTIL training (mtil/src/models/finetune.py:103 and :215, ConDU's src/models/finetune.py:112 and :151) encodes one
# prompt per class, ``dataset.template``, which is ``templates[0]`` (mtil/src/datasets/collections.py:61-64).


def default_train_templates(source: str) -> str:
    """The training templates of the reference protocol a `--data` source belongs to (``mtil:…``), else all."""
    return PROTOCOL_TRAIN_TEMPLATES.get(source.partition(":")[0], TRAIN_TEMPLATE)


def tower_of(parameter_name: str) -> str | None:
    """Which tower an open_clip CLIP parameter belongs to; None for the shared logit scale."""
    if parameter_name.startswith("visual."):
        return IMAGE_TOWER
    if parameter_name in ("logit_scale", "logit_bias"):
        return None
    return TEXT_TOWER


def zero_shot_class_features(zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[n_classes, embed_dim] zero-shot head, copied out of the inference mode the text features are made in
    (autograd may not save inference tensors)."""
    return class_features_of_means(class_text_means(zoo, classnames, templates))


def class_features_of_means(means: torch.Tensor) -> torch.Tensor:
    """``zero_shot_class_features`` from the ``class_text_means`` of its classes and templates, made already."""
    return head_of_means(means).T.clone()


class Method(nn.Module):
    """What a fine-tuning method trains, on top of a frozen open_clip model, for one label space."""

    name: ClassVar[str]
    kind: ClassVar[str]  # checkpoint kind of the export
    changes_weights: ClassVar[bool] = False  # whether applying its checkpoint replaces the encoders' weights
    self_contained: ClassVar[bool] = False  # whether its checkpoint applies to any base of its architecture
    # Whether each point of a path between two heads of this kind is normalised: cosine (text) heads are.
    renormalised_path: ClassVar[bool] = False

    def __init__(self, zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str]):
        super().__init__()
        self.zoo = zoo
        self.tokenizer = zoo.tokenizer
        self.model = zoo.model.requires_grad_(False)
        self.classnames = list(classnames)
        self.templates = list(templates)

    @property
    def image_tower_frozen(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_classes] from normalised image features, or from images when the image tower trains."""
        return self.logits_at(inputs, self.solution())

    def solution(self) -> Solution:
        """This method's current point in its path space, differentiable in the trainable parameters."""
        raise NotImplementedError

    def logits_at(self, inputs: torch.Tensor, solution: Solution) -> torch.Tensor:
        """Logits with ``solution`` (any point of the path space, e.g. an interpolation) in place of the method's."""
        raise NotImplementedError

    def path_logits(
        self, inputs: torch.Tensor, start: Solution, end: Solution, alphas: Sequence[float], end_logits: torch.Tensor
    ) -> torch.Tensor:
        """Logits [n_alphas, batch, n_classes] at the points ``(1 − α)·start + α·end`` of a path; ``end_logits`` are
        those at α = 1, which need not be computed again. One forward pass per other point."""
        return torch.stack(
            [
                end_logits if alpha == 1 else self.logits_at(inputs, self.path_point(start, end, alpha))
                for alpha in alphas
            ]
        )

    def path_point(self, start: Solution, end: Solution, alpha: float) -> Solution:
        """The point ``(1 − α)·start + α·end`` of the path space."""
        return {name: torch.lerp(start[name], end[name], alpha) for name in end}

    def parameter_point(self, solution: Solution) -> Solution:
        """What MergeTune's parameter-space surrogate measures the distance of: the solution itself, except for a
        prompt, whose parameters are its context vectors."""
        return solution

    def current_parameter_point(self) -> Solution:
        """The parameter point of the method as it stands."""
        return self.parameter_point(self.solution())

    def squared_distance(self, point: Solution, other: Solution) -> torch.Tensor:
        """``‖point − other‖²`` of two parameter points (the parameter-space surrogate)."""
        return sum(((point[name] - other[name]) ** 2).sum() for name in point)

    def class_text_features(self, solution: Solution) -> torch.Tensor:
        """[n_classes, embed_dim] normalised class text features at ``solution`` (the feature-space surrogate)."""
        raise NotImplementedError

    def load_trained(self, ckpt: CheckpointReader) -> None:
        """Move this (freshly built) method to the solution a checkpoint of its kind holds."""
        raise NotImplementedError

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        """Apply a checkpoint of this kind to ``zoo`` for inference and return the head function that scores with it
        (a fine-tune holds one task, so ``task`` is not needed)."""
        raise NotImplementedError

    @classmethod
    def path_heads(cls, zoo: ZooModel, ends: Sequence[CheckpointReader | None]) -> list[HeadFn]:
        """The head functions of a path's two ends (None: the zero-shot model), which `eval --path` mixes at each
        point; a kind that changes weights walks the weights instead (``TowerMethod.weights_of``)."""
        return [zero_shot_head if end is None else cls.apply(zoo, end) for end in ends]

    @classmethod
    def interpolated(
        cls, zoo: ZooModel, ends: Sequence[CheckpointReader | None], alpha: float
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """The point ``(1 − α)·A + α·B`` of the path between two checkpoints of this kind (None: the zero-shot
        model), as a checkpoint of this kind: its tensors, and what its config adds (`cftool interpolate`)."""
        raise NotImplementedError

    def eval_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def export(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Method options, recorded in the checkpoint's config and needed to rebuild it."""
        return {}

    @property
    def template(self) -> str:
        """The prompt template recorded as ``cftool.template``."""
        return self.templates[0]

    @property
    def training_templates(self) -> list[str]:
        """The templates the training loss's class text features are built from."""
        return self.templates


def class_weight_path_logits(
    scale: torch.Tensor,
    inputs: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    alphas: Sequence[float],
    renormalise: bool,
) -> torch.Tensor:
    """Logits [n_alphas, batch, n_classes] of image features against every point of a path of class weights
    [n_classes, embed_dim] at once: one batched product rather than a Python loop of small ones."""
    weights = torch.tensor(alphas, dtype=end.dtype, device=end.device).view(-1, 1, 1)
    points = start + weights * (end - start)
    if renormalise:
        points = F.normalize(points, dim=-1)
    return scale * torch.einsum("bd,acd->abc", inputs, points)


def copy_into(parameters: dict[str, torch.Tensor], ckpt: CheckpointReader, names: dict[str, str]) -> None:
    """Copy checkpoint tensors (``names``: parameter name → tensor name) into parameters, shapes checked first."""
    expected = {names[name]: tuple(parameters[name].shape) for name in names}
    check_shapes(ckpt.path, ckpt.tensors, expected)
    with torch.no_grad():
        for name, tensor_name in names.items():
            parameters[name].copy_(ckpt[tensor_name])


def _clip_features(
    model: nn.Module, weights: Solution, images: torch.Tensor | None, tokens: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Normalised image and text features of an open_clip CLIP with ``weights`` in place of its own."""
    out = functional_call(model, weights, (images, tokens))
    if isinstance(out, dict):
        return out["image_features"], out["text_features"]
    return out[0], out[1]


def checked_towers(towers: Sequence[str]) -> tuple[str, ...]:
    """``towers`` in the model's order, each image or text."""
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown or not towers:
        raise CftoolError(f"--towers must name {', '.join(TOWERS)} or both (comma-separated), got {','.join(towers)!r}")
    return tuple(t for t in TOWERS if t in towers)


class TowerMethod(Method):
    """Methods that change encoder weights: classes are scored by the (possibly trained) text tower over the task's
    templates, as the zero-shot head does (``train_templates="first"``: over the first only, as ZSCL trains; see
    ``TRAIN_TEMPLATES``). Their solution is the changed weights
    (LoRA's: the factors that make them)."""

    changes_weights = True

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        towers: Sequence[str],
        train_templates: str = TRAIN_TEMPLATE,
    ):
        super().__init__(zoo, classnames, templates)
        if train_templates not in TRAIN_TEMPLATES:
            raise CftoolError(f"--train-templates must be one of {', '.join(TRAIN_TEMPLATES)}, got {train_templates!r}")
        self.towers = checked_towers(towers)
        self.train_templates = train_templates
        tokens = template_tokens(zoo.tokenizer, self.classnames, self.training_templates)
        self.register_buffer("tokens", tokens.to(self.device))
        self.frozen_head: torch.Tensor | None = None
        if TEXT_TOWER not in self.towers:
            self.frozen_head = zero_shot_class_features(zoo, self.classnames, self.training_templates).to(self.device)

    @property
    def training_templates(self) -> list[str]:
        return self.templates[:1] if self.train_templates == FIRST_TEMPLATE else self.templates

    def options(self) -> dict[str, Any]:
        return {"towers": list(self.towers), "train_templates": self.train_templates}

    @property
    def image_tower_frozen(self) -> bool:
        return IMAGE_TOWER not in self.towers

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # The model's own weights are the solution: no need to pass them through functional_call.
        features = inputs if self.image_tower_frozen else self.model.encode_image(inputs, normalize=True)
        head = self.frozen_head
        if head is None:
            head = class_text_head(self.model, self.tokens, len(self.classnames))
        return self.model.logit_scale.exp() * features @ head.T

    def logits_at(self, inputs: torch.Tensor, solution: Solution) -> torch.Tensor:
        images = None if self.image_tower_frozen else inputs
        tokens = None if self.frozen_head is not None else self.tokens
        image_features, text_features = _clip_features(self.model, self._as_parameters(solution), images, tokens)
        features = inputs if image_features is None else image_features
        head = self.frozen_head if text_features is None else mean_per_class(text_features, len(self.classnames))
        return self.model.logit_scale.exp() * features @ head.T

    def class_text_features(self, solution: Solution) -> torch.Tensor:
        if self.frozen_head is not None:
            raise CftoolError(
                "the feature-space surrogate compares class text features, which never change while the text tower "
                "is frozen; use --zs-reg param"
            )
        text_features = _clip_features(self.model, self._as_parameters(solution), None, self.tokens)[1]
        return mean_per_class(text_features, len(self.classnames))

    def _as_parameters(self, solution: Solution) -> Solution:
        """The model parameters to substitute for ``solution`` to take effect."""
        return solution

    def eval_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        return zero_shot_head(zoo, classnames, templates)

    @classmethod
    def weights_of(cls, base: dict[str, torch.Tensor], ckpt: CheckpointReader) -> dict[str, torch.Tensor]:
        """The model weights a checkpoint of this kind stands for, given the ``base`` weights it was made from: a
        point of the path between two such checkpoints interpolates their weights (``interpolate_weights``)."""
        raise NotImplementedError


def interpolate_weights(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Floating-point tensors interpolated in float32 and stored in B's dtype; integer buffers (BatchNorm's step
    counts) taken from B."""
    return {
        name: torch.lerp(a[name].float(), tensor.float(), alpha).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor
        for name, tensor in b.items()
    }
