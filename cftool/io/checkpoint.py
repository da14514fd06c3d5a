"""cftool checkpoint files: safetensors with ``cftool.*`` metadata (docs/design.md §4).

The header is parsed and validated in `cftool.io.header`, so that a corrupt or foreign file fails with one clear
line instead of a library traceback; tensors are then read lazily, one at a time, through ``safetensors.safe_open``.
Writing streams tensors into a temporary file next to the target and renames it into place only once every tensor
is on disk (`cftool.io.outputs.atomic_output`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open

from cftool.errors import CftoolError
from cftool.io.header import (
    Header,
    TensorInfo,
    first_few,
    format_shape,
    one_line,
    scan_file,
    short_name,
    torch_dtypes,
)
from cftool.io.outputs import atomic_output, refuse_existing, write_error

_DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in torch_dtypes().items()}
# The floating dtypes cftool writes; torch has no finiteness check for its 8-bit floats.
_CHECKED_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def finite(values: torch.Tensor) -> bool:
    """No NaN or Inf in ``values``. A sum is finite unless some entry is NaN or ±Inf (or it overflows, which the
    exact check then rules out), and costs a tenth of ``isfinite``'s bool tensor."""
    return bool(torch.isfinite(values.sum(dtype=torch.float32 if values.dtype != torch.float64 else None))) or bool(
        torch.isfinite(values).all()
    )


def refuse_non_finite(values: torch.Tensor, source: Path, name: str) -> None:
    """Checked where tensors are read: a NaN or Inf would spread into every result computed from them."""
    if values.dtype in _CHECKED_FLOATS and not finite(values):
        raise CftoolError(
            f"{source}: tensor {name!r} holds NaN or Inf values; "
            "re-create it from a finite checkpoint (`cftool inspect --check` finds them)"
        )


def safetensors_dtype(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype ("F32", "BF16", ...)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"safetensors cannot store tensors of dtype {dtype}") from None


class CheckpointReader:
    """An open cftool checkpoint; tensors are read lazily, one at a time.

    ``reader[name]`` reads the tensor's bytes into a fresh tensor rather than viewing a memory map:
    touched pages of a map count as resident memory until it is unmapped, so streaming through a
    few large files would otherwise grow the process to their total size; ``read_rows`` reads part of a
    tensor the same way. ``get_slice`` uses ``safetensors.safe_open`` (opened on first use), whose map
    does count. Use as a context manager or call ``close``.

    A whole tensor holding NaN or Inf is refused as it is read; rows are checked by the streaming code that reads
    them (`cftool.merge`), which checks its in-memory inputs the same way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: Header,
        tensors: dict[str, TensorInfo],
        positions: dict[str, int],
    ):
        self.path = Path(path)
        self.header = header
        self.tensors = tensors
        self._positions = positions
        unloadable = [info.name for info in tensors.values() if info.dtype not in torch_dtypes()]
        if unloadable:
            raise CftoolError(
                f"{self.path}: {len(unloadable)} tensors ({first_few(unloadable)}) have dtypes torch cannot hold "
                f"({', '.join(sorted({tensors[n].dtype for n in unloadable}))}); convert them to F16, BF16 or F32"
            )
        try:
            self._file = open(self.path, "rb", buffering=0)
        except OSError as exc:
            raise CftoolError(f"{self.path}: cannot open ({exc.strerror}); check the file") from None
        self._slices: Any = None

    def _require(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise CftoolError(
                f"{self.path}: has no tensor {short_name(name)} (it has {len(self.tensors)}: "
                f"{first_few(list(self.tensors))}); check that it is the right checkpoint"
            )
        return self.tensors[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        info = self._require(name)
        tensor = self._read(name, 0, info.nbytes).view(info.torch_dtype).reshape(info.shape)
        refuse_non_finite(tensor, self.path, name)
        return tensor

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor's first dimension, reading only their bytes (no memory map)."""
        info = self._require(name)
        if not info.shape or not 0 <= start <= stop <= info.shape[0]:
            raise ValueError(f"rows {start}:{stop} are not rows of tensor {name!r} of shape {list(info.shape)}")
        row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
        data = self._read(name, start * row_bytes, (stop - start) * row_bytes)
        return data.view(info.torch_dtype).reshape(stop - start, *info.shape[1:])

    def _read(self, name: str, offset: int, nbytes: int) -> torch.Tensor:
        data = torch.empty(nbytes, dtype=torch.uint8)
        buffer = memoryview(data.numpy())
        try:
            self._file.seek(self._positions[name] + offset)
            filled = 0
            while filled < nbytes:
                count = self._file.readinto(buffer[filled:])
                if not count:
                    raise CftoolError(
                        f"{self.path}: truncated while reading tensor {short_name(name)}; "
                        "make sure nothing else is writing the file"
                    )
                filled += count
        except OSError as exc:
            raise self._read_error(name, exc) from None
        return data

    def get_slice(self, name: str) -> Any:
        """A safetensors slice: index it (``s[0:10]``) to read part of a tensor."""
        self._require(name)
        try:
            if self._slices is None:
                self._slices = safe_open(str(self.path), framework="pt", device="cpu")
            return self._slices.get_slice(name)
        except Exception as exc:  # only if the file changed since its header was validated
            raise self._read_error(name, exc) from None

    def _read_error(self, name: str, exc: Exception) -> CftoolError:
        return CftoolError(f"{self.path}: cannot read tensor {short_name(name)} ({one_line(exc)}); check the file")

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def load_all(self) -> dict[str, torch.Tensor]:
        return {name: self[name] for name in self.tensors}

    def close(self) -> None:
        self._file.close()
        if self._slices is not None:
            self._slices.__exit__(None, None, None)
            self._slices = None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _short_hash(digest: str) -> str:
    return digest[:12] if digest else "unknown"


def open_checkpoint(
    path: str | os.PathLike[str],
    kind: str | tuple[str, ...] | None = None,
    base_sha256: str | None = None,
    base: str | None = None,
    base_arch: dict | None = None,
) -> CheckpointReader:
    """Open a cftool checkpoint after checking its header, kind and base weights.

    ``base_sha256`` is the hash of the base weights in use (``base`` its spec, for the message) and ``base_arch``
    its architecture; what a file does not record cannot be checked and is accepted.
    """
    tensors, metadata, positions = scan_file(path)
    header = Header.from_metadata(metadata, path)
    if kind is not None:
        wanted = (kind,) if isinstance(kind, str) else tuple(kind)
        if header.kind not in wanted:
            expected = " or ".join(repr(k) for k in wanted)
            raise CftoolError(f"{path}: expected a {expected} checkpoint, found {header.kind!r}")
    check_base(path, header, base_sha256, base, base_arch)
    return CheckpointReader(path, header, tensors, positions)


def check_base(
    path: str | os.PathLike[str],
    header: Header,
    base_sha256: str | None,
    base: str | None = None,
    base_arch: dict | None = None,
) -> None:
    """Refuse a file made for another base than the one in use (``base_sha256`` the hash of its weights, ``base`` its
    spec, ``base_arch`` its architecture): other weights, or the same weights under another architecture. What the
    file or the caller does not record cannot be checked and is accepted."""
    if base_sha256 and header.base_sha256 and header.base_sha256 != base_sha256:
        in_use = f"{base!r} " if base else ""
        raise CftoolError(
            f"{path}: made for base model {header.base!r} (weights sha256 {_short_hash(header.base_sha256)}) "
            f"but the base model in use {in_use}has weights sha256 {_short_hash(base_sha256)}; "
            f"use --zs {header.base}, the base it was made for"
        )
    if base_arch and header.base_arch and header.base_arch != base_arch:
        raise CftoolError(
            f"{path}: made for base model {header.base!r} built with {_arch_difference(header.base_arch, base_arch)}; "
            f"the same weights under another architecture are another model: use --zs {header.base}"
        )


def _arch_difference(made_for: dict, in_use: dict) -> str:
    """``quick_gelu=True (the model in use: False)``: the settings where two model configs differ."""

    def flat(config: dict, prefix: str = "") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in config.items():
            items.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return items

    made, used = flat(made_for), flat(in_use)
    differing = [key for key in sorted(made.keys() | used.keys()) if made.get(key) != used.get(key)]
    return ", ".join(f"{key}={made.get(key)!r} (the model in use: {used.get(key)!r})" for key in differing[:3])


def check_shapes(
    path: str | os.PathLike[str],
    found: Mapping[str, TensorInfo] | Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
) -> None:
    """Raise CftoolError naming the first offenders if ``found`` does not match ``expected``."""

    def shape_of(value: TensorInfo | tuple[int, ...]) -> tuple[int, ...]:
        return value.shape if isinstance(value, TensorInfo) else tuple(value)

    found_shapes = {name: shape_of(value) for name, value in found.items()}
    missing = [name for name in expected if name not in found_shapes]
    unexpected = [name for name in found_shapes if name not in expected]
    wrong = [name for name, shape in expected.items() if name in found_shapes and found_shapes[name] != tuple(shape)]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({first_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({first_few(unexpected)})")
    if wrong:
        details = ", ".join(
            f"{short_name(name)}: expected {format_shape(tuple(expected[name]))}, "
            f"found {format_shape(found_shapes[name])}"
            for name in wrong[:3]
        )
        problems.append(f"{len(wrong)} with the wrong shape ({details}{', ...' if len(wrong) > 3 else ''})")
    raise CftoolError(
        f"{path}: tensors do not match the expected model: {', '.join(problems)}; "
        "check that it was made for this base model and method"
    )


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is already contiguous on the CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # Viewing as uint8 rather than calling .numpy() on the tensor keeps bf16 and float8 working.
    return memoryview(flat.view(torch.uint8).numpy())


@dataclass(frozen=True)
class _Slot:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


class CheckpointWriter:
    """Write a checkpoint atomically (see ``atomic_output``), streaming tensors in any order.

    The layout (every tensor's dtype and shape) is fixed up front, so the header is written first
    and each ``write`` puts one tensor at its place; nothing but the tensor being written is held.
    ``header=None`` writes a plain safetensors file without cftool metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
        header: Header | None,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.overwrite = overwrite
        refuse_existing(self.path, overwrite)
        self._slots: dict[str, _Slot] = {}
        offset = 0
        for name, (dtype, shape) in layout.items():
            if name == "__metadata__":
                raise ValueError("'__metadata__' is reserved by safetensors and cannot name a tensor")
            shape = tuple(int(d) for d in shape)
            nbytes = math.prod(shape) * dtype.itemsize
            self._slots[name] = _Slot(dtype, shape, offset, offset + nbytes)
            offset += nbytes
        self._header_bytes = _encode_header(self._slots, header.to_metadata() if header else {})
        self._written: set[str] = set()
        self._rows_written: dict[str, int] = {}
        self._file: BinaryIO | None = None
        self._cleanup = ExitStack()

    def __enter__(self) -> CheckpointWriter:
        with ExitStack() as stack:  # undoes what was set up if a later step fails
            temp = stack.enter_context(atomic_output(self.path, self.overwrite))
            try:
                self._file = stack.enter_context(open(temp, "wb"))
                self._file.write(self._header_bytes)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            self._cleanup = stack.pop_all()
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor of the layout; it must match the layout's dtype and shape."""
        if self._file is None or self._file.closed:
            raise RuntimeError("CheckpointWriter.write called outside its with-block")
        slot = self._slots.get(name)
        if slot is None:
            raise ValueError(f"tensor {name!r} is not in the layout of {self.path}")
        if name in self._written or name in self._rows_written:
            raise ValueError(f"tensor {name!r} was already written to {self.path}")
        if tensor.dtype != slot.dtype or tuple(tensor.shape) != slot.shape:
            raise ValueError(
                f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, "
                f"but the layout of {self.path} says {slot.dtype} {list(slot.shape)}"
            )
        if slot.end > slot.begin:
            position = len(self._header_bytes) + slot.begin
            try:
                if self._file.tell() != position:
                    self._file.seek(position)
                self._file.write(_tensor_bytes(tensor))
            except OSError as exc:
                raise write_error(self.path, exc) from None
        self._written.add(name)

    def write_rows(self, name: str, start: int, rows: torch.Tensor) -> None:
        """Write rows ``start:start + len(rows)`` of a tensor of the layout, in order: a large tensor then never
        needs to be held whole. The tensor counts as written once its last row is."""
        if self._file is None or self._file.closed:
            raise RuntimeError("CheckpointWriter.write_rows called outside its with-block")
        slot = self._slots.get(name)
        if slot is None:
            raise ValueError(f"tensor {name!r} is not in the layout of {self.path}")
        if not slot.shape:
            raise ValueError(f"tensor {name!r} of {self.path} has no rows (it is 0-d); use write")
        done = self._rows_written.get(name, 0)
        if name in self._written or start != done:
            raise ValueError(f"rows of tensor {name!r} must be written in order: expected row {done}, got {start}")
        if rows.dtype != slot.dtype or tuple(rows.shape[1:]) != slot.shape[1:] or start + len(rows) > slot.shape[0]:
            raise ValueError(
                f"rows {start}:{start + len(rows)} of tensor {name!r} are {rows.dtype} {list(rows.shape)}, "
                f"but the layout of {self.path} says {slot.dtype} {list(slot.shape)}"
            )
        row_bytes = (slot.end - slot.begin) // slot.shape[0] if slot.shape[0] else 0
        if len(rows) and row_bytes:
            position = len(self._header_bytes) + slot.begin + start * row_bytes
            try:
                if self._file.tell() != position:
                    self._file.seek(position)
                self._file.write(_tensor_bytes(rows))
            except OSError as exc:
                raise write_error(self.path, exc) from None
        self._rows_written[name] = start + len(rows)
        if start + len(rows) == slot.shape[0]:
            self._written.add(name)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._cleanup.__exit__(type(error), error, error.__traceback__)
                raise
        # Closes the file, then renames it into place, or removes it if the block raised.
        self._cleanup.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        assert self._file is not None
        unwritten = [name for name in self._slots if name not in self._written]
        if unwritten:
            raise ValueError(
                f"{self.path}: {len(unwritten)} tensors of the layout were never written ({first_few(unwritten)})"
            )
        try:
            self._file.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from None


def _encode_header(slots: Mapping[str, _Slot], metadata: Mapping[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    for name, slot in slots.items():
        entries[name] = {
            "dtype": safetensors_dtype(slot.dtype),
            "shape": list(slot.shape),
            "data_offsets": [slot.begin, slot.end],
        }
    encoded = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # The spec pads the header with spaces so that tensor data starts 8-byte aligned.
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def save_checkpoint(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    header: Header | None,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors`` (in their mapping order) atomically; ``header=None`` gives a plain safetensors file."""
    layout = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}
    with CheckpointWriter(path, layout, header, overwrite=overwrite) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    return writer.path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor] | CheckpointReader) -> str:
    """A content hash of named tensors, independent of file layout, device and memory layout.

    Covers sorted names, dtypes, shapes and raw bytes; tensors are read one at a time.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors.keys()):
        tensor = tensors[name]
        # dtype and shape fix the byte count that follows, so the stream is unambiguous.
        record = json.dumps([name, safetensors_dtype(tensor.dtype), list(tensor.shape)], ensure_ascii=False)
        digest.update(record.encode("utf-8") + b"\n")
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()
