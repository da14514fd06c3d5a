"""Model specs (`--zs`) and loading them through open_clip's own factory.

A spec is one of:
  * ``tiny`` — the embedded model: open_clip config ``cftool-tiny`` plus the weights shipped in the package;
  * ``ARCH`` or ``ARCH:TAG`` — an open_clip name (``ViT-B/16`` spelling accepted), default tag ``openai``;
  * ``ARCH:PATH`` — an open_clip architecture with weights from a local file: an open_clip state dict, OpenAI's
    release (TorchScript or its state dict, built with QuickGELU as OpenAI trained it) or a cftool `model` file;
  * ``hf-hub:org/name`` and ``local-dir:FOLDER`` — as open_clip understands them;
  * ``PATH`` — a cftool ``model`` file: it holds every weight and records the architecture it was built under
    (and the preprocessing, where only a hub's config says it).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import open_clip
import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import Header, check_shapes, open_checkpoint, tensors_sha256
from cftool.zoo.base import (
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    MODEL_CONFIGS,
    TINY,
    TINY_ARCH,
    TINY_WEIGHTS,
    arch_of,
    architecture,
    is_cftool_file,
    is_named_schema,
    model_file_architecture,
    names_weights_file,
    plain_weights,
    weights_file_canonical,
)
from cftool.zoo.fetch import cached_hub_folder, cached_tag_weights, ensure_reachable

DEFAULT_TAG = "openai"

open_clip.add_model_config(MODEL_CONFIGS)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--zs` value. ``canonical`` is what checkpoints record as ``cftool.base``."""

    arch: str  # open_clip model name, or the hf-hub:…/local-dir:… identifier
    tag: str | None = None  # pretrained tag known to open_clip (for a `model` file: the tag of its base)
    weights_file: Path | None = None  # local weights (plain or cftool `model` file)

    @property
    def canonical(self) -> str:
        if self.weights_file is not None:
            return weights_file_canonical(self.arch, self.weights_file)
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
    if is_named_schema(spec):
        if spec.startswith(LOCAL_DIR_PREFIX) and not Path(spec[len(LOCAL_DIR_PREFIX) :]).is_dir():
            raise CftoolError(f"--zs {spec!r}: no such folder; local-dir: names a folder with open_clip_config.json")
        if spec in (HF_HUB_PREFIX, LOCAL_DIR_PREFIX):
            raise CftoolError(f"--zs {spec!r}: name the model after the colon, e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B")
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
    """A local file given alone must be a cftool `model` checkpoint: only its metadata names the architecture.

    The file holds every weight, so where its own base came from (a tag, or a weights file that may since have
    moved) matters only for the tag's preprocessing; a hub base's preprocessing is recorded in the file.
    """
    if path.is_file() and not is_cftool_file(path):
        raise CftoolError(
            f"--zs {path}: a plain weights file does not name its architecture; "
            f"use --zs ARCH:{path} (e.g. ViT-B-16:{path}), or a cftool model file"
        )
    with open_checkpoint(path, kind="model") as ckpt:
        base = ckpt.header.base
    arch = arch_of(base)
    _, _, tag = base.partition(":")
    own_tag = tag if tag and not names_weights_file(tag) and not is_named_schema(base) else None
    return ModelSpec(arch, tag=own_tag, weights_file=path)


@dataclass
class ZooModel:
    """An open_clip model with the preprocessing, tokenizer and model config that belong to it."""

    spec: ModelSpec
    model: open_clip.CLIP
    preprocess: Callable
    tokenizer: Callable
    architecture: dict | None  # recorded as ``cftool.base_arch``; None where only open_clip knows it

    @cached_property
    def weights_sha256(self) -> str:
        """Content hash of the weights, recorded as ``cftool.base_sha256`` by everything derived from them."""
        return tensors_sha256(self.model.state_dict())

    @property
    def hub_preprocess(self) -> dict | None:
        """The preprocessing config files record where only a hub's config says it (``hf-hub:`` and ``local-dir:``
        bases), so that a `model` file of such a base is rebuilt without the hub; None for the other bases."""
        if not is_named_schema(self.spec.arch):
            return None
        return json.loads(json.dumps(open_clip.get_model_preprocess_cfg(self.model)))  # tuples as JSON has them

    def base_header(self, kind: str, **fields) -> Header:
        return Header(
            kind=kind, base=self.spec.canonical, base_sha256=self.weights_sha256, base_arch=self.architecture,
            base_preprocess=self.hub_preprocess, **fields,
        )  # fmt: skip

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
        state, arch_config, recorded_preprocess = _read_weights(spec.arch, spec.weights_file)
        if is_named_schema(spec.arch) and arch_config and recorded_preprocess is not None:
            zoo = _create_recorded(spec, arch_config, recorded_preprocess)
        else:
            zoo = _create(spec, None, arch_config, **_tag_preprocess(spec))
        zoo.load_state_dict(state, spec.weights_file)
    elif is_named_schema(spec.arch):
        zoo = _create_named(spec)
    else:
        zoo = _create_tagged(spec)
    zoo.model.to(device).eval()
    return zoo


def _tag_preprocess(spec: ModelSpec) -> dict:
    """The normalisation a pretrained tag was trained with, applied without downloading anything."""
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else {}
    return {
        "image_mean": cfg.get("mean"),
        "image_std": cfg.get("std"),
        "image_interpolation": cfg.get("interpolation"),
        "image_resize_mode": cfg.get("resize_mode"),
    }


def _create_tagged(spec: ModelSpec) -> ZooModel:
    """``ARCH:TAG``: with the tag's activation (open_clip itself only warns when OpenAI's tags meet a GELU
    config), from the cache when it holds the weights, else downloaded once the host answers."""
    pretrained_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    arch_config = architecture(spec.arch, quick_gelu=bool(pretrained_cfg.get("quick_gelu")))
    cached = cached_tag_weights(pretrained_cfg)
    if cached is None:
        ensure_reachable(pretrained_cfg, f"weights for --zs {spec.canonical}")
    return _create(spec, str(cached) if cached else spec.tag, arch_config, **_tag_preprocess(spec))


def _create_named(spec: ModelSpec) -> ZooModel:
    """``hf-hub:`` (its cached snapshot read as a local folder when complete) and ``local-dir:``."""
    name = spec.arch
    if name.startswith(HF_HUB_PREFIX):
        folder = cached_hub_folder(name[len(HF_HUB_PREFIX) :])
        if folder is None:
            ensure_reachable(None, f"the config and weights of --zs {name}")
        else:
            name = f"{LOCAL_DIR_PREFIX}{folder}"
    return _create(spec, None, architecture(name), model_name=name)


def _create_recorded(spec: ModelSpec, arch_config: dict, preprocess: dict) -> ZooModel:
    """A `model` file of an ``hf-hub:``/``local-dir:`` base, built from the architecture and preprocessing it records,
    as open_clip builds a local folder's config: the file holds every weight, so neither the hub nor the folder is
    read (a tokenizer that lives on the hub still does)."""
    with tempfile.TemporaryDirectory(prefix="cftool-config-") as folder:
        config = {"model_cfg": arch_config, "preprocess_cfg": preprocess}
        (Path(folder) / "open_clip_config.json").write_text(json.dumps(config))
        return _create(spec, None, arch_config, model_name=f"{LOCAL_DIR_PREFIX}{folder}", load_weights=False)


def _create(
    spec: ModelSpec, pretrained: str | None, arch_config: dict | None, model_name: str | None = None, **overrides
) -> ZooModel:
    model_name = model_name or spec.arch
    quick_gelu = bool(arch_config and arch_config["quick_gelu"])
    try:
        with _open_clip_logging_silenced():
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, force_quick_gelu=quick_gelu, **overrides
            )
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as err:
        raise CftoolError(
            f"weights for --zs {spec.canonical} are not in the local cache and could not be downloaded "
            f"({' '.join(str(err).split())[:160]}); use --zs tiny (embedded), or pass a local file: "
            f"--zs ARCH:/path/to/weights.pt, --zs local-dir:FOLDER or a cftool model file"
        ) from err
    return ZooModel(spec, model, preprocess, open_clip.get_tokenizer(model_name), arch_config)


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
    arch_config = architecture(TINY_ARCH)
    if TINY_WEIGHTS.is_file():
        zoo = _create(spec, None, arch_config)
        zoo.load_state_dict(_read_weights(TINY_ARCH, TINY_WEIGHTS)[0], TINY_WEIGHTS)
        return zoo
    log.warning("no shipped weights at %s: `tiny` is randomly initialised", TINY_WEIGHTS)
    # Seeded, so that every process builds the same stand-in and files made from it keep a matching base hash.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _create(spec, None, arch_config)


def _read_weights(arch: str, path: Path) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """A cftool `model` file (with the architecture and hub preprocessing it records), or a plain open_clip/OpenAI
    state dict (which records neither)."""
    if is_cftool_file(path):
        with open_checkpoint(path, kind="model") as ckpt:
            return ckpt.load_all(), model_file_architecture(ckpt), ckpt.header.base_preprocess
    return (*plain_weights(arch, path), None)
