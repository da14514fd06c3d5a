"""The header of a cftool checkpoint file: the safetensors header, parsed and validated here, and the ``cftool.*``
metadata (docs/design.md §4), without importing torch: `cftool inspect` and the commands' checks read files through
this alone. `cftool.io.checkpoint` reads and writes the tensors.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cftool.errors import CftoolError
from cftool.io.command_files import note_input

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = "1"
# The checkpoint kinds (`cftool.kind`, docs/design.md §4): what a file holds, and so what reads it.
MODEL_KIND = "model"  # a whole open_clip model's weights
PROMPT_KIND = "prompt"  # CoOp's context vectors
HEAD_KIND = "head"  # a linear classifier on image features
LORA_KIND = "lora"  # LoRA factors of a base's weights
DELTA_KIND = "delta"  # a task vector: weights minus the base's
UNIFIED_KIND = "unified"  # ConDU's unified set: one delta, and each task's mask and scale
PROTOTYPES_KIND = "prototypes"  # a task's class prototypes for ConDU's router
KINDS = (MODEL_KIND, PROMPT_KIND, HEAD_KIND, LORA_KIND, DELTA_KIND, UNIFIED_KIND, PROTOTYPES_KIND)
PROTOTYPES_TENSOR = "prototypes"  # the one tensor of a `prototypes` file, [classes, embed_dim]

# The limit the safetensors library itself enforces; a larger length means the file is not one.
_MAX_HEADER_BYTES = 100_000_000
# safetensors stores shapes and offsets as u64; anything larger cannot come from a real file.
_U64_MAX = 2**64 - 1

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}


@cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype names → torch dtypes; older torch releases lack some, and files holding them then fail with
    a clear error."""
    import torch

    attributes = {
        "BOOL": "bool",
        "U8": "uint8",
        "I8": "int8",
        "I16": "int16",
        "U16": "uint16",
        "F16": "float16",
        "BF16": "bfloat16",
        "I32": "int32",
        "U32": "uint32",
        "F32": "float32",
        "I64": "int64",
        "U64": "uint64",
        "F64": "float64",
        "C64": "complex64",
        "F8_E5M2": "float8_e5m2",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E8M0": "float8_e8m0fnu",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
    }
    return {name: getattr(torch, attribute) for name, attribute in attributes.items() if hasattr(torch, attribute)}


_KEY_FORMAT = "cftool.format"
_KEY_KIND = "cftool.kind"
_KEY_BASE = "cftool.base"
_KEY_BASE_SHA256 = "cftool.base_sha256"
_KEY_BASE_ARCH = "cftool.base_arch"
_KEY_BASE_PREPROCESS = "cftool.base_preprocess"
_KEY_TASK = "cftool.task"
_KEY_CLASSNAMES = "cftool.classnames"
_KEY_TEMPLATE = "cftool.template"
_KEY_METHOD = "cftool.method"
_KEY_CONFIG = "cftool.config"
_KEY_RUN = "cftool.run"
_RESERVED_KEYS = frozenset(
    {
        _KEY_FORMAT,
        _KEY_KIND,
        _KEY_BASE,
        _KEY_BASE_SHA256,
        _KEY_BASE_ARCH,
        _KEY_BASE_PREPROCESS,
        _KEY_TASK,
        _KEY_CLASSNAMES,
        _KEY_TEMPLATE,
        _KEY_METHOD,
        _KEY_CONFIG,
        _KEY_RUN,
    }
)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def short_name(name: str) -> str:
    """A tensor name fit for a one-line message, even when a corrupt header makes it huge."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


def first_few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(short_name(n) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def format_shape(shape: tuple[int, ...]) -> str:
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
    # open_clip's preprocessing config of the base (image size, mean, std, interpolation, resize mode), recorded
    # where only a hub's config says it (`hf-hub:` and `local-dir:` bases): with the architecture, a `model` file
    # is rebuilt without them.
    base_preprocess: dict | None = None
    task: str | None = None
    classnames: list[str] | None = None
    template: str | None = None
    method: str | None = None
    config: dict | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # The fine-tune a task's files come from (the content hash of the tensors it trained), recorded in its checkpoint
    # and its prototypes and carried by what is made from the checkpoint (deltas, unified sets, experts): a
    # checkpoint's files of two different runs are not a pair. Files made before it was recorded have none.
    run: str | None = None

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
        if self.base_preprocess is not None:
            metadata[_KEY_BASE_PREPROCESS] = json.dumps(self.base_preprocess, sort_keys=True)
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
        if self.run is not None:
            metadata[_KEY_RUN] = self.run
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
        base_preprocess = _parse_json_field(md, _KEY_BASE_PREPROCESS, path)
        if base_preprocess is not None and not isinstance(base_preprocess, dict):
            raise CftoolError(f"{path}: {_KEY_BASE_PREPROCESS} is not a JSON object; re-create the file")
        return cls(
            kind=kind,
            base=base,
            base_sha256=md.get(_KEY_BASE_SHA256, ""),
            base_arch=base_arch,
            base_preprocess=base_preprocess,
            task=md.get(_KEY_TASK),
            classnames=classnames,
            template=md.get(_KEY_TEMPLATE),
            method=md.get(_KEY_METHOD),
            config=config,
            extra={k: v for k, v in md.items() if k not in _RESERVED_KEYS},
            run=md.get(_KEY_RUN),
        )


def _parse_json_field(md: Mapping[str, str], key: str, path: str | os.PathLike[str]) -> Any:
    text = md.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CftoolError(f"{path}: {key} is not valid JSON ({one_line(exc)}); re-create the file") from None


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
            return torch_dtypes()[self.dtype]
        except KeyError:
            raise ValueError(f"tensor {self.name!r} has dtype {self.dtype}, which torch cannot hold") from None


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {short_name(key)}")
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
    tensors, metadata, _ = scan_file(path)
    return tensors, metadata


def is_cftool_metadata(metadata: Mapping[str, str]) -> bool:
    """Whether a safetensors file's metadata is a cftool header (other files are plain weights or foreign)."""
    return _KEY_FORMAT in metadata


def read_cftool_header(path: str | os.PathLike[str]) -> Header:
    """The ``cftool.*`` header of a checkpoint file, read without its tensors (and without torch)."""
    return Header.from_metadata(read_header(path)[1], path)


def scan_file(path: str | os.PathLike[str]) -> tuple[dict[str, TensorInfo], dict[str, str], dict[str, int]]:
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
        name = short_name(info.name)
        if begin != expected_begin:
            relation = "overlaps the previous tensor" if begin < expected_begin else "leaves a gap before it"
            raise _corrupt_header(path, f"tensor {name} starts at byte {begin}, which {relation}")
        nbits = _checked_numel(info.shape) * DTYPE_BITS[info.dtype]
        if nbits > _U64_MAX or nbits % 8:
            raise _corrupt_header(path, f"tensor {name}: shape {format_shape(info.shape)} is invalid for {info.dtype}")
        if end - begin != nbits // 8:
            raise _corrupt_header(
                path,
                f"tensor {name} is {info.dtype} {format_shape(info.shape)}, {nbits // 8} bytes, "
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
        raise _bad_file(path, f"not a safetensors file (header is not valid JSON: {one_line(exc)})") from None


def _parse_entry(path: Path, name: str, entry: object) -> tuple[tuple[int, int], TensorInfo]:
    """Check one tensor entry's field types; return its data offsets and info."""
    shown = short_name(name)
    if not _is_utf8_text(name):
        raise _corrupt_header(path, "a tensor name is not valid UTF-8")
    if not isinstance(entry, dict):
        raise _corrupt_header(path, f"entry for tensor {shown} is not a JSON object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise _corrupt_header(path, f"tensor {shown} has no {key}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        unknown = one_line(repr(dtype))[:40]
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
