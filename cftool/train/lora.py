"""LoRA on open_clip's attention and MLP projections, as a parametrisation ``W + (alpha / rank) · B A``.

In transformer towers it adapts every residual block; in a ResNet image tower (``ModifiedResNet``, as in RN50 and
`tiny`) the attention pool is the only attention, so it adapts that pool's projections and leaves convolutions alone.

A parametrisation rather than wrapped layers because ``nn.MultiheadAttention`` reads ``in_proj_weight`` directly;
the same ``merge_lora`` computes the weight in training and when a `lora` checkpoint is merged into full weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from cftool.merge.lora import merge_lora

LORA_TARGETS = (
    # per transformer block: the fused q/k/v and output projections of attention, and the two MLP layers
    "attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight",
    # a ResNet tower's attention pool
    "attnpool.q_proj.weight", "attnpool.k_proj.weight", "attnpool.v_proj.weight", "attnpool.c_proj.weight",
)
TOWER_PREFIXES = {"image": "visual.", "text": "transformer.resblocks."}


def lora_parameter_names(model: nn.Module, towers: tuple[str, ...]) -> list[str]:
    """open_clip parameter names that LoRA adapts in ``towers``, in the model's order."""
    prefixes = tuple(TOWER_PREFIXES[tower] for tower in towers)
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes) and name.endswith(LORA_TARGETS)]


class LoRAFactors(nn.Module):
    """The trainable pair of one weight: A [rank, in] Kaiming-initialised, B [out, rank] zero, so training starts
    exactly at the base weights."""

    def __init__(self, weight: torch.Tensor, rank: int, scale: float):
        super().__init__()
        out_features, in_features = weight.shape
        self.scale = scale
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=weight.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=weight.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return merge_lora(weight, self.lora_A, self.lora_B, self.scale)


def attach_lora(model: nn.Module, names: list[str], rank: int, scale: float) -> dict[str, LoRAFactors]:
    """Parametrise each named weight of ``model`` in place; returns the factors by parameter name."""
    factors = {}
    for name in names:
        module_path, _, tensor_name = name.rpartition(".")
        module = model.get_submodule(module_path)
        factors[name] = LoRAFactors(getattr(module, tensor_name), rank, scale)
        parametrize.register_parametrization(module, tensor_name, factors[name])
    return factors
