"""Metrics of docs/design.md §5.4."""

from __future__ import annotations

import math

import torch


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if labels.numel() == 0:
        return float("nan")
    return (logits.argmax(dim=-1) == labels).sum().item() * 100.0 / labels.numel()


def harmonic_mean(base: float, novel: float) -> float:
    """Base-to-novel HM = 2BN/(B+N); 0 when both are 0."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def loss_barrier(alphas: list[float], losses: list[float]) -> tuple[float, float]:
    """The loss barrier of a linear path and the α where it is: the most the loss rises above the straight line
    between its ends, ``max_α loss(α) − ((1 − α)·loss(0) + α·loss(1))`` (0 at α = 0 when nothing rises above the
    line, as on a convex path); NaN for both when a loss is (a class half with no images)."""
    if any(math.isnan(loss) for loss in losses):
        return math.nan, math.nan
    first, last = losses[0], losses[-1]
    rise, alpha = max(
        ((loss - ((1 - alpha) * first + alpha * last), alpha) for alpha, loss in zip(alphas, losses, strict=True)),
        key=lambda pair: pair[0],
    )
    return rise, alpha


def mtil_metrics(matrix: list[list[float]]) -> dict[str, list[float | None] | float | None]:
    """Transfer, Average and Last of an MTIL accuracy matrix (ZSCL's protocol).

    ``matrix[t][j]`` is the accuracy on task ``j`` after session ``t`` (both 0-based, in training order), one row
    per session so far: ``T`` rows of ``n`` tasks, ``T ≤ n``. Per task: ``transfer[j]`` is the mean of the sessions
    before ``j`` was learned (None for the first task, which has none), ``average[j]`` the mean over every session,
    ``last[j]`` the final session's. The ``*_mean`` values average over tasks, Transfer over those that have one.
    """
    if not matrix or any(len(row) != len(matrix[0]) for row in matrix) or len(matrix) > len(matrix[0]):
        raise ValueError(
            "an MTIL matrix has one row per session, each with one accuracy per task, and no more sessions than tasks"
        )
    sessions, n_tasks = len(matrix), len(matrix[0])
    transfer = [_mean([matrix[t][j] for t in range(min(j, sessions))]) for j in range(n_tasks)]
    average = [_mean([matrix[t][j] for t in range(sessions)]) for j in range(n_tasks)]
    last = list(matrix[-1])
    return {
        "transfer": transfer,
        "average": average,
        "last": last,
        "transfer_mean": _mean([value for value in transfer if value is not None]),
        "average_mean": _mean(average),
        "last_mean": _mean(last),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
