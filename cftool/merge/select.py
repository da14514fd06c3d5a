"""Exact k-th largest magnitude of numbers streamed in chunks, in a few passes: a radix select over float bits.

For x ≥ 0 the IEEE-754 bit pattern of x, read as a signed integer of the same width, orders exactly as x does
(the sign bit is 0, the exponent sits above the mantissa). So the k-th largest |x| can be found one 16-bit digit
of its bit pattern at a time, from the top: a pass counts, among the elements whose higher digits equal the ones
already found, how many have each value of the next digit; walking that histogram from the largest digit down
gives the digit of the k-th largest and its rank among the elements that share it. float16 and bfloat16 need
one pass (15 bits below the sign), float32 two, float64 four. Nothing is sorted or sampled, and memory is one
histogram of 65,536 counts per group whose digit is being counted.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch

DIGIT_BITS = 16
_INT_OF_FLOAT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


class RadixSelect:
    """The ``rank``-th largest |x| (rank 1 = the largest) of each group of numbers, streamed in passes.

    In every pass, feed each group's numbers with ``add`` (any number of calls, any shapes), then ``close`` the
    group; once every pass is done (``done``), ``threshold(group)`` is the exact value, of ``dtype``. A rank
    larger than the group's count is an error found when the group is closed.
    """

    def __init__(self, dtype: torch.dtype, ranks: Mapping[Hashable, int]):
        if dtype not in _INT_OF_FLOAT:
            raise ValueError(f"RadixSelect needs a float16, bfloat16, float32 or float64 dtype, not {dtype}")
        if any(rank < 1 for rank in ranks.values()):
            raise ValueError("ranks start at 1 (the largest)")
        self.dtype = dtype
        self._int = _INT_OF_FLOAT[dtype]
        key_bits = torch.finfo(dtype).bits - 1  # the sign bit of |x| is always 0
        self._widths = [min(DIGIT_BITS, key_bits - start) for start in range(0, key_bits, DIGIT_BITS)]
        self._shifts = [key_bits - sum(self._widths[: i + 1]) for i in range(len(self._widths))]
        self._rank = dict(ranks)  # the rank still sought among the elements that share the known prefix
        self._prefix = dict.fromkeys(ranks, 0)  # the digits found so far, as one integer
        self._histograms: dict[Hashable, torch.Tensor] = {}
        self._closed: set[Hashable] = set()
        self.pass_index = 0

    @property
    def passes(self) -> int:
        return len(self._widths)

    @property
    def done(self) -> bool:
        return self.pass_index == self.passes

    def add(self, group: Hashable, values: torch.Tensor) -> None:
        if group in self._closed:
            raise RuntimeError(f"group {group!r} was already closed in this pass")
        width, shift = self._widths[self.pass_index], self._shifts[self.pass_index]
        keys = values.detach().to(self.dtype).abs().reshape(-1).view(self._int)
        if keys.dtype == torch.int16:  # widened: the arithmetic below reaches 2^15, and bincount needs int32
            keys = keys.int()
        # The next digit of the elements whose higher digits are the prefix found so far lands in 0 … 2^width − 1;
        # every other element lands below or above, and clamping puts it in bin −1 or 2^width, which are dropped:
        # no masked selection, which would cost several times more than this arithmetic.
        digits = (keys >> shift) - (self._prefix[group] << width)
        digits = digits.clamp_(-1, 1 << width).add_(1)
        counts = torch.bincount(digits, minlength=(1 << width) + 2)[1:-1]
        if group in self._histograms:
            self._histograms[group] += counts
        else:
            self._histograms[group] = counts

    def close(self, group: Hashable) -> None:
        """This pass has seen all of ``group``'s numbers: fix the group's next digit."""
        width = self._widths[self.pass_index]
        histogram = self._histograms.pop(group, None)
        if histogram is None:
            histogram = torch.zeros(1 << width, dtype=torch.int64)
        from_top = histogram.flip(0).cumsum(0)
        rank = self._rank[group]
        if int(from_top[-1]) < rank:
            raise ValueError(f"group {group!r} has {int(from_top[-1])} candidates, fewer than rank {rank}")
        position = int(torch.searchsorted(from_top, rank))  # first digit from the top whose count reaches rank
        digit = (1 << width) - 1 - position
        above = int(from_top[position]) - int(histogram[digit])
        self._rank[group] = rank - above
        self._prefix[group] = (self._prefix[group] << width) | digit
        self._closed.add(group)

    def next_pass(self) -> None:
        unclosed = self._rank.keys() - self._closed
        if unclosed:
            raise RuntimeError(f"{len(unclosed)} groups were not closed in pass {self.pass_index}")
        self._closed.clear()
        self.pass_index += 1

    def threshold(self, group: Hashable) -> torch.Tensor:
        if not self.done:
            raise RuntimeError("the threshold is known only after the last pass")
        return torch.tensor(self._prefix[group], dtype=self._int).view(self.dtype)
