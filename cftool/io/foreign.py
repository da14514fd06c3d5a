"""Reading checkpoints written by other tools: open_clip/OpenAI state dicts and Dassl/CoOp prompts.

Pickles are only ever loaded with ``torch.load(weights_only=True)``: a pickle that names anything
outside torch's weights-only allowlist is refused before it can run code. The only additions to
that allowlist are inert stand-ins for the optimizer and scheduler objects training code saves.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.optim.lr_scheduler
from safetensors import safe_open

from cftool.errors import CftoolError
from cftool.io.header import check_input_file, read_header


class PickledTrainingState:
    """An inert stand-in for an optimizer or LR-scheduler object found in a training checkpoint.

    Dassl pickles its warm-up scheduler's ``successor`` (a torch scheduler holding the optimizer)
    as an object, which ``weights_only`` refuses. Those classes are allowlisted under their names
    but resolve to this class, which only keeps the pickled attributes: no torch code runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pickled_args = args

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state


def _plain_dict(*args: Any) -> dict:
    """Stands in for ``collections.defaultdict`` (optimizer state), which weights_only cannot fill."""
    return {}


def _training_state_classes() -> list[str]:
    modules = (torch.optim, torch.optim.lr_scheduler)
    bases = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
    return sorted(
        {
            f"{member.__module__}.{member.__qualname__}"
            for module in modules
            for member in vars(module).values()
            if inspect.isclass(member) and issubclass(member, bases)
        }
    )


_TRAINING_STATE_STANDINS: list[Any] = [
    *((PickledTrainingState, name) for name in _training_state_classes()),
    (_plain_dict, "collections.defaultdict"),
    dict,  # the defaultdict's default_factory argument
]

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_ONLY_REASON = re.compile(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", re.S)


def _is_torchscript_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            # torch.jit.save writes constants.pkl; torch.save never does.
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except Exception:  # not a readable zip, so not TorchScript; torch.load reports what it is
        return False


def _torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive, the format of OpenAI's CLIP release.

    ``torch.jit.load`` rebuilds the archive's TorchScript modules without running any of their code, and its
    unpickler only builds TorchScript's own types, so reading ``state_dict()`` executes nothing from the file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; OpenAI's files are in it
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as exc:  # torch reports corrupt archives with many exception types
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CftoolError(f"{path}: not a readable TorchScript archive ({detail}); was it saved completely?") from None


def load_weights_only(path: str | os.PathLike[str]) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure as a CftoolError.

    Optimizer and LR-scheduler objects pickled next to the weights load as inert
    ``PickledTrainingState`` placeholders.
    """
    path = check_input_file(path)
    if _is_torchscript_archive(path):
        raise CftoolError(
            f"{path}: is a TorchScript (JIT) archive, like OpenAI's CLIP release; cftool reads those only as full "
            f"model weights (--zs ARCH:{path}, or `cftool import` of a fine-tuned model)"
        )
    try:
        with torch.serialization.safe_globals(_TRAINING_STATE_STANDINS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        refused = _REFUSED_GLOBAL.search(message)
        if refused:
            raise CftoolError(
                f"{path}: refused to unpickle: it references {refused.group(1)} which could run code; "
                "only weights-only checkpoints are loaded (see torch.load(weights_only=True))"
            ) from None
        reason = _WEIGHTS_ONLY_REASON.search(message)
        detail = " ".join((reason.group(1) if reason else message).split())[:200]
        raise CftoolError(
            f"{path}: refused to unpickle: it uses pickle features outside the weights-only subset ({detail}); "
            "only weights-only checkpoints are loaded (see torch.load(weights_only=True))"
        ) from None
    except Exception as exc:  # torch reports corrupt files with many exception types
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CftoolError(
            f"{path}: not a readable PyTorch checkpoint ({detail}); "
            "check that it is the right file and was saved completely"
        ) from None


def _describe_entries(mapping: dict) -> str:
    shown = [f"{key!r} ({type(value).__name__})" for key, value in list(mapping.items())[:6]]
    return ", ".join(shown) + (", ..." if len(mapping) > 6 else "")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of an open_clip/OpenAI full checkpoint.

    Reads a plain ``.safetensors`` file, or a weights-only pickle holding either a flat state dict
    or a training checkpoint with a ``state_dict`` entry (a DDP ``module.`` prefix is removed).
    open_clip's own ``factory.load_state_dict`` is not reused: on a TypeError it retries
    ``torch.load`` without ``weights_only``, and its errors are raw exceptions.
    """
    path = check_input_file(path)
    if path.suffix == ".safetensors":
        read_header(path)  # corrupt files fail here with a clear message
        try:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                return {name: file.get_tensor(name) for name in file.keys()}
        except Exception as exc:
            raise CftoolError(f"{path}: cannot read tensors ({' '.join(str(exc).split())}); check the file") from None

    loaded = _torchscript_state_dict(path) if _is_torchscript_archive(path) else load_weights_only(path)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CftoolError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict; "
            "expected a dict of tensors or a training checkpoint with a 'state_dict' entry"
        )
    if not loaded:
        raise CftoolError(f"{path}: the state dict is empty; check that it is the right file")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        raise CftoolError(
            f"{path}: not a state dict of tensors (entries: {_describe_entries(loaded)}); "
            "expected a dict of tensors or a training checkpoint with a 'state_dict' entry"
        )
    prefix = "module."
    if all(name.startswith(prefix) for name in loaded):
        loaded = {name[len(prefix) :]: tensor for name, tensor in loaded.items()}
    return loaded


# Fixed token embeddings CoOp saves alongside ctx; they are recomputed from the class names.
_COOP_FIXED_BUFFERS = ("token_prefix", "token_suffix", "token_midfix")


def read_coop_prompt(path: str | os.PathLike[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The learned context of a Dassl CoOp/KgCoOp ``prompt_learner/model.pth.tar-N`` checkpoint.

    Returns ``ctx`` ((n_ctx, dim), or (n_cls, n_ctx, dim) for class-specific context) and
    ``{"epoch": int | None, "class_specific": bool, "ignored": [names], "token_prefix": tensor | None,
    "token_suffix": tensor | None}`` where ``ignored`` lists other tensors left behind (KgCoOp's unused
    ``meta_net`` and ``bias_vectors``) and the token tensors are the base's embeddings CoOp saved beside ``ctx``.
    CoCoOp's prompt learners are refused: their meta-net makes the context depend on each image.
    """
    path = check_input_file(path)
    loaded = load_weights_only(path)
    if not isinstance(loaded, dict):
        raise CftoolError(
            f"{path}: holds a {type(loaded).__name__}, not a Dassl checkpoint; "
            "expected a prompt_learner/model.pth.tar-N file from CoOp or KgCoOp"
        )
    state_dict = loaded.get("state_dict", loaded)
    if not isinstance(state_dict, dict):
        raise CftoolError(
            f"{path}: its 'state_dict' entry is a {type(state_dict).__name__}, not a dict; "
            "expected a prompt_learner/model.pth.tar-N file from CoOp or KgCoOp"
        )
    ctx = state_dict.get("ctx")
    if ctx is None:
        found = ", ".join(repr(key) for key in list(state_dict)[:8]) + (", ..." if len(state_dict) > 8 else "")
        raise CftoolError(
            f"{path}: no 'ctx' prompt tensor in its state dict (found: {found or 'nothing'}); "
            "expected a prompt_learner/model.pth.tar-N file from CoOp or KgCoOp"
        )
    if not (isinstance(ctx, torch.Tensor) and ctx.is_floating_point() and ctx.dim() in (2, 3) and ctx.numel()):
        description = f"{ctx.dtype} {list(ctx.shape)}" if isinstance(ctx, torch.Tensor) else type(ctx).__name__
        raise CftoolError(
            f"{path}: 'ctx' is {description}; expected a float tensor (n_ctx, dim) or (n_cls, n_ctx, dim)"
        )
    # KgCoOp keeps CoCoOp's meta-net unused, next to its bias_vectors; CoCoOp's own learner has no bias_vectors.
    if any(str(name).startswith("meta_net.") for name in state_dict) and "bias_vectors" not in state_dict:
        raise CftoolError(
            f"{path}: a CoCoOp prompt learner (it has a meta_net): its context is shifted per image by the meta-net, "
            "which cftool's prompts do not model, so importing its ctx alone would score another model; "
            "import CoOp or KgCoOp prompt learners"
        )
    epoch = loaded.get("epoch")
    tokens = {name: state_dict.get(name) for name in ("token_prefix", "token_suffix")}
    info = {
        "epoch": epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        "class_specific": ctx.dim() == 3,
        "ignored": sorted(str(name) for name in state_dict if name != "ctx" and name not in _COOP_FIXED_BUFFERS),
        **{name: value.detach() if isinstance(value, torch.Tensor) else None for name, value in tokens.items()},
    }
    return ctx.detach(), info


def is_dassl_prompt(path: Path) -> bool:
    """Whether a file is a Dassl prompt learner checkpoint (a pickle whose state dict has ``ctx``), whatever it is
    called."""
    if path.suffix == ".safetensors" or _is_torchscript_archive(path):
        return False
    loaded = load_weights_only(path)
    state_dict = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    return isinstance(state_dict, dict) and "ctx" in state_dict


# A ConDU session folder, as the reference code (ConDU, built on ZSCL) leaves it after each session:
CONDU_UNIFIED = "unified.pth"  # {name: unified delta tensor}
CONDU_PROTOTYPES = "prototypes.pth"  # {task: class prototypes}, in session order
# ...and one `{task}.pth` per task: {"masks": {name: bool tensor}, "rescalers": 0-d tensor}.


def is_condu_session(path: Path) -> bool:
    return path.is_dir() and (path / CONDU_UNIFIED).is_file()


def condu_task_names(folder: Path) -> list[str]:
    """The tasks of a ConDU session folder, in session order where ``prototypes.pth`` records it.

    Every ``*.pth`` file but ``unified.pth`` and ``prototypes.pth`` is a task's triggers, as the reference reads
    them; the reference keeps the session order only in the keys of ``prototypes.pth`` (a dict), so tasks it does
    not list follow in name order.
    """
    names = sorted(
        file.name.removesuffix(".pth")
        for file in folder.iterdir()
        if file.suffix == ".pth" and file.name not in (CONDU_UNIFIED, CONDU_PROTOTYPES)
    )
    if not names:
        raise CftoolError(f"{folder}: a ConDU session folder with no task files ({{task}}.pth); is it complete?")
    prototypes = read_condu_prototypes(folder)
    ordered = [task for task in prototypes if task in names]
    return ordered + [task for task in names if task not in ordered]


def read_condu_unified(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / CONDU_UNIFIED
    unified = load_weights_only(path)
    tensors_by_name = isinstance(unified, dict) and all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in unified.items()
    )
    if not (tensors_by_name and unified):
        raise CftoolError(f"{path}: expected a dict of tensor name -> unified delta tensor, as ConDU saves it")
    return unified


def read_condu_triggers(folder: Path, task: str, unified: dict[str, torch.Tensor]) -> tuple[dict, float]:
    """A task's masks (bool, shaped like the unified delta) and rescaler, from ``{task}.pth``."""
    path = folder / f"{task}.pth"
    triggers = load_weights_only(path)
    masks = triggers.get("masks") if isinstance(triggers, dict) else None
    rescaler = triggers.get("rescalers") if isinstance(triggers, dict) else None
    if not isinstance(masks, dict) or rescaler is None:
        raise CftoolError(f"{path}: expected {{'masks': {{name: mask}}, 'rescalers': scale}}, as ConDU saves a task")
    if isinstance(rescaler, torch.Tensor):
        if rescaler.numel() != 1:
            raise CftoolError(f"{path}: 'rescalers' holds {rescaler.numel()} values; a task has one rescaler")
        rescaler = rescaler.item()
    if not isinstance(rescaler, int | float):
        raise CftoolError(f"{path}: 'rescalers' is a {type(rescaler).__name__}, not a number")
    missing = [name for name in unified if name not in masks]
    if missing or len(masks) != len(unified):
        raise CftoolError(
            f"{path}: its masks do not cover the tensors of {CONDU_UNIFIED} ({len(missing)} missing, "
            f"{len(masks)} masks for {len(unified)} tensors); is it from the same session?"
        )
    checked = {}
    for name, delta in unified.items():
        mask = masks[name]
        if not isinstance(mask, torch.Tensor) or mask.shape != delta.shape:
            raise CftoolError(f"{path}: mask {name!r} is not a tensor of shape {list(delta.shape)}")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise CftoolError(f"{path}: mask {name!r} holds values other than 0 and 1")
        checked[name] = mask.to(torch.bool)
    return checked, float(rescaler)


def read_condu_prototypes(folder: Path) -> dict[str, torch.Tensor]:
    """``{task: [n_classes, dim] float32}`` from ``prototypes.pth`` (a list of per-class vectors per task in the
    reference code, or a tensor), or nothing if the folder has none."""
    path = folder / CONDU_PROTOTYPES
    if not path.is_file():
        return {}
    loaded = load_weights_only(path)
    if not isinstance(loaded, dict):
        raise CftoolError(f"{path}: expected a dict of task -> class prototypes, as ConDU saves it")
    prototypes = {}
    for task, value in loaded.items():
        if isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
            value = torch.stack([v.reshape(-1) for v in value])
        if not (isinstance(task, str) and isinstance(value, torch.Tensor) and value.dim() == 2):
            raise CftoolError(f"{path}: the prototypes of {task!r} are not one vector per class")
        prototypes[task] = value.detach().float()
    return prototypes
