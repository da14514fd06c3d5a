import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cftool.errors import CftoolError
from cftool.io.bitpack import pack_bits, packed_length, unpack_bits


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9), max_size=4),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_round_trip_is_exact_for_any_shape(shape, density, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=generator) < density

    packed = pack_bits(mask)

    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_length(shape) == (mask.numel() + 7) // 8
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy().reshape(-1), bitorder="little"))
    restored = unpack_bits(packed, shape)
    assert restored.dtype == torch.bool and restored.shape == mask.shape
    assert torch.equal(restored, mask)


def test_bit_order_is_little_endian_within_each_byte():
    mask = torch.tensor([True, False, False, False, False, False, False, True, False, True])
    assert pack_bits(mask).tolist() == [0b1000_0001, 0b0000_0010]


def test_scalar_and_empty_masks():
    assert pack_bits(torch.tensor(True)).tolist() == [1]
    assert unpack_bits(torch.tensor([1], dtype=torch.uint8), ()).item() is True
    empty = torch.zeros(3, 0, dtype=torch.bool)
    assert pack_bits(empty).numel() == 0
    assert unpack_bits(pack_bits(empty), (3, 0)).shape == (3, 0)


def test_non_contiguous_masks_pack_in_logical_order():
    mask = torch.tensor([[True, False, False], [True, True, False]]).t()
    assert torch.equal(unpack_bits(pack_bits(mask), mask.shape), mask)


def test_length_mismatch_is_a_cftool_error_naming_the_source():
    packed = pack_bits(torch.ones(20, dtype=torch.bool))
    with pytest.raises(CftoolError) as error:
        unpack_bits(packed, (5, 5), source="triggers/dtd.safetensors")
    message = str(error.value)
    assert message.startswith("triggers/dtd.safetensors: packed mask has 3 bytes but shape [5, 5] needs 4")
    with pytest.raises(CftoolError, match="1-D uint8"):
        unpack_bits(packed.to(torch.int16), (20,))


def test_only_bool_masks_are_packed():
    with pytest.raises(TypeError, match="bool"):
        pack_bits(torch.ones(3))
