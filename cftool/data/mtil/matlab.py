"""MAT-file v5, the format of the Flowers and Stanford Cars label files (scipy.io.loadmat reads them for
torchvision), read without scipy."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator

import numpy as np

_MAT_NUMBER_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8, _MI_UTF16, _MI_UTF32 = 14, 15, 16, 17, 18
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_NUMERIC = range(6, 16)  # double, single, int8 … uint64
_MAT_COMPLEX_FLAG = 0x800
_MAT_TAG_BYTES = 8  # every element starts with a tag this long, so an array holds no more values than its bytes / 8
# What one file may make this reader hold, so that a small file cannot claim gigabytes. The real label files are far
# inside these bounds: the largest, Stanford Cars' training annotations, holds 8,144 records of six small arrays (a
# few MB and some 57,000 values once inflated), nested one level deep.
_MAT_MAX_INFLATED = 64 * 2**20  # bytes inflated from all of a file's compressed variables
_MAT_MAX_VALUES = 1_000_000  # cells, struct records and their fields
_MAT_MAX_DEPTH = 16  # cells and structs within cells and structs
_MAT_MAX_DIMS = 64  # numpy's limit


class _MatBudget:
    """What is left of the bounds above while one file is read."""

    def __init__(self):
        self.inflated = _MAT_MAX_INFLATED
        self.values = _MAT_MAX_VALUES

    def inflate(self, compressed: bytes, order: str) -> bytes:
        """A compressed variable's element, inflated no further than its tag declares and the budget allows
        (zlib.decompress would inflate a bomb whole before its size could be looked at)."""
        inflater = zlib.decompressobj()
        tag = inflater.decompress(compressed, _MAT_TAG_BYTES)
        if len(tag) < _MAT_TAG_BYTES:
            raise ValueError("damaged compressed variable (no element tag)")
        declared = struct.unpack(order + "II", tag)[1]
        if declared > self.inflated:
            raise ValueError(
                f"a compressed variable declares {declared} bytes, more than the {self.inflated} left of the "
                f"{_MAT_MAX_INFLATED} this reader inflates from a label file"
            )
        body = inflater.decompress(inflater.unconsumed_tail, declared)
        if len(body) < declared:
            raise ValueError(f"a compressed variable inflates to {len(body)} of the {declared} bytes it declares")
        # Padding to the next multiple of 8 may follow; anything longer does not belong to the variable.
        if len(inflater.decompress(inflater.unconsumed_tail, _MAT_TAG_BYTES)) == _MAT_TAG_BYTES:
            raise ValueError(f"a compressed variable inflates past the {declared} bytes it declares")
        self.inflated -= declared
        return tag + body

    def spend(self, values: int) -> None:
        if values > self.values:
            raise ValueError(f"more than the {_MAT_MAX_VALUES} cells, records and fields this reader takes from a file")
        self.values -= values


def parse_mat(data: bytes) -> dict[str, object]:
    """A MAT-file v5's variables, shaped as ``loadmat(squeeze_me=True)`` shapes vectors: numeric arrays flat in
    column-major order, char rows as str, cells as lists, struct arrays as lists of dicts."""
    if data.startswith(b"MATLAB 7.3"):
        raise ValueError("a MAT-file v7.3 (HDF5), not v5")
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if len(data) < 128 or order is None:
        raise ValueError("not a MAT-file v5 (no endian mark at byte 126)")
    budget = _MatBudget()
    variables = {}
    for data_type, payload in _mat_elements(data[128:], order):
        if data_type == _MI_COMPRESSED:
            try:
                data_type, payload = next(_mat_elements(budget.inflate(payload, order), order))
            except zlib.error as err:
                raise ValueError(f"damaged compressed variable ({err})") from err
        if data_type != _MI_MATRIX:
            raise ValueError(f"a top-level element of type {data_type}, not a variable")
        name, value = _mat_array(payload, order, budget)
        variables[name] = value
    return variables


def _mat_elements(buffer: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    """(data type, payload) of each data element in ``buffer``."""
    position = 0
    while position < len(buffer):
        if len(buffer) - position < _MAT_TAG_BYTES:
            raise ValueError("truncated data element")
        first, second = struct.unpack_from(order + "II", buffer, position)
        if first >> 16:  # a small element: type and size share the first word, the data fills the second
            if first >> 16 > 4:
                raise ValueError(f"a small data element of {first >> 16} bytes, where 4 fit")
            yield first & 0xFFFF, buffer[position + 4 : position + 4 + (first >> 16)]
            position += _MAT_TAG_BYTES
            continue
        start = position + _MAT_TAG_BYTES
        if start + second > len(buffer):
            raise ValueError(f"truncated data element ({second} bytes declared, {len(buffer) - start} left)")
        yield first, buffer[start : start + second]
        # Elements are padded to 8 bytes, except compressed ones.
        position = start + (second if first == _MI_COMPRESSED else -(-second // 8) * 8)


def _next_element(elements: Iterator[tuple[int, bytes]]) -> tuple[int, bytes]:
    element = next(elements, None)
    if element is None:
        raise ValueError("truncated array")
    return element


def _mat_array(payload: bytes, order: str, budget: _MatBudget, depth: int = 0) -> tuple[str, object]:
    """The name and value of one array (an miMATRIX element's payload), ``depth`` cells or structs down."""
    if not payload:  # an empty array, as cells hold for []
        return "", np.zeros(0)
    if depth > _MAT_MAX_DEPTH:  # deeper, the recursion would exhaust the stack
        raise ValueError(f"cells or structs nested deeper than {_MAT_MAX_DEPTH} levels")
    elements = _mat_elements(payload, order)
    flags = struct.unpack_from(order + "I", _next_element(elements)[1])[0]
    dims_payload = _next_element(elements)[1]
    if len(dims_payload) // 4 > _MAT_MAX_DIMS:
        raise ValueError(f"an array of {len(dims_payload) // 4} dimensions, more than {_MAT_MAX_DIMS}")
    dims = struct.unpack(f"{order}{len(dims_payload) // 4}i", dims_payload)
    name = _next_element(elements)[1].decode("latin1")
    if any(size < 0 for size in dims):
        raise ValueError(f"array '{name}' of dimensions {dims}, which cannot be negative")
    array_class, count = flags & 0xFF, math.prod(dims)
    if array_class in _MX_NUMERIC and not flags & _MAT_COMPLEX_FLAG:
        return name, _mat_numbers(*_next_element(elements), order, count)
    if array_class == _MX_CHAR:
        if count == 0:
            return name, ""
        if dims[0] != 1:
            raise ValueError(f"char array '{name}' of {dims[0]} rows; only single strings are read")
        return name, _mat_text(*_next_element(elements), order)
    if array_class == _MX_CELL:
        _check_count(name, dims, count, payload)
        budget.spend(count)
        return name, [_mat_array(_matrix_payload(elements), order, budget, depth + 1)[1] for _ in range(count)]
    if array_class == _MX_STRUCT:
        name_length = mat_whole_number(_mat_numbers(*_next_element(elements), order, 1))
        field_bytes = _next_element(elements)[1]
        if name_length is None or name_length <= 0:
            raise ValueError(f"struct '{name}' with field names of {name_length} bytes")
        fields = [
            field_bytes[start : start + name_length].split(b"\0", 1)[0].decode("latin1")
            for start in range(0, len(field_bytes), name_length)
        ]
        _check_count(name, dims, count * max(1, len(fields)), payload)
        budget.spend(count * (1 + len(fields)))
        # Element by element (column-major), each element's fields in order.
        return name, [
            {field: _mat_array(_matrix_payload(elements), order, budget, depth + 1)[1] for field in fields}
            for _ in range(count)
        ]
    raise ValueError(f"array '{name}' of class {array_class}, which these label files do not use")


def _check_count(name: str, dims: tuple[int, ...], count: int, payload: bytes) -> None:
    """Each of an array's ``count`` elements takes a tag at least: dimensions that claim more are refused before any
    is read."""
    if count * _MAT_TAG_BYTES > len(payload):
        raise ValueError(f"array '{name}' of dimensions {dims} claims more elements than its {len(payload)} bytes hold")


def _matrix_payload(elements: Iterator[tuple[int, bytes]]) -> bytes:
    data_type, payload = _next_element(elements)
    if data_type != _MI_MATRIX:
        raise ValueError(f"an element of type {data_type} where an array belongs")
    return payload


def _mat_numbers(data_type: int, payload: bytes, order: str, count: int | None = None) -> np.ndarray:
    if data_type not in _MAT_NUMBER_TYPES:
        raise ValueError(f"numbers of unknown type {data_type}")
    values = np.frombuffer(payload, dtype=np.dtype(order + _MAT_NUMBER_TYPES[data_type]))
    if count is not None and values.size != count:
        raise ValueError(f"{values.size} numbers for an array of {count}")
    return values


def _mat_text(data_type: int, payload: bytes, order: str) -> str:
    if data_type == _MI_UTF8:
        return payload.decode("utf-8")
    if data_type in (_MI_UTF16, _MI_UTF32):
        width = 16 if data_type == _MI_UTF16 else 32
        return payload.decode(f"utf-{width}-{'le' if order == '<' else 'be'}")
    # MATLAB stores most text as one UTF-16 code unit per character, as uint16 (or uint8, or any number type).
    codes = _mat_numbers(data_type, payload, order)
    not_codes = ~is_whole(codes) | (codes < 0) | (codes > 0xFFFF)
    if not_codes.any():
        raise ValueError(f"char array holding {codes[not_codes][0]}, which is no character code")
    return codes.astype("<u2").tobytes().decode("utf-16-le")


def is_whole(values: np.ndarray) -> np.ndarray:
    """Elementwise: finite, with no fractional part."""
    return np.isfinite(values) & (values == np.round(values))


def mat_whole_number(value: object) -> int | None:
    """The whole number a one-element numeric array holds, as annotation fields and struct headers do; else None."""
    if isinstance(value, np.ndarray) and value.size == 1 and is_whole(value).all():
        return int(value.reshape(-1)[0])
    return None


def mat_shown(value: object) -> str:
    """A value as an error names it: a one-element array by its number."""
    return str(value.reshape(-1)[0]) if isinstance(value, np.ndarray) and value.size == 1 else repr(value)
