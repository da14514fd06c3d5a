"""Reading checkpoints written by other tools: open_clip/OpenAI state dicts and Dassl/CoOp prompts.

Pickles are only ever loaded with ``torch.load(weights_only=True)``: a pickle that names anything
outside torch's weights-only allowlist is refused before it can run code. The only additions to
that allowlist are inert stand-ins for the optimizer and scheduler objects training code saves.
TorchScript archives (OpenAI's release) are never given to ``torch.jit.load``, which runs code the
archive defines: their data.pkl is unpickled with only inert stand-ins allowed, and read as data.
"""

from __future__ import annotations

import ast
import inspect
import io
import math
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

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


# TorchScript archives (OpenAI's CLIP release) are read as data, never with torch.jit.load: loading one runs the
# ``__setstate__`` methods of its code/ folder, and TorchScript code can write any file (its torch.save does).
_TORCHSCRIPT_STORAGES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# What torch's TorchScript pickler wraps lists and dicts in to record their static type; each gives back its value.
_TORCHSCRIPT_TYPE_TAGS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")
_STATE_HOOK = re.compile(rb"__[gs]etstate__")
_CLASS_HEADER = re.compile(r"^class\s+(\w+)\s*(?:\(\s*([\w.]*)\s*\))?\s*:", re.M)
_DECLARED_TENSORS = re.compile(r"^[ \t]+(__parameters__|__buffers__)[ \t]*=[ \t]*(\[[^\n]*\])", re.M)


class _RefusedGlobal(pickle.UnpicklingError):
    """data.pkl names a Python global that is neither a TorchScript class nor one of torch's tensor rebuilders."""


class _StorageType(NamedTuple):
    dtype: torch.dtype


class _Storage(NamedTuple):
    """A storage of the archive, ``data/<key>``: read only once all of data.pkl has been unpickled as data."""

    key: str
    dtype: torch.dtype


class _TensorView(NamedTuple):
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _ScriptObject:
    """An object of a TorchScript class (``__torch__.…``) rebuilt inert: its class's name and the state pickled for
    it. Its class's TorchScript methods are never compiled, let alone run."""

    __slots__ = ("state",)
    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ClassDeclaration(NamedTuple):
    is_module: bool
    parameters: frozenset[str]
    buffers: frozenset[str]


def _tensor_view(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None) -> _TensorView:
    """Stands in for ``torch._utils._rebuild_tensor_v2``: checks its arguments and records them, building nothing."""

    def sizes(values: Any) -> bool:
        return isinstance(values, tuple) and all(type(value) is int and value >= 0 for value in values)

    well_formed = isinstance(storage, _Storage) and type(offset) is int and offset >= 0 and sizes(size)
    if not (well_formed and sizes(stride) and len(size) == len(stride) and isinstance(requires_grad, bool)):
        raise ValueError("a tensor with malformed storage, offset, size or stride")
    if backward_hooks:
        raise ValueError("a tensor with backward hooks")
    return _TensorView(storage, offset, size, stride)


def _type_tagged(value: Any, *type_tag: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles an archive's data.pkl into inert records: ``__torch__`` objects as _ScriptObject, tensors as
    _TensorView. Every other global is refused before anything is called."""

    def __init__(self, file: io.BytesIO):
        super().__init__(file)
        self.classes: dict[str, type[_ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                namespace = {"__slots__": (), "qualified_name": qualified}
                self.classes[qualified] = type("ScriptObject", (_ScriptObject,), namespace)
            return self.classes[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _tensor_view
        if module == "torch" and name in _TORCHSCRIPT_STORAGES:
            return _StorageType(_TORCHSCRIPT_STORAGES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return dict  # a tensor's (empty) backward hooks
        if module == "torch.jit._pickle" and name in _TORCHSCRIPT_TYPE_TAGS:
            return _type_tagged
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, numel): the data is the record data/<key>, whatever its numel says.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"an unknown persistent id {str(pid)[:60]}")
        if not (isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise ValueError(f"a malformed storage reference {str(pid)[:60]}")
        return _Storage(pid[2], pid[1].dtype)


class _TorchScriptArchive:
    """The zip torch.jit.save writes: ``<root>/data.pkl`` (the module tree), ``<root>/data/<key>`` (raw storages),
    ``<root>/code/`` (TorchScript source, which declares each class's parameters and buffers), ``<root>/byteorder``."""

    def __init__(self, path: Path, archive: zipfile.ZipFile):
        self.path = path
        self.archive = archive
        # No record is read beyond the archive's own size: a compressed record cannot inflate memory use.
        self.size_limit = path.stat().st_size
        constants = next(name for name in archive.namelist() if name.endswith("/constants.pkl"))
        self.root = constants.removesuffix("/constants.pkl")
        self.byteorder = self.record("byteorder").decode() if self.has("byteorder") else "little"
        if self.byteorder not in ("little", "big"):
            raise ValueError(f"an unknown byte order {self.byteorder[:20]!r}")
        self.storages: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.declarations: dict[str, dict[str, _ClassDeclaration]] = {}

    def has(self, name: str) -> bool:
        return f"{self.root}/{name}" in self.archive.NameToInfo

    def record(self, name: str) -> bytes:
        """``<root>/name``."""
        try:
            return self.member(self.archive.getinfo(f"{self.root}/{name}"))
        except KeyError:
            raise ValueError(f"no record {name}") from None

    def member(self, info: zipfile.ZipInfo) -> bytes:
        if info.file_size > self.size_limit:
            raise ValueError(f"{info.filename} claims {info.file_size} bytes, more than the archive holds")
        with self.archive.open(info) as member:
            return member.read()  # zipfile checks the CRC at the end

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.refuse_state_hooks()
        unpickler = _TorchScriptUnpickler(io.BytesIO(self.record("data.pkl")))
        tree = unpickler.load()
        for qualified_name in unpickler.classes:
            self.declaration(qualified_name)  # every class used must be defined, whether or not it holds tensors
        if not isinstance(tree, _ScriptObject):
            raise ValueError(f"data.pkl holds a {type(tree).__name__}, not a module")
        tensors: dict[str, torch.Tensor] = {}
        self.collect(tree, "", tensors, ())
        return tensors

    def refuse_state_hooks(self) -> None:
        """torch.jit.load calls a class's ``__setstate__`` with its pickled state: code of the file's choosing, and
        a state laid out as that code decides, which only running it would interpret. Every source file in the
        archive is searched, whichever folder torch would take it from."""
        for info in self.archive.infolist():
            if info.filename.endswith(".py"):
                hook = _STATE_HOOK.search(self.member(info))
                if hook:
                    raise CftoolError(
                        f"{self.path}: its TorchScript code ({info.filename}) defines {hook.group().decode()}: its "
                        "state is restored by code in the archive, which torch.jit.load would run and cftool never "
                        "does (OpenAI's CLIP release has none); save the weights from a trusted copy as a state dict: "
                        "torch.save(model.state_dict(), PATH)"
                    )

    def declaration(self, qualified_name: str) -> _ClassDeclaration:
        module, _, name = qualified_name.rpartition(".")
        if module not in self.declarations:
            self.declarations[module] = _class_declarations(self.record(f"code/{module.replace('.', '/')}.py"))
        if name not in self.declarations[module]:
            raise ValueError(f"no TorchScript source for class {qualified_name}")
        return self.declarations[module][name]

    def collect(
        self, module: _ScriptObject, prefix: str, tensors: dict[str, torch.Tensor], ancestors: tuple[object, ...]
    ) -> None:
        """What ``state_dict()`` gives: a module's parameters, then its buffers, then each submodule's, in the order
        of its attributes."""
        declaration = self.declaration(module.qualified_name)
        state = getattr(module, "state", None)
        where = prefix.removesuffix(".") or "the root module"
        if not (declaration.is_module and isinstance(state, dict)):
            raise ValueError(f"{where} ({module.qualified_name}) is not a module with a dict of attributes")
        missing = (declaration.parameters | declaration.buffers) - state.keys()
        if missing:
            raise ValueError(f"{where} has no attribute {sorted(missing)[0]!r} that its class declares a tensor")
        for declared in (declaration.parameters, declaration.buffers):
            for name, value in state.items():
                if name not in declared or value is None:  # an absent optional tensor (a Linear without bias)
                    continue
                if not isinstance(value, _TensorView):
                    raise ValueError(f"{prefix}{name} is declared a tensor but holds a {type(value).__name__}")
                tensors[prefix + name] = self.tensor(value)
        for name, value in state.items():
            if isinstance(value, _ScriptObject) and self.declaration(value.qualified_name).is_module:
                if any(value is ancestor for ancestor in (*ancestors, module)):
                    raise ValueError(f"{prefix}{name} contains itself")
                self.collect(value, f"{prefix}{name}.", tensors, (*ancestors, module))

    def tensor(self, view: _TensorView) -> torch.Tensor:
        return self.storage(view.storage).as_strided(view.size, view.stride, view.offset)  # checks the bounds

    def storage(self, storage: _Storage) -> torch.Tensor:
        """``data/<key>`` as a flat tensor of the storage's dtype, in this machine's byte order."""
        key = (storage.key, storage.dtype)
        if key not in self.storages:
            data = bytearray(self.record(f"data/{storage.key}"))
            itemsize = storage.dtype.itemsize
            if len(data) % itemsize:
                raise ValueError(f"storage data/{storage.key} is not a whole number of {storage.dtype} elements")
            flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            if self.byteorder != sys.byteorder and itemsize > 1:
                flat = flat.view(-1, itemsize).flip(1).reshape(-1)
            self.storages[key] = flat.view(storage.dtype)
        return self.storages[key]


def _class_declarations(source: bytes) -> dict[str, _ClassDeclaration]:
    """The classes a TorchScript source file defines, parsed as text: whether each is a module, and the attributes its
    ``__parameters__ = [...]`` and ``__buffers__ = [...]`` lines (list literals of names) declare."""
    text = source.decode("utf-8", errors="replace")
    headers = list(_CLASS_HEADER.finditer(text))
    classes = {}
    for index, header in enumerate(headers):
        name, base = header.groups()
        if name in classes:
            raise ValueError(f"class {name} is defined twice")
        body = text[header.end() : headers[index + 1].start() if index + 1 < len(headers) else len(text)]
        declared = {"__parameters__": [], "__buffers__": []}
        for kind, names in _DECLARED_TENSORS.findall(body):
            declared[kind] = ast.literal_eval(names)
            if not (isinstance(declared[kind], list) and all(isinstance(item, str) for item in declared[kind])):
                raise ValueError(f"class {name} declares {kind} that are not names")
        classes[name] = _ClassDeclaration(
            base == "Module", frozenset(declared["__parameters__"]), frozenset(declared["__buffers__"])
        )
    return classes


def _torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive, the format of OpenAI's CLIP release: what
    ``torch.jit.load(path).state_dict()`` gives (names, dtypes, values), read without torch.jit.load.

    data.pkl is unpickled with only TorchScript's classes (as inert records) and torch's tensor rebuilder allowed;
    which attributes are parameters and buffers is read, as text, from the declarations in code/. Archives whose
    classes define ``__setstate__`` are refused: only running that code would say what their state means.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            tensors = _TorchScriptArchive(path, archive).state_dict()
    except CftoolError:
        raise
    except _RefusedGlobal as refused:
        raise CftoolError(
            f"{path}: refused to unpickle its TorchScript data.pkl: it references {refused} which could run code; "
            "only archives of modules and tensors are read"
        ) from None
    except Exception as exc:  # corrupt or crafted archives fail in many ways, RecursionError and MemoryError included
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CftoolError(f"{path}: not a readable TorchScript archive ({detail}); was it saved completely?") from None
    _refuse_repeating_views(path, tensors)
    return tensors


# torch's weights-only unpickler lacks protocol 4's FRAME opcode.
_WEIGHTS_ONLY_HIGHEST_PROTOCOL = 3


def _pickle_protocol(path: Path) -> int:
    """The protocol a torch.save file's pickle declares (data.pkl in a zip, the file itself in the legacy format):
    protocol 2 and later pickles start with PROTO n; 0 where none is declared."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = next(name for name in archive.namelist() if name.endswith("data.pkl"))
            with archive.open(pickled) as member:
                head = member.read(2)
    except Exception:  # not a zip with a data.pkl: the legacy format, a plain pickle
        with open(path, "rb") as file:
            head = file.read(2)
    return head[1] if len(head) == 2 and head[0] == pickle.PROTO[0] else 0


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
        with torch.serialization.safe_globals(_TRAINING_STATE_STANDINS), warnings.catch_warnings():
            # torch warns of any protocol but its default; one it cannot read is reported below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
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
        protocol = _pickle_protocol(path)
        if protocol > _WEIGHTS_ONLY_HIGHEST_PROTOCOL:
            raise CftoolError(
                f"{path}: its pickle is of protocol {protocol}, which torch.load(weights_only=True) does not read "
                f"({detail}); save it again where it was made with torch.save's default protocol "
                f"({torch.serialization.DEFAULT_PROTOCOL})"
            ) from None
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
    _refuse_repeating_views(path, loaded)
    return loaded


def _refuse_repeating_views(path: Path, loaded: object) -> None:
    """A pickle may hold a tensor whose strides repeat a few stored elements many times (a broadcast view): 10^12
    elements over one stored float cost nothing to load, and all of their memory as soon as anything copies them.
    Weights are stored whole, so such a view is refused wherever it is nested."""
    pending, seen = [loaded], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor) and item.layout == torch.strided:
            stored = item.untyped_storage().nbytes() // item.element_size()
            if item.numel() > stored:
                raise CftoolError(
                    f"{path}: holds a tensor of shape {list(item.shape)} whose {item.numel()} elements repeat the "
                    f"{stored} the file stores for it (a broadcast view); save it again with contiguous tensors"
                )
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, PickledTrainingState):
            pending.extend(vars(item).values())


def refuse_non_finite(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Imported tensors must be numbers: NaN or Inf, left by a run that diverged, would be written into a cftool file
    and carried into every model made from it."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            # torch has no isfinite for its 8-bit floats; every one of their values is exact in float32.
            bad = int((~torch.isfinite(tensor.float() if tensor.dtype.itemsize == 1 else tensor)).sum())
            if bad:
                raise CftoolError(
                    f"{path}: {name!r} holds {bad} non-finite values (NaN or Inf) among {tensor.numel()}; the run that "
                    "wrote it diverged: import a checkpoint saved before it did"
                )


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
    refuse_non_finite(path, {"ctx": ctx})
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
    refuse_non_finite(path, unified)
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
    if not isinstance(rescaler, int | float) or isinstance(rescaler, bool):
        raise CftoolError(f"{path}: 'rescalers' is a {type(rescaler).__name__}, not a number")
    try:
        finite = math.isfinite(rescaler)
    except OverflowError:  # an int beyond a float's range
        finite = False
    if not finite:
        raise CftoolError(f"{path}: 'rescalers' is {rescaler}; the run that wrote it diverged: import another session")
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
            if len({v.numel() for v in value}) > 1:
                raise CftoolError(f"{path}: the prototypes of {task!r} are vectors of different lengths")
            value = torch.stack([v.reshape(-1) for v in value])
        if not (isinstance(task, str) and isinstance(value, torch.Tensor) and value.dim() == 2):
            raise CftoolError(f"{path}: the prototypes of {task!r} are not one vector per class")
        prototypes[task] = value.detach().float()
    refuse_non_finite(path, prototypes)
    return prototypes
