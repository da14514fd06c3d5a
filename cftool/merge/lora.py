"""LoRA factors merged into full weights: ``W + (alpha / rank) · B A``; a `lora` checkpoint's factors, and a
factor-space unified set's experts (ConDU-LoRA), merge through the same ``merged_factors``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, finite
from cftool.merge.precision import fits_float32


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    return weight + scale * (lora_b @ lora_a).to(weight.dtype)


FACTORS = ("lora_A", "lora_B")


def combined_factors(
    targets: Sequence[str], terms: Sequence[tuple[float, Callable[[str], torch.Tensor]]]
) -> dict[str, torch.Tensor]:
    """The factors of ``Σ w_i · s·B_i A_i`` as one LoRA at the same scale ``s``, exactly: each term's factors
    (``factor(NAME)`` gives ``{target}.lora_A`` or ``_B``) side by side, rank ``Σ r_i``, its B scaled by ``w_i``."""
    combined = {}
    for name in targets:
        combined[f"{name}.lora_A"] = torch.cat([factor(f"{name}.lora_A") for _, factor in terms], dim=0)
        combined[f"{name}.lora_B"] = torch.cat([weight * factor(f"{name}.lora_B") for weight, factor in terms], dim=1)
    return combined


@dataclass(frozen=True)
class LoRAShape:
    """What turns a set of factors into weights: rank, alpha (scale ``alpha / rank``) and the adapted weights."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def factor_names(self) -> list[str]:
        """``{target}.lora_A`` and ``{target}.lora_B`` of every target, in the targets' order."""
        return [f"{target}.{factor}" for target in self.targets for factor in FACTORS]

    def to_json(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def lora_shape(path: Path, config: dict | None, shapes: dict[str, tuple[int, ...]]) -> LoRAShape:
    """Rank, alpha and target weight names that ``config`` must record, checked against the factors' ``shapes``:
    every target has ``lora_A`` [rank, in] and ``lora_B`` [out, rank]."""
    config = config or {}
    if not {"rank", "alpha", "targets"} <= config.keys():
        raise CftoolError(f"{path}: a lora checkpoint needs rank, alpha and targets in cftool.config; re-create it")
    rank, alpha, targets = config["rank"], config["alpha"], config["targets"]
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
        raise CftoolError(f"{path}: cftool.config rank is {rank!r}, not a positive integer; re-create the file")
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and fits_float32(alpha)):
        raise CftoolError(
            f"{path}: cftool.config alpha is {alpha!r}, not a finite number float32 holds; re-create the file"
        )
    if not (isinstance(targets, list) and all(isinstance(name, str) for name in targets)):
        raise CftoolError(f"{path}: cftool.config targets is not a list of weight names; re-create the file")
    for name in targets:
        a, b = shapes.get(f"{name}.lora_A"), shapes.get(f"{name}.lora_B")
        if a is None or b is None:
            raise CftoolError(f"{path}: LoRA target {name!r} has no lora_A/lora_B factors; re-create the file")
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            raise CftoolError(
                f"{path}: the factors of {name!r} are {list(a)} and {list(b)}, not [{rank}, in] and "
                f"[out, {rank}] for rank {rank}; re-create the file"
            )
    return LoRAShape(rank, float(alpha), tuple(targets))


def lora_config(ckpt: CheckpointReader) -> tuple[int, float, list[str]]:
    """Rank, alpha and target weight names of a `lora` checkpoint (``lora_shape``)."""
    shape = lora_shape(ckpt.path, ckpt.header.config, {name: info.shape for name, info in ckpt.tensors.items()})
    return shape.rank, shape.alpha, list(shape.targets)


def merged_factors(
    state: dict[str, torch.Tensor], path: Path, shape: LoRAShape, factor: Callable[[str], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Full weights from base weights ``state`` and factors (``factor(NAME)`` gives ``{target}.lora_A`` or ``_B``):
    ``W + scale · B A`` for every target, the base's weight elsewhere."""
    merged = dict(state)
    for name in shape.targets:
        if name not in merged:
            raise CftoolError(f"{path}: LoRA target {name!r} is not a weight of the base model; check --zs")
        lora_a, lora_b = factor(f"{name}.lora_A"), factor(f"{name}.lora_B")
        out_features, in_features = lora_b.shape[0], lora_a.shape[1]
        if tuple(merged[name].shape) != (out_features, in_features):
            raise CftoolError(
                f"{path}: the factors of {name!r} make a [{out_features}, {in_features}] update, but the base "
                f"weight is {list(merged[name].shape)}; check --zs"
            )
        merged[name] = merge_lora(merged[name], lora_a, lora_b, shape.scale)
        if not finite(merged[name]):  # factors, each finite as read, can still merge into Inf
            raise CftoolError(
                f"{path}: the factors of {name!r} merge into values beyond {merged[name].dtype} (Inf); "
                "re-create the file"
            )
    return merged


def merged_lora_state(state: dict[str, torch.Tensor], ckpt: CheckpointReader) -> dict[str, torch.Tensor]:
    """Full weights from base weights ``state`` and a `lora` checkpoint (its config names rank, alpha and targets)."""
    rank, alpha, targets = lora_config(ckpt)
    return merged_factors(state, ckpt.path, LoRAShape(rank, alpha, tuple(targets)), ckpt.__getitem__)
