"""An open_clip model folder (``local-dir:FOLDER``, or a Hub snapshot in the cache): its ``open_clip_config.json``,
read and checked before open_clip builds a model from it, and its weights file.

open_clip reads such a config on trust: a malformed file, a key it does not know or a value of the wrong type
fails deep in its model code, a FIFO or ``/dev/zero`` is read forever, and a width of 10^9 is allocated. Here
each of those is one line that names the file and the key. open_clip is imported only by ``check_hub_config``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import os
import stat
import types
import typing
from pathlib import Path
from typing import Any

from cftool.errors import CftoolError

HUB_CONFIG = "open_clip_config.json"
_HUB_CONFIG_MAX_BYTES = 1 << 20
# The weights files open_clip looks for in a local-dir: folder, in its order of preference.
LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
# Any other one: open_clip's suffixes, and .pt, the suffix of OpenAI's release.
_WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def read_hub_config(path: Path) -> dict:
    """The ``open_clip_config.json`` of a ``local-dir:`` folder or a hub snapshot: a JSON object with a ``model_cfg``
    object (and maybe a ``preprocess_cfg`` one), read without trusting it: a regular file of bounded size, so that a
    FIFO, a device or a symlink loop is refused rather than read forever."""
    try:
        # Opened without blocking (a FIFO with no writer would wait forever), then checked for what it is.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CftoolError(f"{path}: no such file; a local-dir: folder holds open_clip's {HUB_CONFIG}") from None
    except OSError as exc:
        raise CftoolError(f"{path}: cannot read ({exc.strerror}); check the path and its permissions") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise CftoolError(f"{path}: is not a regular file; {HUB_CONFIG} must be a JSON file")
    with os.fdopen(descriptor, "rb") as file:
        data = file.read(_HUB_CONFIG_MAX_BYTES + 1)
    if len(data) > _HUB_CONFIG_MAX_BYTES:
        raise CftoolError(
            f"{path}: over {_HUB_CONFIG_MAX_BYTES // 1024} KiB, far larger than a model config; check that it is the "
            f"right file"
        )
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CftoolError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise CftoolError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); fix it") from None
    except (ValueError, RecursionError) as exc:  # a number too long to convert, JSON nested too deep
        detail = "nested too deep" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:120]
        raise CftoolError(f"{path}: not a usable JSON model config ({detail}); fix it") from None
    if not isinstance(config, dict):
        raise CftoolError(
            f"{path}: holds a JSON {type(config).__name__}, not an object; open_clip's config is an object with "
            f"model_cfg and preprocess_cfg"
        )
    if not isinstance(config.get("model_cfg"), dict):
        found = ", ".join(repr(key) for key in list(config)[:6]) or "nothing"
        raise CftoolError(
            f"{path}: no model_cfg object (found: {found}); open_clip builds the model from model_cfg, as in the "
            f"{HUB_CONFIG} of an open_clip model on the Hugging Face Hub"
        )
    if not isinstance(config.get("preprocess_cfg", {}), dict):
        raise CftoolError(f"{path}: its preprocess_cfg is a {type(config['preprocess_cfg']).__name__}, not an object")
    return config


def local_dir_weights(folder: Path) -> Path:
    """The weights file of a ``local-dir:`` folder, found as open_clip finds it: the first of its preferred names,
    else the one ``*.safetensors``, ``*.bin``, ``*.pth`` or ``*.pt`` file there (several are ambiguous)."""
    for name in LOCAL_DIR_WEIGHTS:
        if os.path.lexists(folder / name):  # whatever it is: reading it says what is wrong with it
            return folder / name
    try:
        files = [path for path in folder.iterdir() if path.suffix in _WEIGHTS_SUFFIXES and not path.is_dir()]
    except OSError as exc:
        raise CftoolError(f"--zs local-dir:{folder}: cannot list the folder ({exc.strerror})") from None
    candidates = sorted(files, key=lambda path: (path.suffix != ".safetensors", path.name))
    if len(candidates) == 1:
        return candidates[0]
    looked_for = ", ".join(LOCAL_DIR_WEIGHTS[:3]) + ", ..."
    if candidates:
        raise CftoolError(
            f"--zs local-dir:{folder}: several weights files ({', '.join(path.name for path in candidates[:4])}) and "
            f"none of the names open_clip prefers ({looked_for}); keep one, or name it: --zs ARCH:PATH"
        )
    raise CftoolError(
        f"--zs local-dir:{folder}: no weights beside its {HUB_CONFIG} (looked for {looked_for} and any "
        f"{', '.join('*' + suffix for suffix in _WEIGHTS_SUFFIXES)}), so the model would be random; put its weights "
        f"in the folder as {LOCAL_DIR_WEIGHTS[0]}, or pass them: --zs ARCH:/path/to/weights"
    )


def check_hub_config(config: dict, path: str | os.PathLike[str]) -> None:
    """Refuse, in one line naming ``path`` and the key, a config (as ``read_hub_config`` returns it) that open_clip
    could not build or apply: a key open_clip does not know, a value of another type than it expects, a tokenizer or
    image tower whose package is not installed, a preprocessing that cannot normalise images, or a model larger than
    this machine's memory."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from open_clip.transform import PreprocessCfg

    model_cfg = config["model_cfg"]
    _check_fields(path, "model_cfg", model_cfg, _model_cfg_fields(), "open_clip's CLIP")
    for required in ("embed_dim", "vision_cfg", "text_cfg"):
        if required not in model_cfg:
            raise CftoolError(f"{path}: model_cfg has no {required}; open_clip needs it to build the model")
    vision = {**_defaults(CLIPVisionCfg), **model_cfg["vision_cfg"]}
    text = {**_defaults(CLIPTextCfg), **model_cfg["text_cfg"]}
    for package, key, value in (
        ("transformers", "text_cfg.hf_tokenizer_name", text["hf_tokenizer_name"]),
        ("transformers", "text_cfg.hf_model_name", text["hf_model_name"]),
        ("timm", "vision_cfg.timm_model_name", vision["timm_model_name"]),
    ):
        if value and importlib.util.find_spec(package) is None:
            raise CftoolError(
                f"{path}: model_cfg.{key} ({value!r}) needs the {package} package, which is not installed; "
                f"pip install {package}"
            )
    _check_preprocess(path, config.get("preprocess_cfg", {}), _fields(PreprocessCfg))
    _check_size(path, vision, text)


def _defaults(cfg_class: type) -> dict[str, Any]:
    return {field.name: field.default for field in dataclasses.fields(cfg_class)}


def _fields(cfg_class: type) -> dict[str, Any]:
    """``{name: type hint}`` of one of open_clip's config dataclasses."""
    return typing.get_type_hints(cfg_class)


def _model_cfg_fields() -> dict[str, Any]:
    """The keys of ``model_cfg``: the arguments of the model classes open_clip builds from it, and ``custom_text``,
    which picks the class."""
    from open_clip.coca_model import CoCa
    from open_clip.model import CLIP, CustomTextCLIP

    fields: dict[str, Any] = {"custom_text": bool}
    for model_class in (CLIP, CustomTextCLIP, CoCa):
        for name, parameter in inspect.signature(model_class).parameters.items():
            if name != "cast_dtype" and parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
                fields.setdefault(name, parameter.annotation)
    return fields


def _check_fields(path: str | os.PathLike[str], where: str, values: dict, fields: dict[str, Any], owner: str) -> None:
    for key, value in values.items():
        if key not in fields:
            raise CftoolError(f"{path}: unknown key {where}.{key}, not a setting of {owner}; remove or correct it")
        hint = fields[key]
        if value is None:  # open_clip's own configs write null for "not set", whatever the annotation says
            continue
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise CftoolError(f"{path}: {where}.{key} is {_shown(value)}; open_clip expects an object")
            _check_fields(path, f"{where}.{key}", value, _fields(hint), f"open_clip's {hint.__name__}")
        elif not _fits(value, hint):
            raise CftoolError(f"{path}: {where}.{key} is {_shown(value)}; open_clip expects {_described(hint)}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value is of the type a config field is annotated with (JSON's lists stand for tuples); an
    annotation other than these few is left to open_clip."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and (isinstance(value, int) or math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if dict in (hint, origin):
        return isinstance(value, dict)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return not args or all(_fits(item, args[0]) for item in value)
    return True


def _described(hint: Any) -> str:
    if typing.get_origin(hint) is None and isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return (text if len(text) <= 40 else text[:37] + "...") + f" (a JSON {type(value).__name__})"


# What open_clip's image transforms accept (they assert it when building).
_PREPROCESS_CHOICES = {
    "mode": ("RGB",),
    "interpolation": ("bicubic", "bilinear", "random"),
    "resize_mode": ("shortest", "longest", "squash"),
}


def _check_preprocess(path: str | os.PathLike[str], preprocess: dict, fields: dict[str, Any]) -> None:
    for key, value in preprocess.items():
        if key not in fields or value is None:  # open_clip ignores both
            continue
        where = f"preprocess_cfg.{key}"
        if not _fits(value, fields[key]):
            raise CftoolError(f"{path}: {where} is {_shown(value)}; open_clip expects {_described(fields[key])}")
        if key in _PREPROCESS_CHOICES and value not in _PREPROCESS_CHOICES[key]:
            raise CftoolError(f"{path}: {where} is {value!r}; open_clip knows {', '.join(_PREPROCESS_CHOICES[key])}")
        if key in ("mean", "std") and len(value) not in (1, 3):
            raise CftoolError(f"{path}: {where} holds {len(value)} values; give one, or one per colour channel (3)")
        if key == "std" and not all(std > 0 for std in value):
            raise CftoolError(
                f"{path}: {where} is {value}; images are divided by it, so each standard deviation must be positive"
            )
        if key == "size" and not all(size > 0 for size in (value if isinstance(value, list) else [value])):
            raise CftoolError(f"{path}: {where} is {value}; an image size is positive")


# open_clip builds each transformer layer or ResNet block as Python modules, milliseconds and tens of KB apiece; the
# largest CLIP models have a few dozen.
_MAX_LAYERS = 1024


def _check_size(path: str | os.PathLike[str], vision: dict, text: dict) -> None:
    """Refuse a model whose tensors alone would not fit in this machine's memory, or whose layers would take open_clip
    minutes to build, before it starts."""
    layers = vision["layers"]
    for key, count in (
        ("vision_cfg.layers", sum(map(_size, layers)) if isinstance(layers, list) else _size(layers)),
        ("text_cfg.layers", _size(text["layers"])),
    ):
        if count > _MAX_LAYERS and not (key.startswith("vision") and vision["timm_model_name"]):
            raise CftoolError(
                f"{path}: model_cfg.{key} asks for {count} layers; CLIP models have a few dozen, and open_clip would "
                f"take minutes to build more than {_MAX_LAYERS}: check it"
            )
    numbers = _tensor_elements_at_least(vision, text)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): open_clip's allocation failure is reported
        return
    if numbers * 4 > memory:
        raise CftoolError(
            f"{path}: model_cfg describes a model of at least {numbers:.3g} parameters and buffers "
            f"({numbers * 4 / 2**30:,.0f} GiB in float32), more than this machine's {memory / 2**30:,.0f} GiB of "
            f"memory; check its widths, layer counts, image size and context length"
        )


def _tensor_elements_at_least(vision: dict, text: dict) -> int:
    """A lower bound on the numbers a CLIP config's model holds: the attention weights of its transformers (4·width²
    a layer), the 3x3 convolutions of a ResNet image tower (width·2^stage squared, for each block of a stage), the
    image tower's positional embedding (a width-wide vector a patch), the token and positional embeddings and the
    causal mask of the text tower. Towers taken from timm or transformers are not counted; values open_clip would
    refuse count as nothing, and are reported when it builds the model."""
    count = 0
    if not vision["timm_model_name"]:
        layers, width = vision["layers"], _size(vision["width"])
        size = vision["image_size"]
        height, width_px = (size, size) if not isinstance(size, list) else (size + [0, 0])[:2]
        if isinstance(layers, list):  # ModifiedResNet, whose attention pool sees a 32x smaller grid
            count += sum(_size(blocks) * (width * 2**stage) ** 2 for stage, blocks in enumerate(layers))
            patch, grid_width = 32, width * 32
        else:
            count += _size(layers) * 4 * width**2
            patch, grid_width = max(_size(vision["patch_size"]), 1), width
        count += (_size(height) // patch) * (_size(width_px) // patch) * grid_width
    if not text["hf_model_name"]:
        width, context = _size(text["width"]), _size(text["context_length"])
        count += _size(text["layers"]) * 4 * width**2 + (_size(text["vocab_size"]) + context) * width + context**2
    return count


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
