"""The `lora` kind: LoRA on open_clip's attention and MLP projections, as a parametrisation
``W + (alpha / rank) · B A``, and the method that trains it.

In transformer towers it adapts every residual block; in a ResNet image tower (``ModifiedResNet``, as in RN50) the
attention pool is the only attention, so it adapts that pool's projections and leaves convolutions alone.

Two choices the reference ConDU-LoRA makes differently from cftool's defaults are options here:

* which weights (``--lora-targets``): ``attention+mlp`` (default) or ``mlp``, the two MLP layers ``c_fc`` and
  ``c_proj`` of every transformer block only, as ConDU's ``LoRALinear`` replaces them (ConDU
  ``clip/model_lora.py:187-189``; its ResNet attention pool holds factors too, ``:73-76``, but reads the plain
  weights in its forward, ``:86-95``, so they never train: ``mlp`` leaves a ResNet tower alone);
* how the factors start (``--lora-init``): ``zero-b`` (default; A Kaiming-uniform, B = 0, so training starts at the
  base weights) or ``condu``, both factors ``randn · 0.01`` (``clip/model_lora.py:15-16``, A ``[in, rank]`` and B
  ``[rank, out]`` there, stored transposed here).

ConDU's scale is ``1/√rank`` (``clip/model_lora.py:17``): ``--alpha √rank`` gives it (rank 64: ``--alpha 8``).
A parametrisation rather than wrapped layers because ``nn.MultiheadAttention`` reads ``in_proj_weight`` directly;
the same ``merge_lora`` computes the weight in training and when a `lora` checkpoint is merged into full weights.

A layer that multiplies by its merged weight keeps that weight for the backward pass, so a forward through the model
would hold every adapted layer's merged weight at once (ViT-B/16, both towers: about 0.5 GB per forward, and
MergeTune runs one per path point). Under ``merged_weights_recomputed`` autograd keeps the recipe instead (the base
weight and the factors, which live anyway) and merges again in backward: one small ``B A`` product per layer.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from cftool.encode.zero_shot import HeadFn, zero_shot_head
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader
from cftool.io.header import LORA_KIND
from cftool.kinds.method import Solution, TowerMethod, checked_towers, copy_into, tower_of
from cftool.merge.lora import FACTORS, combined_factors, lora_config, merge_lora, merged_lora_state
from cftool.options import (
    IMAGE_TOWER,
    LORA,
    LORA_ALPHA,
    LORA_ATTENTION_MLP,
    LORA_CONDU_INIT,
    LORA_INIT,
    LORA_INITS,
    LORA_MLP,
    LORA_RANK,
    LORA_TARGETS,
    TEXT_TOWER,
    TOWERS,
    TRAIN_TEMPLATE,
)
from cftool.zoo import ZooModel

# Weight-name endings by group: a transformer block's fused q/k/v and output projections of attention and a ResNet
# tower's attention pool; a transformer block's two MLP layers.
ATTENTION_TARGETS = (
    "attn.in_proj_weight",
    "attn.out_proj.weight",
    "attnpool.q_proj.weight",
    "attnpool.k_proj.weight",
    "attnpool.v_proj.weight",
    "attnpool.c_proj.weight",
)
MLP_TARGETS = ("mlp.c_fc.weight", "mlp.c_proj.weight")
# The weight endings of each of LORA_TARGET_GROUPS.
TARGET_GROUPS = {LORA_ATTENTION_MLP: ATTENTION_TARGETS + MLP_TARGETS, LORA_MLP: MLP_TARGETS}
CONDU_INIT_STD = 0.01  # ConDU clip/model_lora.py:15-16
TOWER_PREFIXES = {IMAGE_TOWER: "visual.", TEXT_TOWER: "transformer.resblocks."}


def check_lora_options(targets: str, init: str) -> None:
    if targets not in TARGET_GROUPS:
        raise CftoolError(f"--lora-targets {targets!r}: expected {' or '.join(TARGET_GROUPS)}")
    if init not in LORA_INITS:
        raise CftoolError(f"--lora-init {init!r}: expected {' or '.join(LORA_INITS)}")


def lora_parameter_names(model: nn.Module, towers: tuple[str, ...], targets: str = LORA_TARGETS) -> list[str]:
    """open_clip parameter names that LoRA adapts in ``towers`` (``targets``: a key of TARGET_GROUPS), in the
    model's order."""
    check_lora_options(targets, LORA_INIT)
    prefixes = tuple(TOWER_PREFIXES[tower] for tower in towers)
    endings = TARGET_GROUPS[targets]
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes) and name.endswith(endings)]


class LoRAFactors(nn.Module):
    """The trainable pair of one weight: A [rank, in] and B [out, rank], started as ``init`` (one of LORA_INITS) says
    (module doc)."""

    def __init__(self, weight: torch.Tensor, rank: int, scale: float, init: str = LORA_INIT):
        super().__init__()
        out_features, in_features = weight.shape
        self.scale = scale
        if init == LORA_CONDU_INIT:
            # Drawn in the reference's shapes and order (A [in, rank], then B [rank, out]), on the CPU so that a seed
            # gives the same factors on every device.
            a = torch.randn(in_features, rank) * CONDU_INIT_STD
            b = torch.randn(rank, out_features) * CONDU_INIT_STD
            self.lora_A = nn.Parameter(a.T.contiguous().to(weight.device))
            self.lora_B = nn.Parameter(b.T.contiguous().to(weight.device))
            return
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=weight.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=weight.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        merged = merge_lora(weight, self.lora_A, self.lora_B, self.scale)
        recipes = _RECIPES.get()
        if recipes is not None and merged.is_contiguous():
            recipes[merged.untyped_storage().data_ptr()] = (
                weakref.ref(merged),
                (weight, self.lora_A, self.lora_B, self.scale),
            )
        return merged


# The merged weights made under ``merged_weights_recomputed``, by storage: each weight's recipe while it lives.
_RECIPES: ContextVar[dict[int, tuple[weakref.ref, tuple]] | None] = ContextVar("lora_recipes", default=None)


@contextmanager
def merged_weights_recomputed() -> Iterator[None]:
    """Within it, what autograd saves of a merged weight (the weight, or a view of it such as the transpose a matmul
    keeps) is replaced by its recipe and rebuilt in backward (module doc); gradients are unchanged."""

    def pack(tensor: torch.Tensor):
        entry = recipes.get(tensor.untyped_storage().data_ptr())
        # While the merged weight lives its storage cannot hold anything else: a tensor on it is the weight or a view.
        if entry is None or entry[0]() is None:
            return tensor
        return entry[1], (tensor.shape, tensor.stride(), tensor.storage_offset())

    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        (weight, lora_a, lora_b, scale), (shape, stride, offset) = packed
        with torch.no_grad():
            return merge_lora(weight, lora_a, lora_b, scale).as_strided(shape, stride, offset)

    recipes: dict[int, tuple[weakref.ref, tuple]] = {}
    token = _RECIPES.set(recipes)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _RECIPES.reset(token)


def attach_lora(
    model: nn.Module, names: list[str], rank: int, scale: float, init: str = LORA_INIT
) -> dict[str, LoRAFactors]:
    """Parametrise each named weight of ``model`` in place; returns the factors by parameter name."""
    factors = {}
    for name in names:
        module_path, _, tensor_name = name.rpartition(".")
        module = model.get_submodule(module_path)
        factors[name] = LoRAFactors(getattr(module, tensor_name), rank, scale, init)
        parametrize.register_parametrization(module, tensor_name, factors[name])
    return factors


class LoRA(TowerMethod):
    """Its solution is its factors (``{target}.lora_A`` and ``.lora_B`` of every adapted weight, as exported), which
    stand for the merged weights ``W + (alpha / rank) · B A``: paths and the distance to zero-shot are those of the
    model's weights, computed from factors, so that a point's merged weights exist only inside the forward of the
    layer that uses them (the parametrisation merges each weight there, as in fine-tuning), never for every layer at
    once. A point ``(1 − α)·W2 + α·W`` of the weight path is itself a LoRA: both ends' factors side by side.

    ``lora_targets`` and ``lora_init`` choose the adapted weights and the factors' start (module doc);
    ConDU-LoRA's are ``mlp`` and ``condu`` with rank 64 and alpha 8 (scale 1/√64). A tower that holds none of the
    targets (a ResNet image tower under ``mlp``) is left frozen, so its image features are encoded once."""

    name, kind = LORA.name, LORA_KIND

    def __init__(
        self,
        zoo: ZooModel,
        classnames: Sequence[str],
        templates: Sequence[str],
        rank: int = LORA_RANK,
        alpha: float = LORA_ALPHA,
        towers: Sequence[str] = TOWERS,
        lora_targets: str = LORA_TARGETS,
        lora_init: str = LORA_INIT,
        train_templates: str = TRAIN_TEMPLATE,
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

    # Every pass through the adapted towers keeps recipes, not merged weights, for its backward (module doc).
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
        copy_into(parameters, ckpt, names)

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        zoo.load_state_dict(merged_lora_state(zoo.model.state_dict(), ckpt), ckpt.path)
        return zero_shot_head

    @classmethod
    def weights_of(cls, base: dict[str, torch.Tensor], ckpt: CheckpointReader) -> dict[str, torch.Tensor]:
        return merged_lora_state(base, ckpt)

    @classmethod
    def interpolated(
        cls, zoo: ZooModel, ends: Sequence[CheckpointReader | None], alpha: float
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """Exact: ``Σ w_i · s·B_i A_i`` is one LoRA whose factors are the ends' side by side (B_i scaled by w_i), of
        rank r_a + r_b at the same scale s; with the zero-shot model at one end, just the other's B scaled."""
        present = [(r, w) for r, w in zip(ends, (1 - alpha, alpha), strict=True) if r is not None]
        configs = [lora_config(r) for r, _ in present]
        scales = {lora_alpha / rank for rank, lora_alpha, _ in configs}
        if len(scales) > 1 or len({tuple(t) for _, _, t in configs}) > 1:
            raise CftoolError("interpolate: the two LoRA checkpoints adapt different weights or use different scales")
        tensors = combined_factors(configs[0][2], [(w, r.__getitem__) for r, w in present])
        rank = sum(rank for rank, _, _ in configs)
        scale = configs[0][1] / configs[0][0]
        return tensors, {"rank": rank, "alpha": scale * rank}

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
