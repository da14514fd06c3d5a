"""The four fine-tuning methods, each a small module around the open_clip model of a ``ZooModel``.

A method exposes its trainable parameters (everything else is frozen), ``forward`` from normalised image
features (frozen image tower) or images to logits, ``export`` of what it learned as checkpoint tensors, and
``eval_head`` (a ``HeadFn``) so that any label space can be evaluated with it. ``load_for_eval`` rebuilds the
same from a checkpoint file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from cftool.errors import CftoolError
from cftool.evaluate import HeadFn, zero_shot_head
from cftool.io.checkpoint import CheckpointReader, check_shapes
from cftool.merge.lora import merged_lora_state
from cftool.train.lora import attach_lora, lora_parameter_names
from cftool.train.text import (
    CONTEXT_PLACEHOLDER,
    class_text_head,
    context_prompts,
    embedded_context,
    encode_text_with_context,
    template_tokens,
)
from cftool.zoo import ZooModel

TOWERS = ("image", "text")
COOP_INIT = "a photo of a"
RANDOM_INIT = "random"
# CoOp initialises a random context from N(0, 0.02²).
RANDOM_CONTEXT_STD = 0.02


def tower_of(parameter_name: str) -> str | None:
    """Which tower an open_clip CLIP parameter belongs to; None for the shared logit scale."""
    if parameter_name.startswith("visual."):
        return "image"
    if parameter_name in ("logit_scale", "logit_bias"):
        return None
    return "text"


def zero_shot_class_features(zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[n_classes, embed_dim] zero-shot head, copied out of the inference mode ``zero_shot_head`` runs in (autograd
    may not save inference tensors)."""
    return zero_shot_head(zoo, classnames, templates).T.clone()


class Method(nn.Module):
    """What a fine-tuning method trains, on top of a frozen open_clip model, for one label space."""

    name: ClassVar[str]
    kind: ClassVar[str]  # checkpoint kind of the export
    default_optimizer: ClassVar[str]
    default_lr: ClassVar[float]

    def __init__(self, zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str]):
        super().__init__()
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
        features = inputs if self.image_tower_frozen else self.model.encode_image(inputs, normalize=True)
        return self.logits(features)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
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


class CoOp(Method):
    """Learned context vectors before each class name; both encoders frozen."""

    name, kind, default_optimizer, default_lr = "coop", "prompt", "sgd", 2e-3

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        n_ctx: int | None = None,
        ctx_init: str = COOP_INIT,
        ctx: torch.Tensor | None = None,
    ):
        super().__init__(zoo, classnames, templates)
        width = self.model.token_embedding.weight.shape[1]
        if ctx is None:
            ctx = self._initial_context(zoo, n_ctx, ctx_init, width)
        self.ctx_init = ctx_init
        self.ctx = nn.Parameter(ctx.float().to(self.device))
        self.register_buffer("tokens", self._tokens(self.classnames), persistent=False)

    def _initial_context(self, zoo: ZooModel, n_ctx: int | None, ctx_init: str, width: int) -> torch.Tensor:
        if ctx_init == RANDOM_INIT:
            return torch.randn(n_ctx or len(COOP_INIT.split()), width) * RANDOM_CONTEXT_STD
        ctx = embedded_context(self.model, zoo.tokenizer, ctx_init)
        if n_ctx is not None and n_ctx != len(ctx):
            raise CftoolError(
                f"--n-ctx {n_ctx} does not match --ctx-init {ctx_init!r}, which is {len(ctx)} tokens; "
                f"drop --n-ctx or use --ctx-init random"
            )
        return ctx

    def _tokens(self, classnames: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(context_prompts(classnames, len(self.ctx))).to(self.device)

    def class_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(encode_text_with_context(self.model, tokens, self.ctx), dim=-1)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale.exp() * image_features @ self.class_features(self.tokens).T

    @torch.no_grad()
    def eval_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        # A prompt generalises to any class names: that is what base-to-novel measures.
        return self.class_features(self._tokens(classnames)).float().T.cpu()

    def export(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx.detach().cpu().contiguous()}

    def options(self) -> dict[str, Any]:
        return {"n_ctx": len(self.ctx), "ctx_init": self.ctx_init, "class_token_position": "end"}

    @property
    def template(self) -> str:
        words = self.ctx_init if self.ctx_init != RANDOM_INIT else " ".join([CONTEXT_PLACEHOLDER] * len(self.ctx))
        return f"{words} {{}}."


class LinearHead(Method):
    """A linear classifier on normalised image features, initialised from the zero-shot head (unit rows) and scaled
    by the base model's logit scale, so it starts with the zero-shot model's logits; both encoders frozen.

    The weight is stored without the scale: its rows stay comparable with the zero-shot text features (MergeTune's
    zero-shot counterpart), and an optimiser's steps are relative to unit-norm rows.
    """

    name, kind, default_optimizer, default_lr = "head", "head", "adamw", 1e-3

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

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale.exp() * self.head(image_features)

    @torch.no_grad()
    def eval_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        if list(classnames) != self.classnames:
            raise CftoolError(
                f"a linear head is tied to its {len(self.classnames)} training classes "
                f"({', '.join(self.classnames[:3])}, ...) but the data has {len(classnames)} "
                f"({', '.join(classnames[:3])}, ...); evaluate it on the task and classes it was trained on"
            )
        return self.head.weight.float().T.cpu()

    def export(self) -> dict[str, torch.Tensor]:
        return {"head.weight": self.head.weight.detach().cpu().contiguous()}


class _TowerMethod(Method):
    """Methods that change encoder weights: classes are scored by the (possibly trained) text tower over the task's
    templates, as the zero-shot head does."""

    def __init__(self, zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str], towers: Sequence[str]):
        super().__init__(zoo, classnames, templates)
        unknown = sorted(set(towers) - set(TOWERS))
        if unknown or not towers:
            raise CftoolError(f"--towers must name image, text or both (comma-separated), got {','.join(towers)!r}")
        self.towers = tuple(t for t in TOWERS if t in towers)
        self.register_buffer("tokens", template_tokens(zoo.tokenizer, self.classnames, self.templates).to(self.device))
        self.frozen_head: torch.Tensor | None = None
        if "text" not in self.towers:
            self.frozen_head = zero_shot_class_features(zoo, self.classnames, self.templates).to(self.device)

    @property
    def image_tower_frozen(self) -> bool:
        return "image" not in self.towers

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        head = self.frozen_head
        if head is None:
            head = class_text_head(self.model, self.tokens, len(self.classnames))
        return self.model.logit_scale.exp() * image_features @ head.T

    def eval_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        return zero_shot_head(zoo, classnames, templates)


class LoRA(_TowerMethod):
    name, kind, default_optimizer, default_lr = "lora", "lora", "adamw", 1e-3

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        rank: int = 8,
        alpha: float = 16.0,
        towers: Sequence[str] = TOWERS,
    ):
        super().__init__(zoo, classnames, templates, towers)
        self.rank, self.alpha = rank, alpha
        self.targets = lora_parameter_names(self.model, self.towers)
        self.factors = attach_lora(self.model, self.targets, rank, alpha / rank)

    def export(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, factors in self.factors.items():
            tensors[f"{name}.lora_A"] = factors.lora_A.detach().cpu().contiguous()
            tensors[f"{name}.lora_B"] = factors.lora_B.detach().cpu().contiguous()
        return tensors

    def options(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "towers": list(self.towers), "targets": self.targets}


class Full(_TowerMethod):
    """Every weight of the chosen towers; the logit scale stays as pretrained."""

    name, kind, default_optimizer, default_lr = "full", "model", "adamw", 1e-5

    def __init__(
        self, zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str], towers: Sequence[str] = TOWERS
    ):
        super().__init__(zoo, classnames, templates, towers)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(tower_of(name) in self.towers)

    def export(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().contiguous() for name, t in self.model.state_dict().items()}

    def options(self) -> dict[str, Any]:
        return {"towers": list(self.towers)}


METHODS: dict[str, type[Method]] = {m.name: m for m in (CoOp, LinearHead, LoRA, Full)}
EVAL_KINDS = ("model", "prompt", "head", "lora")


def build_method(name: str, zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str], **options) -> Method:
    if name not in METHODS:
        raise CftoolError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](zoo, classnames, templates, **options)


def load_for_eval(zoo: ZooModel, ckpt: CheckpointReader) -> HeadFn:
    """Apply a checkpoint of any evaluable kind to ``zoo`` (which must hold the base weights for `lora`) and return
    the head function that scores classes with it."""
    header = ckpt.header
    if header.kind == "model":
        zoo.load_state_dict(ckpt.load_all(), ckpt.path)
        return zero_shot_head
    if header.kind == "lora":
        zoo.load_state_dict(merged_lora_state(zoo.model.state_dict(), ckpt), ckpt.path)
        return zero_shot_head
    classnames = header.classnames or []
    if header.kind == "prompt":
        width = zoo.model.token_embedding.weight.shape[1]
        n_ctx = ckpt.tensors["ctx"].shape[0] if "ctx" in ckpt else 0
        check_shapes(ckpt.path, {name: info.shape for name, info in ckpt.tensors.items()}, {"ctx": (n_ctx, width)})
        ctx_init = (header.config or {}).get("ctx_init", COOP_INIT)
        return CoOp(zoo, classnames, [], ctx_init=ctx_init, ctx=ckpt["ctx"]).eval_head
    if header.kind == "head":
        embed_dim = zoo.model.text_projection.shape[-1]
        found = {name: info.shape for name, info in ckpt.tensors.items()}
        check_shapes(ckpt.path, found, {"head.weight": (len(classnames), embed_dim)})
        return LinearHead(zoo, classnames, [], weight=ckpt["head.weight"]).eval_head
    raise CftoolError(f"{ckpt.path}: cannot evaluate a {header.kind!r} checkpoint; expected {', '.join(EVAL_KINDS)}")
