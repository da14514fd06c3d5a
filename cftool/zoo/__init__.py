"""Model zoo: `--zs` specs, the embedded `tiny` model, loading through open_clip.

open_clip is imported on first use of these names (PEP 562), so that `cftool.zoo.base` serves the commands that
only move tensors without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cftool.zoo.models import TINY, ModelSpec, ZooModel, load_model, parse_model_spec

__all__ = ["TINY", "ModelSpec", "ZooModel", "load_model", "parse_model_spec"]


def __getattr__(name: str):
    if name in __all__:
        from cftool.zoo import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
