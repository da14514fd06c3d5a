"""Metrics of DESIGN §5.4."""

from __future__ import annotations

import torch


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if labels.numel() == 0:
        return float("nan")
    return (logits.argmax(dim=-1) == labels).sum().item() * 100.0 / labels.numel()


def harmonic_mean(base: float, novel: float) -> float:
    """Base-to-novel HM = 2BN/(B+N); 0 when both are 0."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
