"""The base weights files are made against, as io and merge see them (the zoo's reader satisfies it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from cftool.io.checkpoint import Header


class BaseModel(Protocol):
    """The base weights `delta`, `delta apply` and `decouple --as model` work against, read one tensor at a time
    (``cftool.zoo.base_weights.BaseWeights``: merging needs nothing of the zoo beyond this)."""

    canonical: str
    layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
    architecture: dict | None

    @property
    def sha256(self) -> str: ...

    def header(self, kind: str, **fields) -> Header: ...

    def __getitem__(self, name: str) -> torch.Tensor: ...
