"""The four fine-tuning methods, each a small module around the open_clip model of a ``ZooModel``.

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

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cftool.encode.text import (
    CONTEXT_PLACEHOLDER,
    class_text_head,
    context_prompts,
    embedded_context,
    encode_text_with_context,
    mean_per_class,
    template_tokens,
)
from cftool.encode.zero_shot import PROMPTS_PER_PASS, HeadFn, zero_shot_head
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, check_shapes
from cftool.kinds.lora import (
    DEFAULT_INIT,
    DEFAULT_TARGETS,
    attach_lora,
    check_lora_options,
    lora_parameter_names,
    merged_weights_recomputed,
)
from cftool.merge.lora import FACTORS, combined_factors, merged_lora_state
from cftool.merge.methods import fits_float32
from cftool.zoo import ZooModel

TOWERS = ("image", "text")
COOP_INIT = "a photo of a"
RANDOM_INIT = "random"
# CoOp initialises a random context from N(0, 0.02²).
RANDOM_CONTEXT_STD = 0.02
# The mean cosine between a trained context and the embeddings of COOP_INIT above which it started from those words.
WORD_START_COSINE = 0.5

# A method's point on MergeTune's paths (see the module docstring), by tensor name.
Solution = dict[str, torch.Tensor]
# Which of a task's templates the text head of a tower method's training loss is built from: ZSCL's MTIL training
# (mtil/src/models/finetune.py:103 and :215, ConDU's src/models/finetune.py:112 and :151) encodes one prompt per class,
# ``dataset.template``, which is ``templates[0]`` (mtil/src/datasets/collections.py:61-64); evaluation averages all.
TRAIN_TEMPLATES = ("all", "first")
# What each protocol's reference trains with when --train-templates is not given (`mtil:` data: ZSCL's first template).
PROTOCOL_TRAIN_TEMPLATES = {"mtil": "first"}


def default_train_templates(source: str) -> str:
    """The training templates of the reference protocol a `--data` source belongs to (``mtil:…``), else all."""
    return PROTOCOL_TRAIN_TEMPLATES.get(source.partition(":")[0], "all")


# A prompt's config key for the share of the zero-shot head mixed into its class features (`cftool interpolate`).
ZERO_SHOT_WEIGHT = "zero_shot_weight"


def zero_shot_weight(ckpt: CheckpointReader) -> float:
    """The share of the zero-shot head a prompt records (0 if none), a number float32 holds: it weighs a head."""
    weight = (ckpt.header.config or {}).get(ZERO_SHOT_WEIGHT, 0.0)
    if not (isinstance(weight, int | float) and not isinstance(weight, bool) and fits_float32(weight)):
        raise CftoolError(
            f"{ckpt.path}: cftool.config {ZERO_SHOT_WEIGHT} is {weight!r}, not a finite number; re-create the file "
            "with `cftool interpolate`"
        )
    return float(weight)


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
    changes_weights: ClassVar[bool] = False  # whether applying its checkpoint replaces the encoders' weights

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


def _class_weight_path_logits(
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


def _copy_into(parameters: dict[str, torch.Tensor], ckpt: CheckpointReader, names: dict[str, str]) -> None:
    """Copy checkpoint tensors (``names``: parameter name → tensor name) into parameters, shapes checked first."""
    expected = {names[name]: tuple(parameters[name].shape) for name in names}
    check_shapes(ckpt.path, ckpt.tensors, expected)
    with torch.no_grad():
        for name, tensor_name in names.items():
            parameters[name].copy_(ckpt[tensor_name])


# Long enough that tokenizing a prompt never cuts it, to measure how many tokens it takes.
_UNCUT_CONTEXT = 1024


def check_prompts_fit(tokenizer: Callable, classnames: Sequence[str], n_ctx: int, context_length: int) -> None:
    """The tokenizer cuts what does not fit the text tower's context, so a long context would silently drop the
    class names (every class would then read the same): refuse it in one line."""
    if not classnames:
        return
    lengths = (tokenizer(context_prompts(classnames, n_ctx), context_length=_UNCUT_CONTEXT) != 0).sum(dim=1)
    longest = int(lengths.argmax())
    if int(lengths[longest]) > context_length:
        raise CftoolError(
            f"{n_ctx} context vectors and the class name {classnames[longest]!r} take {int(lengths[longest])} tokens, "
            f"more than the text tower's {context_length}; use a smaller --n-ctx"
        )


class CoOp(Method):
    """Learned context vectors before each class name; both encoders frozen. Its solution is the text encoder's
    unnormalised class features, so a path between prompts interpolates those and normalises each point afterwards,
    as MergeTune's code does (trainers/kgcoop_coop_LMC.py:512-517 interpolates the TextEncoder outputs of the two
    prompts' contexts; :405 normalises the point before scoring)."""

    name, kind, default_optimizer, default_lr = "coop", "prompt", "sgd", 2e-3

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        n_ctx: int | None = None,
        ctx_init: str = COOP_INIT,
        ctx: torch.Tensor | None = None,
        class_specific: bool = False,
    ):
        super().__init__(zoo, classnames, templates)
        width = self.model.token_embedding.weight.shape[1]
        if ctx is None:
            ctx = self._initial_context(zoo, n_ctx, ctx_init, width, class_specific)
        self.ctx_init = ctx_init
        self.ctx = nn.Parameter(ctx.float().to(self.device))
        self.register_buffer("tokens", self._tokens(self.classnames), persistent=False)

    def _initial_context(
        self, zoo: ZooModel, n_ctx: int | None, ctx_init: str, width: int, class_specific: bool
    ) -> torch.Tensor:
        """[n_ctx, width], or with ``class_specific`` (CoOp's CSC) [n_classes, n_ctx, width]: one context per class,
        each drawn on its own or starting at the words."""
        per_class = (len(self.classnames),) if class_specific else ()
        if ctx_init == RANDOM_INIT:
            return torch.randn(*per_class, n_ctx or len(COOP_INIT.split()), width) * RANDOM_CONTEXT_STD
        ctx = embedded_context(self.model, zoo.tokenizer, ctx_init)
        if n_ctx is not None and n_ctx != len(ctx):
            raise CftoolError(
                f"--n-ctx {n_ctx} does not match --ctx-init {ctx_init!r}, which is {len(ctx)} tokens; "
                f"drop --n-ctx or use --ctx-init random"
            )
        return ctx.expand(*per_class, *ctx.shape).clone()  # a tensor of its own: the steps update it in place

    @staticmethod
    def inferred_init(zoo: ZooModel, ctx: torch.Tensor) -> str:
        """How a context trained elsewhere (a CoOp/KgCoOp file, which does not say) most likely started: from the
        hand-written words when it has their length and each vector still points the way its word's embedding does
        (CoOp's CTX_INIT), else at random (CoOp's default of 16 vectors; its CSC always starts at random).
        A random start of N(0, 0.02²) has a cosine of about ±1/√width with any embedding, far below the threshold."""
        words = embedded_context(zoo.model, zoo.tokenizer, COOP_INIT).cpu()
        if ctx.shape[-2] != len(words):
            return RANDOM_INIT
        cosine = F.cosine_similarity(ctx.detach().float().cpu().reshape(-1, *words.shape), words, dim=-1)
        return COOP_INIT if float(cosine.mean()) > WORD_START_COSINE else RANDOM_INIT

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    def _tokens(self, classnames: Sequence[str]) -> torch.Tensor:
        if self.ctx.dim() == 3 and classnames and len(classnames) != len(self.ctx):
            raise CftoolError(
                f"a class-specific prompt (CoOp's CSC) holds a context for each of its {len(self.ctx)} classes and "
                f"cannot score {len(classnames)} classes; evaluate it on the classes it was trained on"
            )
        check_prompts_fit(self.tokenizer, classnames, self.n_ctx, self.model.context_length)
        return self.tokenizer(context_prompts(classnames, self.n_ctx)).to(self.device)

    def class_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.unnormalised_class_features(tokens), dim=-1)

    def unnormalised_class_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return encode_text_with_context(self.model, tokens, self.ctx)

    def solution(self) -> Solution:
        return {"class_features": self.unnormalised_class_features(self.tokens)}

    def logits_at(self, inputs: torch.Tensor, solution: Solution) -> torch.Tensor:
        return self.model.logit_scale.exp() * inputs @ self.class_text_features(solution).T

    def path_logits(
        self, inputs: torch.Tensor, start: Solution, end: Solution, alphas: Sequence[float], end_logits: torch.Tensor
    ) -> torch.Tensor:
        scale, key = self.model.logit_scale.exp(), "class_features"
        return _class_weight_path_logits(scale, inputs, start[key], end[key], alphas, renormalise=True)

    def parameter_point(self, solution: Solution) -> Solution:
        return {"ctx": self.ctx}

    def current_parameter_point(self) -> Solution:
        return {"ctx": self.ctx}  # without encoding every class prompt, as its solution does

    def class_text_features(self, solution: Solution) -> torch.Tensor:
        return F.normalize(solution["class_features"], dim=-1)

    def load_trained(self, ckpt: CheckpointReader) -> None:
        _copy_into({"ctx": self.ctx}, ckpt, {"ctx": "ctx"})

    @classmethod
    def of_checkpoint(cls, zoo: ZooModel, ckpt: CheckpointReader) -> CoOp:
        """The prompt a checkpoint holds (its context alone: a share of the zero-shot head is ``apply``'s)."""
        width = zoo.model.token_embedding.weight.shape[1]
        found = ckpt.tensors["ctx"].shape if "ctx" in ckpt else ()
        # A shared context [n_ctx, width], or a class-specific one [n_classes, n_ctx, width].
        check_shapes(ckpt.path, ckpt.tensors, {"ctx": (*found[:-1], width) if len(found) in (2, 3) else (0, width)})
        config = ckpt.header.config or {}
        return cls(zoo, ckpt.header.classnames or [], [], ctx_init=config.get("ctx_init", COOP_INIT), ctx=ckpt["ctx"])

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        prompt = cls.of_checkpoint(zoo, ckpt)
        zero_shot_share = zero_shot_weight(ckpt)
        if not zero_shot_share:
            return prompt.eval_head

        def mixed_with_zero_shot(zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
            ends = prompt.eval_head(zoo, classnames, templates), zero_shot_head(zoo, classnames, templates)
            return F.normalize(torch.lerp(*ends, zero_shot_share), dim=0)

        return mixed_with_zero_shot

    @torch.no_grad()
    def eval_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        # A prompt generalises to any class names: that is what base-to-novel measures.
        return F.normalize(self.unnormalised_head(zoo, classnames, templates), dim=0)

    @torch.no_grad()
    def unnormalised_head(self, zoo: ZooModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """``eval_head`` before normalising: the path space of prompts (a ``HeadFn`` too). Encoded
        ``PROMPTS_PER_PASS`` classes at a time, as zero-shot heads are (ImageNet has 1,000)."""
        tokens, parts = self._tokens(classnames), []
        for start in range(0, len(tokens), PROMPTS_PER_PASS):
            ctx = self.ctx if self.ctx.dim() == 2 else self.ctx[start : start + PROMPTS_PER_PASS]
            parts.append(encode_text_with_context(self.model, tokens[start : start + PROMPTS_PER_PASS], ctx).float())
        return torch.cat(parts).T.cpu()

    def export(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx.detach().cpu().contiguous()}

    def options(self) -> dict[str, Any]:
        return {
            "n_ctx": self.n_ctx,
            "ctx_init": self.ctx_init,
            "class_specific": self.ctx.dim() == 3,
            "class_token_position": "end",
        }

    @property
    def template(self) -> str:
        words = self.ctx_init if self.ctx_init != RANDOM_INIT else " ".join([CONTEXT_PLACEHOLDER] * self.n_ctx)
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

    def solution(self) -> Solution:
        return {"head.weight": self.head.weight}

    def logits_at(self, inputs: torch.Tensor, solution: Solution) -> torch.Tensor:
        return self.model.logit_scale.exp() * inputs @ solution["head.weight"].T

    def path_logits(
        self, inputs: torch.Tensor, start: Solution, end: Solution, alphas: Sequence[float], end_logits: torch.Tensor
    ) -> torch.Tensor:
        scale, key = self.model.logit_scale.exp(), "head.weight"
        return _class_weight_path_logits(scale, inputs, start[key], end[key], alphas, renormalise=False)

    def class_text_features(self, solution: Solution) -> torch.Tensor:
        return F.normalize(solution["head.weight"], dim=-1)

    def load_trained(self, ckpt: CheckpointReader) -> None:
        _copy_into({"head.weight": self.head.weight}, ckpt, {"head.weight": "head.weight"})

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        classnames = ckpt.header.classnames or []
        check_shapes(ckpt.path, ckpt.tensors, {"head.weight": (len(classnames), zoo.model.text_projection.shape[-1])})
        return cls(zoo, classnames, [], weight=ckpt["head.weight"]).eval_head

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
        raise CftoolError(f"--towers must name image, text or both (comma-separated), got {','.join(towers)!r}")
    return tuple(t for t in TOWERS if t in towers)


class _TowerMethod(Method):
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
        train_templates: str = "all",
    ):
        super().__init__(zoo, classnames, templates)
        if train_templates not in TRAIN_TEMPLATES:
            raise CftoolError(f"--train-templates must be one of {', '.join(TRAIN_TEMPLATES)}, got {train_templates!r}")
        self.towers = checked_towers(towers)
        self.train_templates = train_templates
        tokens = template_tokens(zoo.tokenizer, self.classnames, self.training_templates)
        self.register_buffer("tokens", tokens.to(self.device))
        self.frozen_head: torch.Tensor | None = None
        if "text" not in self.towers:
            self.frozen_head = zero_shot_class_features(zoo, self.classnames, self.training_templates).to(self.device)

    @property
    def training_templates(self) -> list[str]:
        return self.templates[:1] if self.train_templates == "first" else self.templates

    def options(self) -> dict[str, Any]:
        return {"towers": list(self.towers), "train_templates": self.train_templates}

    @property
    def image_tower_frozen(self) -> bool:
        return "image" not in self.towers

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


class LoRA(_TowerMethod):
    """Its solution is its factors (``{target}.lora_A`` and ``.lora_B`` of every adapted weight, as exported), which
    stand for the merged weights ``W + (alpha / rank) · B A``: paths and the distance to zero-shot are those of the
    model's weights, computed from factors, so that a point's merged weights exist only inside the forward of the
    layer that uses them (the parametrisation merges each weight there, as in fine-tuning), never for every layer at
    once. A point ``(1 − α)·W2 + α·W`` of the weight path is itself a LoRA: both ends' factors side by side.

    ``lora_targets`` and ``lora_init`` choose the adapted weights and the factors' start (``cftool.kinds.lora``);
    ConDU-LoRA's are ``mlp`` and ``condu`` with rank 64 and alpha 8 (scale 1/√64). A tower that holds none of the
    targets (a ResNet image tower under ``mlp``) is left frozen, so its image features are encoded once."""

    name, kind, default_optimizer, default_lr = "lora", "lora", "adamw", 1e-3

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        rank: int = 8,
        alpha: float = 16.0,
        towers: Sequence[str] = TOWERS,
        lora_targets: str = DEFAULT_TARGETS,
        lora_init: str = DEFAULT_INIT,
        train_templates: str = "all",
    ):
        check_lora_options(lora_targets, lora_init)
        targets = lora_parameter_names(zoo.model, checked_towers(towers), lora_targets)
        if not targets:
            raise CftoolError(
                f"--lora-targets {lora_targets} finds no weight to adapt in --towers {','.join(towers)} of this model "
                "(a ResNet image tower has no MLP); choose other towers or targets"
            )
        adapted = [tower for tower in towers if any(tower_of(name) == tower for name in targets)]
        super().__init__(zoo, classnames, templates, adapted, train_templates)
        self.rank, self.alpha, self.lora_targets, self.lora_init = rank, alpha, lora_targets, lora_init
        self.targets = targets
        self.factors = attach_lora(self.model, self.targets, rank, alpha / rank, lora_init)

    def solution(self) -> Solution:
        return {f"{name}.{part}": getattr(factors, part) for name, factors in self.factors.items() for part in FACTORS}

    # Every pass through the adapted towers keeps recipes, not merged weights, for its backward (cftool.kinds.lora).
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with merged_weights_recomputed():
            return super().forward(inputs)

    def logits_at(self, inputs: torch.Tensor, solution: Solution) -> torch.Tensor:
        with merged_weights_recomputed():
            return super().logits_at(inputs, solution)

    def class_text_features(self, solution: Solution) -> torch.Tensor:
        with merged_weights_recomputed():
            return super().class_text_features(solution)

    def path_point(self, start: Solution, end: Solution, alpha: float) -> Solution:
        return combined_factors(self.targets, [(1 - alpha, start.__getitem__), (alpha, end.__getitem__)])

    def squared_distance(self, point: Solution, other: Solution) -> torch.Tensor:
        """``‖W(point) − W(other)‖²`` over the adapted weights, from factors: the difference ``s·(B A − B' A')`` is
        the LoRA ``[B, −B'] [A; A']``, whose squared norm ``s²·Σ (BᵀB) ⊙ (A Aᵀ)`` needs only rank × rank products
        (in float64, where the difference of two nearby points would otherwise cancel away)."""
        difference = combined_factors(self.targets, [(1.0, point.__getitem__), (-1.0, other.__getitem__)])
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for name in self.targets:
            a, b = difference[f"{name}.lora_A"].double(), difference[f"{name}.lora_B"].double()
            total = total + ((b.T @ b) * (a @ a.T)).sum()
        return ((self.alpha / self.rank) ** 2 * total).to(next(iter(point.values())).dtype)

    def _as_parameters(self, solution: Solution) -> Solution:
        # The parametrisation merges ``W + s·B A`` inside each layer's forward from whatever factors it holds, so a
        # point's factors (of any rank) are substituted for the trained ones.
        substitutes = {}
        for key, factor in solution.items():
            name, _, part = key.rpartition(".")
            module_path, _, tensor_name = name.rpartition(".")
            substitutes[f"{module_path}.parametrizations.{tensor_name}.0.{part}"] = factor
        return substitutes

    def load_trained(self, ckpt: CheckpointReader) -> None:
        parameters, names = {}, {}
        for name, factors in self.factors.items():
            for part in ("lora_A", "lora_B"):
                parameters[f"{name}.{part}"] = getattr(factors, part)
                names[f"{name}.{part}"] = f"{name}.{part}"
        _copy_into(parameters, ckpt, names)

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        zoo.load_state_dict(merged_lora_state(zoo.model.state_dict(), ckpt), ckpt.path)
        return zero_shot_head

    def export(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, factors in self.factors.items():
            tensors[f"{name}.lora_A"] = factors.lora_A.detach().cpu().contiguous()
            tensors[f"{name}.lora_B"] = factors.lora_B.detach().cpu().contiguous()
        return tensors

    def options(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "lora_targets": self.lora_targets,
            "lora_init": self.lora_init,
            "targets": self.targets,
            **super().options(),
        }


class Full(_TowerMethod):
    """Every weight of the chosen towers; the logit scale stays as pretrained."""

    name, kind, default_optimizer, default_lr = "full", "model", "adamw", 1e-5

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        towers: Sequence[str] = TOWERS,
        train_templates: str = "all",
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

    def export(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().contiguous() for name, t in self.model.state_dict().items()}


METHODS: dict[str, type[Method]] = {m.name: m for m in (CoOp, LinearHead, LoRA, Full)}


def build_method(name: str, zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str], **options) -> Method:
    if name not in METHODS:
        raise CftoolError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](zoo, classnames, templates, **options)
