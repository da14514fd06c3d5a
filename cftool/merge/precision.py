"""The dtypes merging computes in, and the scales they can hold: shared by the merge methods, `delta`, `decouple`,
the engine and training's checks of its numbers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from cftool.errors import CftoolError


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the methods compute in for deltas of ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def check_scale(flag: str, scale: float) -> None:
    """A scale multiplies every entry: NaN or Inf would write a model of NaN and Inf."""
    if not math.isfinite(scale):
        raise CftoolError(f"{flag} {scale}: the scale must be a finite number, e.g. 0.3")


def fits_float32(value: float) -> bool:
    """Whether a number that multiplies float32 values is one: a larger one is Inf there, whatever it multiplies."""
    return math.isfinite(value) and abs(value) <= torch.finfo(torch.float32).max


def refuse_scale_overflow(flag: str, scale: float, dtypes: Iterable[torch.dtype], output: Path) -> None:
    """Checked before any work, once the output is known: a scale that the dtype the work is done in cannot hold is
    Inf there, and makes every entry it multiplies Inf (or NaN, times 0)."""
    for dtype in dtypes:
        if abs(scale) > torch.finfo(work_dtype(dtype)).max:
            raise CftoolError(
                f"{output}: {flag} {scale:g} would overflow {work_dtype(dtype)} to Inf; "
                f"make {flag} smaller in magnitude"
            )
