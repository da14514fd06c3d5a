"""Base weights for the commands that only move tensors (`delta`, `delta apply`, `decouple --as model`).

`tiny`, a cftool `model` file and ``ARCH:/local/file`` are read from their file alone, without open_clip: each
tensor is converted as loading it into the model does (the model holds float32; BatchNorm's
``num_batches_tracked`` counters are int64 even where a file stores them as floats, as the shipped fp16 `tiny`
file does), so that the hash of these weights is the ``ZooModel.weights_sha256`` that every file made from the
model records. Pretrained tags and ``hf-hub:``/``local-dir:`` specs import open_clip for its loader's adjustments,
which need the model's layout: it is built on the meta device, without storage. Tensors are read one at a time where
the file allows it (safetensors), so a base costs one tensor of memory, not a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import Header, open_checkpoint, tensors_sha256
from cftool.io.header import MODEL_KIND
from cftool.io.remembered_hashes import remembered_sha256
from cftool.zoo.base import (
    TINY,
    TINY_ARCH,
    arch_of,
    installed_tiny_weights,
    is_cftool_file,
    is_named_schema,
    model_file_architecture,
    names_weights_file,
    plain_weights,
    weights_file_canonical,
)

_COUNTER_SUFFIX = "num_batches_tracked"


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
    """A base model's weights, as a mapping read one tensor at a time; ``canonical`` is the spec files record and
    ``architecture`` the model config they were built under (None where only open_clip knows it)."""

    def __init__(
        self,
        canonical: str,
        layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        read: Callable[[str], torch.Tensor],
        architecture: dict | None,
        close: Callable[[], None] = lambda: None,
        sha256: str | None = None,
        preprocess: dict | None = None,
        file: Path | None = None,
    ):
        """``preprocess``: the hub preprocessing config that files of an ``hf-hub:``/``local-dir:`` base record;
        ``file``: the file the weights are read from, whose hash is remembered while it is unchanged."""
        self.canonical = canonical
        self.file = file
        self.layout = layout
        self.architecture = architecture
        self.preprocess = preprocess
        self._read = read
        self._close = close
        if sha256 is not None:
            self.__dict__["sha256"] = sha256

    @cached_property
    def sha256(self) -> str:
        """``tensors_sha256`` of the weights: what ``cftool.base_sha256`` records."""
        if self.file is None:
            return tensors_sha256(self)
        return remembered_sha256(self.file, self.canonical, lambda: tensors_sha256(self))

    def header(self, kind: str, **fields) -> Header:
        return Header(
            kind=kind,
            base=self.canonical,
            base_sha256=self.sha256,
            base_arch=self.architecture,
            base_preprocess=self.preprocess,
            **fields,
        )

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


def _from_state_dict(
    canonical: str,
    state: Mapping[str, torch.Tensor],
    architecture: dict | None,
    sha256: str | None = None,
    preprocess: dict | None = None,
    file: Path | None = None,
) -> BaseWeights:
    tensors = {name: as_loaded(name, tensor) for name, tensor in state.items()}
    layout = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}
    return BaseWeights(
        canonical, layout, tensors.__getitem__, architecture, sha256=sha256, preprocess=preprocess, file=file
    )


def _from_weights_file(arch: str, canonical: str, path: Path) -> BaseWeights:
    """A cftool `model` file read lazily, or a plain state dict (safetensors, a weights-only pickle, TorchScript)."""
    if is_cftool_file(path):
        reader = open_checkpoint(path, kind=MODEL_KIND)
        layout = {name: (_loaded_dtype(name, info.torch_dtype), info.shape) for name, info in reader.tensors.items()}

        def read(name: str) -> torch.Tensor:
            return as_loaded(name, reader[name])

        return BaseWeights(
            canonical,
            layout,
            read,
            model_file_architecture(reader),
            reader.close,
            preprocess=reader.header.base_preprocess,
            file=path,
        )
    return _from_state_dict(canonical, *plain_weights(arch, path), file=path)


def open_base(spec: str) -> BaseWeights:
    """The weights a `--zs` spec names, never building the model; only pretrained tags and ``hf-hub:``/``local-dir:``
    specs import open_clip, for the adjustments its loader makes to published weights."""
    spec = spec.strip()
    if spec == TINY:
        return _from_weights_file(TINY_ARCH, TINY, installed_tiny_weights())
    name, colon, tag = spec.partition(":")
    if spec and not is_named_schema(spec):
        if colon and tag and names_weights_file(tag):
            weights = Path(tag)
            if not weights.is_file():
                raise CftoolError(f"--zs {spec!r}: weights file {weights} does not exist")
            arch = name.replace("/", "-")
            return _from_weights_file(arch, weights_file_canonical(arch, weights), weights)
        path = Path(spec)
        if not colon and path.is_file():
            with open_checkpoint(path, kind=MODEL_KIND) as ckpt:
                arch = arch_of(ckpt.header.base)
            return _from_weights_file(arch, weights_file_canonical(arch, path), path)
    from cftool.zoo.models import parse_model_spec, published_weights

    parsed = parse_model_spec(spec)  # refuses, in one line, any spec that is neither a tag nor a hub model
    state, arch_config, preprocess = published_weights(parsed)
    return _from_state_dict(parsed.canonical, state, arch_config, preprocess=preprocess)
