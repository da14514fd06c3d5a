"""Model zoo: `--zs` specs, the embedded `tiny` model, loading through open_clip."""

from cftool.zoo.models import TINY, ModelSpec, ZooModel, load_model, parse_model_spec

__all__ = ["TINY", "ModelSpec", "ZooModel", "load_model", "parse_model_spec"]
