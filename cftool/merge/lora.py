"""LoRA factors merged into full weights: ``W + (alpha / rank) · B A``."""

from __future__ import annotations

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    return weight + scale * (lora_b @ lora_a).to(weight.dtype)


def lora_config(ckpt: CheckpointReader) -> tuple[int, float, list[str]]:
    """Rank, alpha and target weight names that a `lora` checkpoint's config must record."""
    config = ckpt.header.config or {}
    if not {"rank", "alpha", "targets"} <= config.keys():
        raise CftoolError(
            f"{ckpt.path}: a lora checkpoint needs rank, alpha and targets in cftool.config; re-create it"
        )
    return int(config["rank"]), float(config["alpha"]), list(config["targets"])


def merged_lora_state(state: dict[str, torch.Tensor], ckpt: CheckpointReader) -> dict[str, torch.Tensor]:
    """Full weights from base weights ``state`` and a `lora` checkpoint (its config names rank, alpha and targets)."""
    rank, alpha, targets = lora_config(ckpt)
    scale = alpha / rank
    merged = dict(state)
    for name in targets:
        if name not in merged:
            raise CftoolError(f"{ckpt.path}: LoRA target {name!r} is not a weight of the base model; check --zs")
        merged[name] = merge_lora(merged[name], ckpt[f"{name}.lora_A"], ckpt[f"{name}.lora_B"], scale)
    return merged
