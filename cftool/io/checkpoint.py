"""cftool checkpoint files: safetensors with ``cftool.*`` metadata (DESIGN.md §4).

Reading parses and validates the safetensors header ourselves, so that a corrupt or foreign file
fails with one clear line instead of a library traceback; tensors are then read lazily, one at a
time, through ``safetensors.safe_open``. Writing streams tensors into a temporary file next to the
target and renames it into place only once every tensor is on disk.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import secrets
import stat
import struct
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open

from cftool.errors import CftoolError
from cftool.io.inputs import note_input, refuse_input_overwrite

FORMAT_VERSION = "1"
KINDS = ("model", "prompt", "head", "lora", "delta", "unified", "trigger", "prototypes")

# The limit the safetensors library itself enforces; a larger length means the file is not one.
_MAX_HEADER_BYTES = 100_000_000
# safetensors stores shapes and offsets as u64; anything larger cannot come from a real file.
_U64_MAX = 2**64 - 1

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}  # fmt: skip

# Older torch releases lack some of these dtypes; files holding them then fail with a clear error.
_TORCH_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attribute)
    for name, attribute in {
        "BOOL": "bool", "U8": "uint8", "I8": "int8",
        "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16",
        "I32": "int32", "U32": "uint32", "F32": "float32",
        "I64": "int64", "U64": "uint64", "F64": "float64", "C64": "complex64",
        "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
        "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    }.items()
    if hasattr(torch, attribute)
}  # fmt: skip
_DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in _TORCH_DTYPES.items()}

_KEY_FORMAT = "cftool.format"
_KEY_KIND = "cftool.kind"
_KEY_BASE = "cftool.base"
_KEY_BASE_SHA256 = "cftool.base_sha256"
_KEY_BASE_ARCH = "cftool.base_arch"
_KEY_TASK = "cftool.task"
_KEY_CLASSNAMES = "cftool.classnames"
_KEY_TEMPLATE = "cftool.template"
_KEY_METHOD = "cftool.method"
_KEY_CONFIG = "cftool.config"
_RESERVED_KEYS = frozenset(
    {
        _KEY_FORMAT, _KEY_KIND, _KEY_BASE, _KEY_BASE_SHA256, _KEY_BASE_ARCH, _KEY_TASK,
        _KEY_CLASSNAMES, _KEY_TEMPLATE, _KEY_METHOD, _KEY_CONFIG,
    }
)  # fmt: skip


def safetensors_dtype(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype ("F32", "BF16", ...)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"safetensors cannot store tensors of dtype {dtype}") from None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _short_name(name: str) -> str:
    """A tensor name fit for a one-line message, even when a corrupt header makes it huge."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _first_few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(_short_name(n) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _format_shape(shape: tuple[int, ...]) -> str:
    return str(list(shape))


def check_input_file(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it names a readable regular file, else raise CftoolError."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CftoolError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise CftoolError(f"{path}: cannot read ({exc.strerror}); check the path and its permissions") from None
    if stat.S_ISDIR(info.st_mode):
        raise CftoolError(f"{path}: is a folder, not a checkpoint file; name the file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise CftoolError(f"{path}: is not a regular file; name a checkpoint file")
    note_input(path)
    return path


@dataclass
class Header:
    """The ``cftool.*`` entries of a checkpoint's safetensors metadata."""

    kind: str
    base: str
    base_sha256: str = ""
    # open_clip's model config of the base as built (activation included): equal weights under another
    # architecture, e.g. GELU instead of QuickGELU, are another base.
    base_arch: dict | None = None
    task: str | None = None
    classnames: list[str] | None = None
    template: str | None = None
    method: str | None = None
    config: dict | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        if self.kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        clashing = sorted(_RESERVED_KEYS & self.extra.keys())
        if clashing:
            raise ValueError(f"Header.extra must not set cftool's own keys: {', '.join(clashing)}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.extra.items()):
            raise TypeError("Header.extra must map strings to strings")
        metadata = {_KEY_FORMAT: FORMAT_VERSION, _KEY_KIND: self.kind, _KEY_BASE: self.base}
        if self.base_sha256:
            metadata[_KEY_BASE_SHA256] = self.base_sha256
        if self.base_arch is not None:
            metadata[_KEY_BASE_ARCH] = json.dumps(self.base_arch, sort_keys=True)
        if self.task is not None:
            metadata[_KEY_TASK] = self.task
        if self.classnames is not None:
            metadata[_KEY_CLASSNAMES] = json.dumps(list(self.classnames), ensure_ascii=False)
        if self.template is not None:
            metadata[_KEY_TEMPLATE] = self.template
        if self.method is not None:
            metadata[_KEY_METHOD] = self.method
        if self.config is not None:
            metadata[_KEY_CONFIG] = json.dumps(self.config, ensure_ascii=False, sort_keys=True)
        metadata.update(self.extra)
        return metadata

    @classmethod
    def from_metadata(cls, md: Mapping[str, str], path: str | os.PathLike[str]) -> Header:
        """Parse metadata read from ``path``; CftoolError if it is not a valid cftool header."""
        version = md.get(_KEY_FORMAT)
        if version is None:
            raise CftoolError(
                f"{path}: not a cftool checkpoint (no {_KEY_FORMAT} in metadata); convert it with `cftool import`"
            )
        if version != FORMAT_VERSION:
            raise CftoolError(
                f"{path}: cftool checkpoint format {version!r} is not supported "
                f"(this cftool reads format {FORMAT_VERSION!r}); use the cftool version that wrote it"
            )
        kind = md.get(_KEY_KIND)
        if kind is None:
            raise CftoolError(f"{path}: no {_KEY_KIND} in metadata; the file is damaged, re-create it")
        if kind not in KINDS:
            raise CftoolError(
                f"{path}: unknown checkpoint kind {kind!r} (known: {', '.join(KINDS)}); it may come from a newer cftool"
            )
        base = md.get(_KEY_BASE)
        if base is None:
            raise CftoolError(f"{path}: no {_KEY_BASE} in metadata; the file is damaged, re-create it")
        classnames = _parse_json_field(md, _KEY_CLASSNAMES, path)
        if classnames is not None and not (
            isinstance(classnames, list) and all(isinstance(c, str) for c in classnames)
        ):
            raise CftoolError(f"{path}: {_KEY_CLASSNAMES} is not a JSON list of strings; re-create the file")
        config = _parse_json_field(md, _KEY_CONFIG, path)
        if config is not None and not isinstance(config, dict):
            raise CftoolError(f"{path}: {_KEY_CONFIG} is not a JSON object; re-create the file")
        base_arch = _parse_json_field(md, _KEY_BASE_ARCH, path)
        if base_arch is not None and not isinstance(base_arch, dict):
            raise CftoolError(f"{path}: {_KEY_BASE_ARCH} is not a JSON object; re-create the file")
        return cls(
            kind=kind,
            base=base,
            base_sha256=md.get(_KEY_BASE_SHA256, ""),
            base_arch=base_arch,
            task=md.get(_KEY_TASK),
            classnames=classnames,
            template=md.get(_KEY_TEMPLATE),
            method=md.get(_KEY_METHOD),
            config=config,
            extra={k: v for k, v in md.items() if k not in _RESERVED_KEYS},
        )


def _parse_json_field(md: Mapping[str, str], key: str, path: str | os.PathLike[str]) -> Any:
    text = md.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CftoolError(f"{path}: {key} is not valid JSON ({_one_line(exc)}); re-create the file") from None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BITS[self.dtype] // 8

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype (always defined for tensors of a CheckpointReader, which checks it)."""
        try:
            return _TORCH_DTYPES[self.dtype]
        except KeyError:
            raise ValueError(f"tensor {self.name!r} has dtype {self.dtype}, which torch cannot hold") from None


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_short_name(key)}")
        result[key] = value
    return result


def _reject_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _is_u64(value: object) -> bool:
    # bool is an int subclass in Python, but `true` is not a number in JSON.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def _is_utf8_text(value: object) -> bool:
    """True for a str that can be written back as UTF-8 (no lone surrogates from \\ud800 escapes)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_RECOPY = "check that it is the right file and was copied completely"


def _bad_file(path: Path, what: str, todo: str = _RECOPY) -> CftoolError:
    return CftoolError(f"{path}: {what}; {todo}")


def _corrupt_header(path: Path, what: str) -> CftoolError:
    return _bad_file(path, f"corrupt safetensors header ({what})")


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header against the file's size.

    Returns the tensors in file order and the ``__metadata__`` (empty when absent). Any problem,
    from a missing file to data offsets that do not tile the data exactly, raises a one-line
    CftoolError. What this accepts, ``safetensors.safe_open`` accepts too.
    """
    tensors, metadata, _ = _scan_file(path)
    return tensors, metadata


def _scan_file(path: str | os.PathLike[str]) -> tuple[dict[str, TensorInfo], dict[str, str], dict[str, int]]:
    """``read_header``, plus where each tensor's data starts in the file."""
    path = check_input_file(path)
    raw_header, data_size = _read_raw_header(path)
    data_start = 8 + len(raw_header)
    entries = _parse_header_json(path, raw_header)

    metadata = entries.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not (isinstance(metadata, dict) and all(_is_utf8_text(k) and _is_utf8_text(v) for k, v in metadata.items())):
        raise _corrupt_header(path, "__metadata__ must map strings to strings")

    located = [_parse_entry(path, name, entry) for name, entry in entries.items()]
    # Sorting by offsets (as safetensors does) lets one pass check that the data is tiled exactly.
    located.sort(key=lambda item: item[0])
    expected_begin = 0
    for (begin, end), info in located:
        name = _short_name(info.name)
        if begin != expected_begin:
            relation = "overlaps the previous tensor" if begin < expected_begin else "leaves a gap before it"
            raise _corrupt_header(path, f"tensor {name} starts at byte {begin}, which {relation}")
        nbits = _checked_numel(info.shape) * DTYPE_BITS[info.dtype]
        if nbits > _U64_MAX or nbits % 8:
            raise _corrupt_header(path, f"tensor {name}: shape {_format_shape(info.shape)} is invalid for {info.dtype}")
        if end - begin != nbits // 8:
            raise _corrupt_header(
                path,
                f"tensor {name} is {info.dtype} {_format_shape(info.shape)}, {nbits // 8} bytes, "
                f"but its data offsets span {end - begin}",
            )
        expected_begin = end
    if expected_begin > data_size:
        raise _bad_file(
            path,
            f"truncated: header says {expected_begin} bytes of tensor data, file has {data_size}",
            "re-copy or re-create it",
        )
    if expected_begin < data_size:
        raise _bad_file(
            path,
            f"corrupt: {data_size - expected_begin} unexpected bytes after the tensor data",
            "re-copy or re-create it",
        )
    tensors = {info.name: info for _, info in located}
    positions = {info.name: data_start + begin for (begin, _), info in located}
    return tensors, metadata, positions


def _read_raw_header(path: Path) -> tuple[bytes, int]:
    """The header's bytes and the size of the data section that follows them."""
    try:
        with open(path, "rb") as file:
            file_size = os.fstat(file.fileno()).st_size
            prefix = file.read(8)
            if len(prefix) < 8:
                raise _bad_file(path, f"not a safetensors file ({file_size} bytes, too short to hold a header)")
            header_length = int.from_bytes(prefix, "little")
            if header_length > file_size - 8:
                raise _bad_file(
                    path, f"not a safetensors file (header length 0x{header_length:x} exceeds file size {file_size})"
                )
            if header_length > _MAX_HEADER_BYTES:
                raise _bad_file(
                    path, f"not a safetensors file (header length {header_length} is over the 100 MB limit)"
                )
            raw_header = file.read(header_length)
    except OSError as exc:
        raise _bad_file(path, f"cannot read ({exc.strerror})", "check the file and its permissions") from None
    if len(raw_header) < header_length:
        raise _bad_file(path, "the file shrank while being read", "make sure nothing else is writing it")
    return raw_header, file_size - 8 - header_length


def _parse_header_json(path: Path, raw_header: bytes) -> dict[str, Any]:
    try:
        text = raw_header.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_file(path, "not a safetensors file (header is not UTF-8 text)") from None
    if not text.lstrip(" \t\r\n").startswith("{"):
        raise _bad_file(path, "not a safetensors file (header is not a JSON object)")
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_json_constant)
    except (ValueError, RecursionError) as exc:
        raise _bad_file(path, f"not a safetensors file (header is not valid JSON: {_one_line(exc)})") from None


def _parse_entry(path: Path, name: str, entry: object) -> tuple[tuple[int, int], TensorInfo]:
    """Check one tensor entry's field types; return its data offsets and info."""
    shown = _short_name(name)
    if not _is_utf8_text(name):
        raise _corrupt_header(path, "a tensor name is not valid UTF-8")
    if not isinstance(entry, dict):
        raise _corrupt_header(path, f"entry for tensor {shown} is not a JSON object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise _corrupt_header(path, f"tensor {shown} has no {key}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        unknown = _one_line(repr(dtype))[:40]
        raise _bad_file(path, f"tensor {shown} has unknown dtype {unknown}", "it may need a newer cftool")
    if not (isinstance(shape, list) and all(_is_u64(d) for d in shape)):
        raise _corrupt_header(path, f"shape of tensor {shown} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_u64(o) for o in offsets)):
        raise _corrupt_header(path, f"data_offsets of tensor {shown} is not a pair of non-negative integers")
    begin, end = offsets
    if end < begin:
        raise _corrupt_header(path, f"data_offsets of tensor {shown} end before they begin")
    return (begin, end), TensorInfo(name, dtype, tuple(shape))


def _checked_numel(shape: tuple[int, ...]) -> int:
    # Mirrors safetensors' overflow check, so a shape we accept is one the library accepts too.
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > _U64_MAX:
            return _U64_MAX + 1
    return numel


class CheckpointReader:
    """An open cftool checkpoint; tensors are read lazily, one at a time.

    ``reader[name]`` reads the tensor's bytes into a fresh tensor rather than viewing a memory map:
    touched pages of a map count as resident memory until it is unmapped, so streaming through a
    few large files would otherwise grow the process to their total size; ``read_rows`` reads part of a
    tensor the same way. ``get_slice`` uses ``safetensors.safe_open`` (opened on first use), whose map
    does count. Use as a context manager or call ``close``.
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
        unloadable = [info.name for info in tensors.values() if info.dtype not in _TORCH_DTYPES]
        if unloadable:
            raise CftoolError(
                f"{self.path}: {len(unloadable)} tensors ({_first_few(unloadable)}) have dtypes torch cannot hold "
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
                f"{self.path}: has no tensor {_short_name(name)} (it has {len(self.tensors)}: "
                f"{_first_few(list(self.tensors))}); check that it is the right checkpoint"
            )
        return self.tensors[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        info = self._require(name)
        return self._read(name, 0, info.nbytes).view(info.torch_dtype).reshape(info.shape)

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
                        f"{self.path}: truncated while reading tensor {_short_name(name)}; "
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
        return CftoolError(f"{self.path}: cannot read tensor {_short_name(name)} ({_one_line(exc)}); check the file")

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
    tensors, metadata, positions = _scan_file(path)
    header = Header.from_metadata(metadata, path)
    if kind is not None:
        wanted = (kind,) if isinstance(kind, str) else tuple(kind)
        if header.kind not in wanted:
            expected = " or ".join(repr(k) for k in wanted)
            raise CftoolError(f"{path}: expected a {expected} checkpoint, found {header.kind!r}")
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
    return CheckpointReader(path, header, tensors, positions)


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
    wrong = [
        name for name, shape in expected.items()
        if name in found_shapes and found_shapes[name] != tuple(shape)
    ]  # fmt: skip
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_first_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first_few(unexpected)})")
    if wrong:
        details = ", ".join(
            f"{_short_name(name)}: expected {_format_shape(tuple(expected[name]))}, "
            f"found {_format_shape(found_shapes[name])}"
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


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Commands call this before any work too, so that a long run never ends in a refusal to write."""
    if path.is_dir():
        raise CftoolError(f"{path} is a folder; name an output file")
    refuse_input_overwrite(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise CftoolError(f"{path} exists; pass --force to overwrite")


def refuse_input_as_output(output: Path, inputs: list[Path]) -> None:
    """An output that is one of the inputs would be replaced while it is still being read: refuse it."""
    target = os.path.realpath(output)
    for source in inputs:
        if os.path.realpath(source) == target:
            raise CftoolError(f"{output}: is also an input of this command; name a different output file")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _write_error(path: Path, exc: OSError) -> CftoolError:
    if exc.errno in _DISK_FULL:
        return CftoolError(f"{path}: the disk is full ({exc.strerror}); nothing was written: free space and rerun")
    return CftoolError(f"{path}: cannot write ({exc.strerror or exc}); check free space and permissions")


class _WriteErrorKept:
    """A file whose write errors are kept: torch's zip writer turns a failed write into an unrelated RuntimeError."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def torch_save(obj: Any, temp: Path) -> None:
    """``torch.save`` into a temporary file of ``atomic_output``, a failed write raised as the OSError it was."""
    with open(temp, "wb") as file:
        kept = _WriteErrorKept(file)
        try:
            torch.save(obj, kept)
        except RuntimeError:
            if kept.error is not None:
                raise kept.error from None
            raise


def check_writable(path: Path) -> None:
    """Fail now, in one line, if ``path`` could not be written later: its folder is created and a file is made and
    removed in it. Commands call this before long work, so that no run is lost to its output."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_temp_file(path.parent, path.name).unlink()
    except OSError as exc:
        raise _write_error(path, exc) from None


@contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends it is synced and renamed to ``path``.

    An existing ``path`` without ``overwrite`` is refused before anything is written; a missing
    folder is created. On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        temp = _create_temp_file(path.parent, path.name)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        try:
            yield temp
        except OSError as exc:
            if exc.errno in _DISK_FULL:  # whatever wrote into the temporary file; other errors are the block's own
                raise _write_error(path, exc) from None
            raise
        try:
            _fsync_path(temp)
            # Checked again because the target may have appeared while we were writing.
            refuse_existing(path, overwrite)
            os.replace(temp, path)
            _fsync_path(path.parent)  # makes the rename itself durable
        except OSError as exc:
            raise _write_error(path, exc) from None
    finally:
        temp.unlink(missing_ok=True)


def _remove_orphans(path: Path) -> None:
    """Temporary files of ``path`` that a killed run left behind: the next write of ``path`` replaces them."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if orphan.is_file() and not orphan.is_symlink():
            orphan.unlink(missing_ok=True)


def _create_temp_file(folder: Path, target_name: str) -> Path:
    # Not tempfile.mkstemp: its 0600 mode would stick to the final file; os.open honours the umask.
    while True:
        candidate = folder / f".{target_name}.tmp-{secrets.token_hex(4)}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
                raise _write_error(self.path, exc) from None
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
                raise _write_error(self.path, exc) from None
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
                raise _write_error(self.path, exc) from None
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
                f"{self.path}: {len(unwritten)} tensors of the layout were never written ({_first_few(unwritten)})"
            )
        try:
            self._file.flush()
        except OSError as exc:
            raise _write_error(self.path, exc) from None


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
