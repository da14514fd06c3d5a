"""Model specs (`--zs`) and loading them: open_clip's factory builds the architecture, and cftool reads every weights
file itself (``cftool.io.foreign``: no pickle or TorchScript code runs) and loads it strictly, so that a base is
always the weights its spec names, never a model left partly or wholly at its random initialisation.

A spec is one of:
  * ``tiny`` — the embedded model: open_clip config ``cftool-tiny`` plus the weights shipped in the package;
  * ``ARCH`` or ``ARCH:TAG`` — an open_clip name (``ViT-B/16`` spelling accepted), default tag ``openai``;
  * ``ARCH:PATH`` — an open_clip architecture with weights from a local file: an open_clip state dict, OpenAI's
    release (TorchScript or its state dict, built with QuickGELU as OpenAI trained it) or a cftool `model` file;
  * ``hf-hub:org/name`` and ``local-dir:FOLDER`` — as open_clip understands them, the folder's
    ``open_clip_config.json`` checked first (``cftool.zoo.hub_folder``);
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
from cftool.io.foreign import read_state_dict
from cftool.io.header import MODEL_KIND
from cftool.io.remembered_hashes import remembered_sha256
from cftool.zoo.base import (
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    MODEL_CONFIGS,
    TINY,
    TINY_ARCH,
    arch_of,
    architecture,
    installed_tiny_weights,
    is_cftool_file,
    is_named_schema,
    model_file_architecture,
    names_weights_file,
    openai_extras_removed,
    plain_weights,
    weights_file_canonical,
)
from cftool.zoo.fetch import (
    cached_hub_files,
    cached_tag_weights,
    download_hub_files,
    download_tag_weights,
    ensure_reachable,
)
from cftool.zoo.hub_folder import HUB_CONFIG, check_hub_config, local_dir_weights, read_hub_config

DEFAULT_TAG = "openai"

open_clip.add_model_config(MODEL_CONFIGS)


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
        if spec.startswith(HF_HUB_PREFIX):
            _check_repo_id(spec)
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


def _check_repo_id(spec: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec[len(HF_HUB_PREFIX) :])
    except HFValidationError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise CftoolError(
            f"--zs {spec!r}: not a Hugging Face Hub repository id ({detail}); write hf-hub:ORG/NAME, or "
            "local-dir:FOLDER for a model in a local folder"
        ) from None


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
    with open_checkpoint(path, kind=MODEL_KIND) as ckpt:
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
    base_file: Path | None = None  # the file the spec's weights were loaded from, while the model holds them

    @cached_property
    def weights_sha256(self) -> str:
        """Content hash of the weights, recorded as ``cftool.base_sha256`` by everything derived from them (remembered
        for the base's own file while it is unchanged)."""
        if self.base_file is None:
            return tensors_sha256(self.model.state_dict())
        return remembered_sha256(self.base_file, self.spec.canonical, lambda: tensors_sha256(self.model.state_dict()))

    @property
    def hub_preprocess(self) -> dict | None:
        """The preprocessing config files record where only a hub's config says it (``hf-hub:`` and ``local-dir:``
        bases), so that a `model` file of such a base is rebuilt without the hub; None for the other bases."""
        return _hub_preprocess(self.spec, self.model)

    def base_header(self, kind: str, **fields) -> Header:
        return Header(
            kind=kind,
            base=self.spec.canonical,
            base_sha256=self.weights_sha256,
            base_arch=self.architecture,
            base_preprocess=self.hub_preprocess,
            **fields,
        )

    def load_state_dict(
        self, state_dict: dict[str, torch.Tensor], source: str | Path, *, is_base: bool = False
    ) -> None:
        """Load full weights, refusing (one line) any name or shape that does not fit this architecture; ``is_base``:
        they are the spec's own, read from the file ``source``."""
        expected = {name: tuple(t.shape) for name, t in self.model.state_dict().items()}
        check_shapes(source, {name: tuple(t.shape) for name, t in state_dict.items()}, expected)
        self.model.load_state_dict(state_dict)
        self.__dict__.pop("weights_sha256", None)
        self.base_file = Path(source) if is_base else None


def load_model(spec: str | ModelSpec, device: str | torch.device = "cpu") -> ZooModel:
    """Build the model a spec names, in eval mode, on ``device``.

    cftool reads every weights file itself (safetensors, a weights-only pickle, or a TorchScript archive read as
    data) and loads it strictly, so that a base is always the weights it names; open_clip only builds the
    architecture."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if spec.weights_file is None and spec.arch == TINY_ARCH:
        zoo = _create_tiny(spec)
    elif spec.weights_file is not None:
        state, arch_config, recorded_preprocess = _read_weights(spec.arch, spec.weights_file)
        if is_named_schema(spec.arch) and arch_config and recorded_preprocess is not None:
            zoo = _create_recorded(spec, arch_config, recorded_preprocess)
        else:
            zoo = _create(spec, arch_config, **_tag_preprocess(spec))
        zoo.load_state_dict(state, spec.weights_file, is_base=True)
    else:
        zoo = _create_published(spec)
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


@dataclass(frozen=True)
class _Published:
    """Where a pretrained tag's or a hub model's weights are, read as data, and how open_clip builds their model."""

    weights: Path
    state: dict[str, torch.Tensor]  # as the file holds them, OpenAI's extra entries removed
    arch_config: dict | None
    build: dict  # _create's keyword arguments: model_name, built_from and the preprocessing overrides


def _published(spec: ModelSpec) -> _Published:
    return _published_named(spec) if is_named_schema(spec.arch) else _published_tagged(spec)


def _published_tagged(spec: ModelSpec) -> _Published:
    """``ARCH:TAG``: with the tag's activation (open_clip itself only warns when OpenAI's tags meet a GELU
    config), from the cache when it holds the weights, else downloaded once the host answers."""
    pretrained_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    weights = cached_tag_weights(pretrained_cfg)
    if weights is None:
        what = f"weights for --zs {spec.canonical}"
        ensure_reachable(pretrained_cfg, what)
        weights = download_tag_weights(pretrained_cfg, what)
    state, openai_format = openai_extras_removed(read_state_dict(weights))
    arch_config = architecture(spec.arch, quick_gelu=bool(pretrained_cfg.get("quick_gelu")) or openai_format)
    return _Published(weights, state, arch_config, _tag_preprocess(spec))


def _published_named(spec: ModelSpec) -> _Published:
    """``hf-hub:`` (its cached snapshot, downloaded first where the cache lacks it) and ``local-dir:``, each read as a
    folder holding ``open_clip_config.json`` and the weights."""
    name = spec.arch
    if name.startswith(HF_HUB_PREFIX):
        repo_id = name[len(HF_HUB_PREFIX) :]
        config_file, weights = cached_hub_files(repo_id)
        if config_file is None or weights is None:
            cached = "" if config_file is None else f" (its {HUB_CONFIG} is cached, not its weights)"
            ensure_reachable(None, f"the config and weights of --zs {name}{cached}")
            config_file, weights = download_hub_files(repo_id)
        folder = config_file.parent
    else:
        folder = Path(name[len(LOCAL_DIR_PREFIX) :])
        config_file, weights = folder / HUB_CONFIG, None
    check_hub_config(read_hub_config(config_file), config_file)
    weights = weights or local_dir_weights(folder)
    state, openai_format = openai_extras_removed(read_state_dict(weights))
    local = f"{LOCAL_DIR_PREFIX}{folder}"
    build = {"model_name": local, "built_from": config_file}
    return _Published(weights, state, architecture(local, quick_gelu=openai_format), build)


def _create_published(spec: ModelSpec) -> ZooModel:
    published = _published(spec)
    zoo = _create(spec, published.arch_config, **published.build)
    zoo.load_state_dict(_as_open_clip_adjusts(zoo.model, published.state), published.weights, is_base=True)
    return zoo


def published_weights(spec: ModelSpec) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """A pretrained tag's or a hub model's weights exactly as ``load_model`` holds them (adjusted, checked, in the
    model's dtypes and order), with their architecture and hub preprocessing, for the commands that only move tensors.

    open_clip's adjustments and the strict check need the model's layout, not its values, so the model is built on
    the meta device, which allocates and initialises nothing."""
    published = _published(spec)
    skeleton = _skeleton(spec, published)
    state = _as_open_clip_adjusts(skeleton, published.state)
    expected = skeleton.state_dict()
    check_shapes(
        published.weights,
        {name: tuple(t.shape) for name, t in state.items()},
        {name: tuple(t.shape) for name, t in expected.items()},
    )
    weights = {name: state[name].to(t.dtype) for name, t in expected.items()}  # as load_state_dict copies them
    return weights, published.arch_config, _hub_preprocess(spec, skeleton)


def _skeleton(spec: ModelSpec, published: _Published) -> torch.nn.Module:
    """The model without storage; built for real where its initialisation reads values, which meta tensors do not
    have (timm's towers read their drop-path rates)."""
    try:
        with torch.device("meta"), _open_clip_logging_silenced():
            return open_clip.create_model(
                published.build.get("model_name", spec.arch),
                pretrained=None,
                load_weights=False,
                force_quick_gelu=_quick_gelu(published.arch_config),
                device="meta",
            )
    except Exception:  # any failure the real build would meet is reported by it, in one line
        return _create(spec, published.arch_config, **published.build).model


def _as_open_clip_adjusts(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published weights as open_clip's own loader adjusts them to its model (third-party layouts, the older text-tower
    layout, scalar logit parameters, a stale text position-id buffer, position embeddings of another grid), since
    cftool reads the file itself: open_clip would hand an OpenAI-tagged file to torch.jit.load."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        parameter = getattr(model, name, None)
        if name in state and parameter is not None and parameter.ndim != state[name].ndim:
            state[name] = state[name].reshape(parameter.shape)
    # transformers stopped keeping this buffer (4.31); checkpoints saved before still hold it
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and position_ids not in model.state_dict():
        del state[position_ids]
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def _create_recorded(spec: ModelSpec, arch_config: dict, preprocess: dict) -> ZooModel:
    """A `model` file of an ``hf-hub:``/``local-dir:`` base, built from the architecture and preprocessing it records,
    as open_clip builds a local folder's config: the file holds every weight, so neither the hub nor the folder is
    read (a tokenizer that lives on the hub still does)."""
    config = {"model_cfg": arch_config, "preprocess_cfg": preprocess}
    check_hub_config(json.loads(json.dumps(config)), spec.weights_file)  # checked on a copy: open_clip edits it
    with tempfile.TemporaryDirectory(prefix="cftool-config-") as folder:
        (Path(folder) / HUB_CONFIG).write_text(json.dumps(config))
        return _create(spec, arch_config, model_name=f"{LOCAL_DIR_PREFIX}{folder}", built_from=spec.weights_file)


def _create(
    spec: ModelSpec,
    arch_config: dict | None,
    model_name: str | None = None,
    built_from: str | Path | None = None,
    **overrides,
) -> ZooModel:
    """open_clip's model, transforms and tokenizer, with its weights left uninitialised: every caller loads all of them
    at once, strictly (``ZooModel.load_state_dict``); ``built_from`` is the config file to blame where the build
    fails."""
    model_name = model_name or spec.arch
    quick_gelu = _quick_gelu(arch_config)
    blamed = built_from or f"--zs {spec.canonical}"
    try:
        with _open_clip_logging_silenced(), _initialisation_skipped():
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=None, load_weights=False, force_quick_gelu=quick_gelu, **overrides
            )
    except Exception as err:  # a config's values fail open_clip's model code in many ways, memory included
        raise CftoolError(
            f"{blamed}: open_clip cannot build the model ({_exception_line(err)}); check its model config"
        ) from None
    try:
        with _open_clip_logging_silenced():
            tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as err:  # an HF tokenizer that is neither installed nor cached, among others
        raise CftoolError(f"{blamed}: open_clip cannot make its tokenizer ({_exception_line(err)})") from None
    return ZooModel(spec, model, preprocess, tokenizer, arch_config)


def _quick_gelu(arch_config: dict | None) -> bool:
    return bool(arch_config and arch_config["quick_gelu"])


def _hub_preprocess(spec: ModelSpec, model: torch.nn.Module) -> dict | None:
    if not is_named_schema(spec.arch):
        return None
    return json.loads(json.dumps(open_clip.get_model_preprocess_cfg(model)))  # tuples as JSON has them


def _exception_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


# Every initialiser of torch.nn.init that a model's constructor calls: open_clip's models draw each weight with them
# (0.8 s of a ViT-B/16's 1 s build on a CPU), only for the base's weights to replace them.
_INITIALISERS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


@contextmanager
def _initialisation_skipped():
    """torch.nn.init's initialisers leave their tensor as it is (uninitialised memory) while a model is built whose
    every weight is then loaded. The strict load is what makes that safe: a weight the file lacks is an error, never
    a value left uninitialised. Values a constructor computes itself (open_clip's causal attention mask, its class
    and position embeddings) are made as before."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}
    for name in _INITIALISERS:
        setattr(torch.nn.init, name, _left_as_is)
    try:
        yield
    finally:
        for name, initialiser in saved.items():
            setattr(torch.nn.init, name, initialiser)


def _left_as_is(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


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
    weights = installed_tiny_weights()
    zoo = _create(spec, architecture(TINY_ARCH))
    zoo.load_state_dict(_read_weights(TINY_ARCH, weights)[0], weights, is_base=True)
    return zoo


def _read_weights(arch: str, path: Path) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """A cftool `model` file (with the architecture and hub preprocessing it records), or a plain open_clip/OpenAI
    state dict (which records neither)."""
    if is_cftool_file(path):
        with open_checkpoint(path, kind=MODEL_KIND) as ckpt:
            return ckpt.load_all(), model_file_architecture(ckpt), ckpt.header.base_preprocess
    return (*plain_weights(arch, path), None)
