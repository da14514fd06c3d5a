"""What `--zs` specs, model files and base weights share, without importing open_clip: the spec vocabulary (`tiny`,
``hf-hub:``, ``local-dir:``, ``ARCH:/local/file``), where a model file came from, plain weights files, and open_clip's
model configs.

A base is its weights and its architecture: open_clip's model config, read here from the config files without
importing open_clip, with the activation made explicit, since OpenAI's weights need QuickGELU and the same tensors
under GELU are another model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, Header
from cftool.io.foreign import read_state_dict
from cftool.io.header import is_cftool_metadata, read_cftool_header, read_header
from cftool.options import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, TINY
from cftool.zoo.hub_folder import HUB_CONFIG, read_hub_config

log = logging.getLogger(__name__)

TINY_ARCH = "cftool-tiny"
TINY_WEIGHTS = Path(__file__).parent / "weights" / "tiny.safetensors"
MODEL_CONFIGS = Path(__file__).parent / "model_configs"

# OpenAI's CLIP release (its TorchScript files, and state dicts taken from them) holds these next to the weights;
# open_clip's state dicts never do. They are how OpenAI-trained weights, which need QuickGELU, are recognised.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_QUICK_GELU_SUFFIX = "-quickgelu"


def names_weights_file(tag: str) -> bool:
    """Whether the part after ``ARCH:`` in a spec names a local weights file rather than a pretrained tag."""
    return bool(Path(tag).suffix) or os.sep in tag


def arch_of(base: str) -> str:
    """The open_clip architecture of a recorded base spec (``tiny``, ``ARCH:TAG``, ``ARCH:PATH``, ``hf-hub:…``)."""
    if base == TINY:
        return TINY_ARCH
    if is_named_schema(base):
        return base
    return base.partition(":")[0].replace("/", "-")


def is_named_schema(spec: str) -> bool:
    """``hf-hub:…`` and ``local-dir:…``: specs whose config and weights open_clip finds itself."""
    return spec.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))


def _config_file(arch: str) -> Path | None:
    """open_clip's JSON config of ``arch``, found without importing open_clip (cftool's own configs first)."""
    own = MODEL_CONFIGS / f"{arch}.json"
    if own.is_file():
        return own
    found = importlib.util.find_spec("open_clip")
    folders = (found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        candidate = Path(folder) / "model_configs" / f"{arch}.json"
        if candidate.is_file():
            return candidate
    return None


def architecture(arch: str, quick_gelu: bool = False) -> dict | None:
    """The model config open_clip builds ``arch`` from, with the activation always spelled out (``quick_gelu``),
    so that ``ViT-B-16`` forced to QuickGELU and ``ViT-B-16-quickgelu`` are the same architecture; None where only
    open_clip can tell (an ``hf-hub:`` model not in the cache)."""
    if arch.startswith(LOCAL_DIR_PREFIX):
        path = Path(arch[len(LOCAL_DIR_PREFIX) :]) / HUB_CONFIG
        config = read_hub_config(path)["model_cfg"] if path.is_file() else None
    else:
        path = None if is_named_schema(arch) else _config_file(arch)
        config = json.loads(path.read_text()) if path else None
    if not isinstance(config, dict):
        return None
    config["quick_gelu"] = bool(config.get("quick_gelu", False) or quick_gelu)
    return config


def openai_extras_removed(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """``state`` without the entries of OpenAI's release format, and whether it was in that format."""
    if all(key in state for key in OPENAI_EXTRA_KEYS):
        return {name: tensor for name, tensor in state.items() if name not in OPENAI_EXTRA_KEYS}, True
    return dict(state), False


def warn_if_activation_is_a_guess(arch: str, path: Path) -> None:
    """A plain open_clip state dict does not say which activation it was trained with; the config's is used."""
    if not arch.endswith(_QUICK_GELU_SUFFIX) and _config_file(arch + _QUICK_GELU_SUFFIX) is not None:
        log.warning(
            "%s: a plain state dict does not record its activation; building %s with GELU as its open_clip config "
            "says. If these are OpenAI-trained weights, use --zs %s%s:%s (QuickGELU)",
            path,
            arch,
            arch,
            _QUICK_GELU_SUFFIX,
            path,
        )


def resolve_base(zs: str | None, recorded_in: str | os.PathLike[str], header: Header | None = None) -> str:
    """The base model a command uses: ``--zs`` where given, else the one the file ``recorded_in`` records (``header``
    where it was read already; otherwise the file's header alone is read)."""
    if zs is not None:
        return zs
    return recorded_base(header or read_cftool_header(recorded_in), recorded_in)


def recorded_base(header: Header, path: str | os.PathLike[str]) -> str:
    """The `--zs` a file records as its base, refused in one line where that names a weights file that has gone:
    the file accepts any copy of those weights, found by their hash."""
    base = header.base
    _, colon, tag = base.partition(":")
    if colon and not is_named_schema(base) and names_weights_file(tag) and not Path(tag).is_file():
        same = f" (sha256 {header.base_sha256[:12]})" if header.base_sha256 else ""
        raise CftoolError(
            f"{path}: its base {base!r} is no longer there (moved or deleted); pass --zs ARCH:PATH with any copy of "
            f"those weights{same}, e.g. --zs {arch_of(base)}:/new/place/{Path(tag).name}"
        )
    return base


def is_cftool_file(path: Path) -> bool:
    return path.suffix == ".safetensors" and is_cftool_metadata(read_header(path)[1])


def model_file_architecture(reader: CheckpointReader) -> dict | None:
    """What a `model` file was built under: recorded since cftool records it, else its architecture's config."""
    return reader.header.base_arch or architecture(arch_of(reader.header.base))


def plain_weights(arch: str, path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A plain open_clip or OpenAI state dict and the architecture it needs: OpenAI's format means QuickGELU."""
    state, openai_format = openai_extras_removed(read_state_dict(path))
    if not openai_format:
        warn_if_activation_is_a_guess(arch, path)
    return state, architecture(arch, quick_gelu=openai_format)


def weights_file_canonical(arch: str, path: Path) -> str:
    """What files made from ``ARCH:PATH`` record: the absolute path, so that the spec works from any folder."""
    return f"{arch}:{path.resolve()}"


def installed_tiny_weights() -> Path:
    """The shipped weights of `tiny`, refused in one line where an incomplete install lacks them."""
    if not TINY_WEIGHTS.is_file():
        raise CftoolError(
            f"--zs tiny: its weights {TINY_WEIGHTS} are missing (an incomplete install), and a randomly "
            f"initialised model is no base; reinstall cftool, or pretrain them from a checkout of cftool: "
            f"python scripts/pretrain_tiny.py -o {TINY_WEIGHTS}"
        )
    return TINY_WEIGHTS
