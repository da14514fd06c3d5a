"""The `prompt` kind: CoOp's learned context vectors before each class name (both encoders frozen), and the share of
the zero-shot head a prompt may be mixed with (`cftool interpolate`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cftool.encode.text import CONTEXT_PLACEHOLDER, context_prompts, embedded_context, encode_text_with_context
from cftool.encode.zero_shot import PROMPTS_PER_PASS, HeadFn, zero_shot_head
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, check_shapes
from cftool.io.header import PROMPT_KIND
from cftool.kinds.method import Method, Solution, class_weight_path_logits, copy_into
from cftool.merge.precision import fits_float32
from cftool.options import COOP, COOP_INIT, RANDOM_INIT
from cftool.zoo import ZooModel

# CoOp initialises a random context from N(0, 0.02²).
RANDOM_CONTEXT_STD = 0.02
# The mean cosine between a trained context and the embeddings of COOP_INIT above which it started from those words.
WORD_START_COSINE = 0.5

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

    name, kind = COOP.name, PROMPT_KIND
    renormalised_path = True

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
        return class_weight_path_logits(scale, inputs, start[key], end[key], alphas, renormalise=True)

    def parameter_point(self, solution: Solution) -> Solution:
        return {"ctx": self.ctx}

    def current_parameter_point(self) -> Solution:
        return {"ctx": self.ctx}  # without encoding every class prompt, as its solution does

    def class_text_features(self, solution: Solution) -> torch.Tensor:
        return F.normalize(solution["class_features"], dim=-1)

    def load_trained(self, ckpt: CheckpointReader) -> None:
        copy_into({"ctx": self.ctx}, ckpt, {"ctx": "ctx"})

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

    @classmethod
    def path_heads(cls, zoo: ZooModel, ends: Sequence[CheckpointReader | None]) -> list[HeadFn]:
        """Between two prompts that hold only a context, the text encoder's unnormalised outputs, as MergeTune's path
        interpolates them; with the zero-shot model at an end (a mean of unit template features, with no
        unnormalised counterpart) or a prompt mixed with the zero-shot head, unit features."""
        if all(end is not None for end in ends) and not any(zero_shot_weight(end) for end in ends):
            return [cls.of_checkpoint(zoo, end).unnormalised_head for end in ends]
        return super().path_heads(zoo, ends)

    @classmethod
    def interpolated(
        cls, zoo: ZooModel, ends: Sequence[CheckpointReader | None], alpha: float
    ) -> tuple[dict[str, torch.Tensor], dict]:
        # The zero-shot end is a head, not a context, so the point is stored as a mix of the two.
        if all(end is not None for end in ends):
            raise CftoolError(
                "interpolate: a point between two prompts is a mix of two prompts' class features, which no single "
                "prompt holds; evaluate it with `cftool eval --path A B`, or interpolate one prompt with zs"
            )
        index = 0 if ends[0] is not None else 1
        prompt = ends[index]
        previous = zero_shot_weight(prompt)
        # The prompt end already holds a share of the zero-shot head; the new point keeps that proportion.
        prompt_share = (1 - alpha, alpha)[index] * (1 - previous)
        return {"ctx": prompt["ctx"]}, {ZERO_SHOT_WEIGHT: 1 - prompt_share}

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
