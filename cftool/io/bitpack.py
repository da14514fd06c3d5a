"""Boolean masks stored one bit per element (ConDU trigger masks, docs/design.md §4).

Bit order is little-endian within each byte: element ``i`` of the flattened (row-major) mask is bit
``i % 8`` (value ``1 << (i % 8)``) of byte ``i // 8``, the same as
``numpy.packbits(mask, bitorder="little")``. Unused bits of the last byte are zero.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from cftool.errors import CftoolError


def packed_length(shape: Sequence[int]) -> int:
    """Number of bytes ``pack_bits`` produces for a mask of this shape."""
    return (math.prod(shape) + 7) // 8


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor of any shape into a flat uint8 tensor on the same device."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_bits needs a bool tensor, got {mask.dtype}")
    flat = mask.reshape(-1)
    padded = torch.zeros(packed_length(mask.shape) * 8, dtype=torch.uint8, device=mask.device)
    padded[: flat.numel()] = flat
    bits = padded.view(-1, 8)
    # Accumulating column by column keeps the extra memory at one byte per 8 elements.
    packed = bits[:, 0].clone()
    for bit in range(1, 8):
        packed |= bits[:, bit] << bit
    return packed


def unpack_bits(
    packed: torch.Tensor,
    shape: Sequence[int],
    source: str | os.PathLike[str] = "packed mask",
) -> torch.Tensor:
    """Inverse of ``pack_bits``: a bool tensor of ``shape``.

    ``source`` (e.g. the file the bytes came from) starts the error message when the packed
    length does not match the shape.
    """
    shape = tuple(int(d) for d in shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise CftoolError(
            f"{source}: a packed mask must be a 1-D uint8 tensor, found {packed.dtype} {list(packed.shape)}; "
            "the file is damaged or not a cftool trigger, re-create it"
        )
    expected = packed_length(shape)
    if packed.numel() != expected:
        raise CftoolError(
            f"{source}: packed mask has {packed.numel()} bytes but shape {list(shape)} needs {expected}; "
            "the file is damaged or was made for another model, re-create it"
        )
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return bits.reshape(-1)[: math.prod(shape)].to(torch.bool).reshape(shape)


# Set bits of every byte value: counting a packed mask's ones is then one gather and one sum.
_BITS_IN_BYTE = torch.tensor([bin(value).count("1") for value in range(256)], dtype=torch.uint8)


def count_set_bits(packed: torch.Tensor) -> int:
    """How many elements of a packed mask are True (its unused last bits are zero)."""
    return int(_BITS_IN_BYTE[packed.long()].sum(dtype=torch.int64))
