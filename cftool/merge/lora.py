"""LoRA factors merged into full weights: ``W + (alpha / rank) · B A``."""

from __future__ import annotations

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, finite
from cftool.merge.methods import fits_float32


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    return weight + scale * (lora_b @ lora_a).to(weight.dtype)


def lora_config(ckpt: CheckpointReader) -> tuple[int, float, list[str]]:
    """Rank, alpha and target weight names that a `lora` checkpoint's config must record, checked against its
    factors: every target has ``lora_A`` [rank, in] and ``lora_B`` [out, rank]."""
    config = ckpt.header.config or {}
    if not {"rank", "alpha", "targets"} <= config.keys():
        raise CftoolError(
            f"{ckpt.path}: a lora checkpoint needs rank, alpha and targets in cftool.config; re-create it"
        )
    rank, alpha, targets = config["rank"], config["alpha"], config["targets"]
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
        raise CftoolError(f"{ckpt.path}: cftool.config rank is {rank!r}, not a positive integer; re-create the file")
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and fits_float32(alpha)):
        raise CftoolError(
            f"{ckpt.path}: cftool.config alpha is {alpha!r}, not a finite number float32 holds; re-create the file"
        )
    if not (isinstance(targets, list) and all(isinstance(name, str) for name in targets)):
        raise CftoolError(f"{ckpt.path}: cftool.config targets is not a list of weight names; re-create the file")
    for name in targets:
        a, b = ckpt.tensors.get(f"{name}.lora_A"), ckpt.tensors.get(f"{name}.lora_B")
        if a is None or b is None:
            raise CftoolError(f"{ckpt.path}: LoRA target {name!r} has no lora_A/lora_B factors; re-create the file")
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise CftoolError(
                f"{ckpt.path}: the factors of {name!r} are {list(a.shape)} and {list(b.shape)}, not [{rank}, in] and "
                f"[out, {rank}] for rank {rank}; re-create the file"
            )
    return rank, float(alpha), list(targets)


def merged_lora_state(state: dict[str, torch.Tensor], ckpt: CheckpointReader) -> dict[str, torch.Tensor]:
    """Full weights from base weights ``state`` and a `lora` checkpoint (its config names rank, alpha and targets)."""
    rank, alpha, targets = lora_config(ckpt)
    scale = alpha / rank
    merged = dict(state)
    for name in targets:
        if name not in merged:
            raise CftoolError(f"{ckpt.path}: LoRA target {name!r} is not a weight of the base model; check --zs")
        out_features, in_features = ckpt.tensors[f"{name}.lora_B"].shape[0], ckpt.tensors[f"{name}.lora_A"].shape[1]
        if tuple(merged[name].shape) != (out_features, in_features):
            raise CftoolError(
                f"{ckpt.path}: the factors of {name!r} make a [{out_features}, {in_features}] update, but the base "
                f"weight is {list(merged[name].shape)}; check --zs"
            )
        merged[name] = merge_lora(merged[name], ckpt[f"{name}.lora_A"], ckpt[f"{name}.lora_B"], scale)
        if not finite(merged[name]):  # factors, each finite as read, can still merge into Inf
            raise CftoolError(
                f"{ckpt.path}: the factors of {name!r} merge into values beyond {merged[name].dtype} (Inf); "
                "re-create the file"
            )
    return merged
