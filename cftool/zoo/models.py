"""Model specs (`--zs`) and loading them through open_clip's own factory.

A spec is one of:
  * ``tiny`` — the embedded model: open_clip config ``cftool-tiny`` plus the weights shipped in the package;
  * ``ARCH`` or ``ARCH:TAG`` — an open_clip name (``ViT-B/16`` spelling accepted), default tag ``openai``;
  * ``ARCH:PATH`` — an open_clip architecture with weights from a local file;
  * ``hf-hub:org/name`` — as open_clip understands it;
  * ``PATH`` — a cftool ``model`` file (its metadata names the architecture).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import open_clip
import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import Header, check_shapes, open_checkpoint, read_header, tensors_sha256
from cftool.io.foreign import read_state_dict
from cftool.zoo.base import HF_HUB_PREFIX, TINY, TINY_ARCH, TINY_WEIGHTS, names_weights_file

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
DEFAULT_TAG = "openai"

open_clip.add_model_config(MODEL_CONFIGS)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--zs` value. ``canonical`` is what checkpoints record as ``cftool.base``."""

    arch: str  # open_clip model name, or the hf-hub:… identifier
    tag: str | None = None  # pretrained tag known to open_clip
    weights_file: Path | None = None  # local weights (plain or cftool `model` file)

    @property
    def canonical(self) -> str:
        if self.weights_file is not None:
            return f"{self.arch}:{self.weights_file}"
        if self.arch == TINY_ARCH:
            return TINY
        return f"{self.arch}:{self.tag}" if self.tag else self.arch


def parse_model_spec(spec: str) -> ModelSpec:
    """Turn a `--zs` string into a ModelSpec without loading anything."""
    spec = spec.strip()
    if not spec:
        raise CftoolError("--zs is empty; name a model such as `tiny`, `ViT-B/16` or `ViT-B-16:laion2b_s34b_b88k`")
    if spec == TINY:
        return ModelSpec(TINY_ARCH)
    if spec.startswith(HF_HUB_PREFIX):
        return ModelSpec(spec)
    name, _, tag = spec.partition(":")
    arch = name.replace("/", "-")
    if arch not in open_clip.list_models():
        path = Path(spec)
        if path.suffix in {".safetensors", ".pt", ".pth", ".bin"} or path.exists():
            return _spec_of_model_file(path)
        raise CftoolError(
            f"unknown model '{name}' in --zs {spec!r}; use `tiny`, an open_clip name "
            f"(e.g. ViT-B/16, see open_clip.list_models()), `hf-hub:org/name` or a cftool model file"
        )
    tag = tag or DEFAULT_TAG
    if names_weights_file(tag):
        weights = Path(tag)
        if not weights.is_file():
            raise CftoolError(f"--zs {spec!r}: weights file {weights} does not exist")
        return ModelSpec(arch, weights_file=weights)
    if not open_clip.get_pretrained_cfg(arch, tag):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise CftoolError(f"--zs {spec!r}: open_clip knows no pretrained tag '{tag}' for {arch} (known: {known})")
    return ModelSpec(arch, tag=tag)


def _spec_of_model_file(path: Path) -> ModelSpec:
    """A local file given alone must be a cftool `model` checkpoint: only its metadata names the architecture."""
    with open_checkpoint(path, kind="model") as ckpt:
        base = parse_model_spec(ckpt.header.base)
    return ModelSpec(base.arch, tag=base.tag, weights_file=path)


@dataclass
class ZooModel:
    """An open_clip model with the preprocessing and tokenizer that belong to it."""

    spec: ModelSpec
    model: open_clip.CLIP
    preprocess: Callable
    tokenizer: Callable

    @cached_property
    def weights_sha256(self) -> str:
        """Content hash of the weights, recorded as ``cftool.base_sha256`` by everything derived from them."""
        return tensors_sha256(self.model.state_dict())

    def base_header(self, kind: str, **fields) -> Header:
        return Header(kind=kind, base=self.spec.canonical, base_sha256=self.weights_sha256, **fields)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
        """Load full weights, refusing (one line) any name or shape that does not fit this architecture."""
        expected = {name: tuple(t.shape) for name, t in self.model.state_dict().items()}
        check_shapes(source, {name: tuple(t.shape) for name, t in state_dict.items()}, expected)
        self.model.load_state_dict(state_dict)
        self.__dict__.pop("weights_sha256", None)


def load_model(spec: str | ModelSpec, device: str | torch.device = "cpu") -> ZooModel:
    """Build the model a spec names, in eval mode, on ``device``."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if spec.weights_file is None and spec.arch == TINY_ARCH:
        zoo = _create_tiny(spec)
    elif spec.weights_file is not None:
        zoo = _create(spec, pretrained=None, **_tag_overrides(spec))
        zoo.load_state_dict(_read_weights(spec.weights_file), spec.weights_file)
    else:
        zoo = _create(spec, pretrained=spec.tag)
    zoo.model.to(device).eval()
    return zoo


def _tag_overrides(spec: ModelSpec) -> dict:
    """What a pretrained tag changes in the architecture (QuickGELU, normalisation), applied without downloading."""
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else {}
    return {
        "force_quick_gelu": bool(cfg.get("quick_gelu")),
        "image_mean": cfg.get("mean"),
        "image_std": cfg.get("std"),
        "image_interpolation": cfg.get("interpolation"),
        "image_resize_mode": cfg.get("resize_mode"),
    }


def _create(spec: ModelSpec, pretrained: str | None, **overrides) -> ZooModel:
    try:
        with _open_clip_logging_silenced():
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=pretrained, **overrides)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise CftoolError(
            f"weights for --zs {spec.canonical} are not in the local cache and could not be downloaded; "
            f"use --zs tiny (embedded), or pass a local file: --zs ARCH:/path/to/weights.pt or a cftool model file"
        ) from err
    return ZooModel(spec, model, preprocess, open_clip.get_tokenizer(spec.arch))


@contextmanager
def _open_clip_logging_silenced():
    """open_clip logs through the root logger: a warning that cftool's own weight loading makes moot, and errors
    that cftool turns into its one-line message. Neither belongs on the user's terminal."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _create_tiny(spec: ModelSpec) -> ZooModel:
    if TINY_WEIGHTS.is_file():
        zoo = _create(spec, pretrained=None)
        zoo.load_state_dict(_read_weights(TINY_WEIGHTS), TINY_WEIGHTS)
        return zoo
    log.warning("no shipped weights at %s: `tiny` is randomly initialised", TINY_WEIGHTS)
    # Seeded, so that every process builds the same stand-in and files made from it keep a matching base hash.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _create(spec, pretrained=None)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A cftool `model` file, or a plain open_clip/OpenAI state dict (safetensors, or a weights-only pickle)."""
    if path.suffix == ".safetensors" and "cftool.format" in read_header(path)[1]:
        with open_checkpoint(path, kind="model") as ckpt:
            return ckpt.load_all()
    return read_state_dict(path)
