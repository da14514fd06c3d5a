"""Base weights for the commands that only move tensors (`delta`, `delta apply`, `decouple --as model`).

`tiny`, a cftool `model` file and ``ARCH:/local/file`` are read from their file alone, without open_clip: each
tensor is converted as loading it into the model does (the model holds float32; BatchNorm's
``num_batches_tracked`` counters are int64 even where a file stores them as floats, as the shipped fp16 `tiny`
file does), so that the hash of these weights is the ``ZooModel.weights_sha256`` that every file made from the
model records. Pretrained tags and ``hf-hub:`` specs are built by open_clip, imported only then. Tensors are read
one at a time where the file allows it (safetensors), so a base costs one tensor of memory, not a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, Header, open_checkpoint, read_header, tensors_sha256
from cftool.io.foreign import read_state_dict

TINY = "tiny"
TINY_ARCH = "cftool-tiny"
TINY_WEIGHTS = Path(__file__).parent / "weights" / "tiny.safetensors"
HF_HUB_PREFIX = "hf-hub:"
_COUNTER_SUFFIX = "num_batches_tracked"


def names_weights_file(tag: str) -> bool:
    """Whether the part after ``ARCH:`` in a spec names a local weights file rather than a pretrained tag."""
    return bool(Path(tag).suffix) or os.sep in tag


def arch_of(base: str) -> str:
    """The open_clip architecture of a recorded base spec (``tiny``, ``ARCH:TAG``, ``ARCH:PATH``, ``hf-hub:…``)."""
    if base == TINY:
        return TINY_ARCH
    if base.startswith(HF_HUB_PREFIX):
        return base
    return base.partition(":")[0].replace("/", "-")


def as_loaded(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the fp32 model holds it once loaded."""
    if name.endswith(_COUNTER_SUFFIX):
        return tensor.to(torch.int64)
    if tensor.is_floating_point():
        return tensor.to(torch.float32)
    return tensor


def _loaded_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    return as_loaded(name, torch.empty(0, dtype=dtype)).dtype


class BaseWeights(Mapping[str, torch.Tensor]):
    """A base model's weights, as a mapping read one tensor at a time; ``canonical`` is the spec files record."""

    def __init__(
        self,
        canonical: str,
        layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        read: Callable[[str], torch.Tensor],
        close: Callable[[], None] = lambda: None,
        sha256: str | None = None,
    ):
        self.canonical = canonical
        self.layout = layout
        self._read = read
        self._close = close
        if sha256 is not None:
            self.__dict__["sha256"] = sha256

    @cached_property
    def sha256(self) -> str:
        """``tensors_sha256`` of the weights: what ``cftool.base_sha256`` records."""
        return tensors_sha256(self)

    def header(self, kind: str, **fields) -> Header:
        return Header(kind=kind, base=self.canonical, base_sha256=self.sha256, **fields)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.layout:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout)

    def __len__(self) -> int:
        return len(self.layout)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> BaseWeights:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _from_checkpoint(canonical: str, reader: CheckpointReader) -> BaseWeights:
    layout = {name: (_loaded_dtype(name, info.torch_dtype), info.shape) for name, info in reader.tensors.items()}
    return BaseWeights(canonical, layout, lambda name: as_loaded(name, reader[name]), reader.close)


def _from_state_dict(canonical: str, state: Mapping[str, torch.Tensor], sha256: str | None = None) -> BaseWeights:
    tensors = {name: as_loaded(name, tensor) for name, tensor in state.items()}
    layout = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}
    return BaseWeights(canonical, layout, tensors.__getitem__, sha256=sha256)


def _from_weights_file(canonical: str, path: Path) -> BaseWeights:
    """A cftool `model` file read lazily, or a plain state dict (safetensors or a weights-only pickle)."""
    if path.suffix == ".safetensors" and "cftool.format" in read_header(path)[1]:
        return _from_checkpoint(canonical, open_checkpoint(path, kind="model"))
    return _from_state_dict(canonical, read_state_dict(path))


def open_base(spec: str) -> BaseWeights:
    """The weights a `--zs` spec names; only pretrained tags and ``hf-hub:`` specs import open_clip."""
    spec = spec.strip()
    if spec == TINY and TINY_WEIGHTS.is_file():
        return _from_weights_file(TINY, TINY_WEIGHTS)
    name, colon, tag = spec.partition(":")
    if spec and not spec.startswith(HF_HUB_PREFIX):
        if colon and tag and names_weights_file(tag):
            weights = Path(tag)
            if not weights.is_file():
                raise CftoolError(f"--zs {spec!r}: weights file {weights} does not exist")
            return _from_weights_file(f"{name.replace('/', '-')}:{weights}", weights)
        path = Path(spec)
        if not colon and path.is_file():
            with open_checkpoint(path, kind="model") as ckpt:
                arch = arch_of(ckpt.header.base)
            return _from_weights_file(f"{arch}:{path}", path)
    from cftool.zoo.models import load_model

    zoo = load_model(spec)
    return _from_state_dict(zoo.spec.canonical, zoo.model.state_dict(), zoo.weights_sha256)
