"""A restricted unpickler for CIFAR-100's python batches: it rebuilds the dicts, lists, strings, numbers and numpy
arrays of numbers those files hold, and refuses anything else a pickle could name or claim."""

from __future__ import annotations

import math
import pickle
import pickletools
import re
from typing import BinaryIO

import numpy as np


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that holds more than CIFAR-100's files do."""


class _PickledDtype:
    """Stands for ``numpy.dtype(code, align, copy)`` in a CIFAR pickle, and takes the byte order from the state the
    pickle gives it. Only plain numbers: a dtype of Python objects would let the pickle put objects into an array,
    and numpy's own dtype.__setstate__ accepts states that contradict the dtype (a subarray wider than its itemsize)."""

    def __init__(self, code: object, align: object = False, copy: object = False):
        # Matched before numpy parses it: numpy reads some dtype strings with Python's parser.
        if isinstance(code, str) and _PLAIN_NUMBER_CODE.fullmatch(code):
            try:
                self.dtype = np.dtype(code)
                return
            except TypeError:  # a size numpy lacks, such as 'u3'
                pass
        objects = isinstance(code, str) and code.lstrip("<>|=").startswith("O")
        kind = "Python objects" if objects else "other values than numbers"
        raise RefusedPickle(f"it holds a numpy array of {kind} (dtype {code!r:.40})")

    def __setstate__(self, state: object) -> None:
        # numpy writes (3, byte order, None, None, None, -1, -1, 0) for a plain number.
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[1] in ("<", ">", "|", "=")
            and state[2:5] == (None, None, None)
        ):
            raise RefusedPickle(f"it holds a numpy dtype state numpy does not write for {self.dtype}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class PickledArray:
    """Stands for ``numpy.core.multiarray._reconstruct(numpy.ndarray, …)`` in a CIFAR pickle; the state the pickle
    then gives it (shape, dtype, order, raw bytes) becomes ``array`` through np.frombuffer, so that numpy's own
    ndarray.__setstate__ never sees a state the pickle made up."""

    def __init__(self, array_type: object, shape: object, code: object):
        if array_type is not _NDARRAY:
            raise RefusedPickle("it rebuilds an array of another type than numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # (1, shape, dtype, Fortran order, raw bytes), or the older form without the version that numpy still reads.
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise RefusedPickle("it holds a numpy array state numpy does not write")
        shape, dtype, fortran_order, data = state
        if isinstance(data, str):  # Python 2's str, read with encoding="latin1"
            data = data.encode("latin1")
        if not (
            isinstance(dtype, _PickledDtype)
            and isinstance(shape, tuple)
            and len(shape) <= _NUMPY_MAX_DIMS
            and all(type(size) is int and size >= 0 for size in shape)
            and isinstance(data, bytes)
        ):
            raise RefusedPickle("it holds a numpy array state numpy does not write")
        if len(data) != math.prod(shape) * dtype.dtype.itemsize:
            raise RefusedPickle(f"it holds {len(data)} bytes for a numpy array of shape {shape} and {dtype.dtype}")
        self.array = np.frombuffer(data, dtype.dtype).reshape(shape, order="F" if fortran_order else "C")


def _latin1_bytes(text: object, encoding: object) -> bytes:
    """Stands for ``_codecs.encode(text, "latin1")``, how Python 3 pickles bytes at protocols 0 to 2 (CIFAR files
    re-pickled by Python 3 at protocol 2 hold their pixels so)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise RefusedPickle(f"it calls _codecs.encode with {encoding!r}, not 'latin1'")
    return text.encode("latin1")


_NDARRAY = object()  # numpy.ndarray as a pickle names it: only PickledArray takes it, nothing can call it
_PICKLE_MAX_OPCODES = 1_000_000  # CIFAR-100's training batch, the largest file, holds about 200,000
_PLAIN_NUMBER_CODE = re.compile(r"[<>|=]?[biuf][0-9]{1,2}")  # 'u1' (CIFAR's pixels), '<i8', 'f4' …
_NUMPY_MAX_DIMS = 64
# Every global CIFAR-100's python files name (numpy 2 moved numpy.core to numpy._core), or the same files re-pickled
# by Python 3 name (_codecs.encode), and what stands for each.
_CIFAR_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): PickledArray,
    ("numpy._core.multiarray", "_reconstruct"): PickledArray,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PickledDtype,
    ("_codecs", "encode"): _latin1_bytes,
}


def check_opcodes(file: BinaryIO) -> None:
    """Looks over a pickle's opcodes before the unpickler runs them, refusing what would let a file claim far more
    memory than it holds, or trip the unpickler: more opcodes than CIFAR's files hold (each may make an object), a memo
    index beyond the opcodes so far (CPython's unpickler grows its memo table to the index: 9 bytes claim gigabytes),
    and the opcodes of protocol 5 (told of a bytearray too large for memory, the unpickler prints to stderr)."""
    head = file.read(2)
    if len(head) == 2 and head[0] == pickle.PROTO[0] and head[1] > pickle.HIGHEST_PROTOCOL:
        raise RefusedPickle(
            f"it declares pickle protocol {head[1]}, beyond Python's highest ({pickle.HIGHEST_PROTOCOL}); use the "
            "files of the original cifar-100-python.tar.gz (protocol 2)"
        )
    file.seek(0)
    for count, (opcode, argument, _) in enumerate(pickletools.genops(file)):
        if count == _PICKLE_MAX_OPCODES:
            raise RefusedPickle(f"it holds more than {_PICKLE_MAX_OPCODES} opcodes")
        if opcode.proto > 4:
            raise RefusedPickle(
                f"it is a pickle of protocol 5 (opcode {opcode.name}), which cftool does not read; use the files of "
                "the original cifar-100-python.tar.gz (protocol 2), or pickle them again at protocol 4 or lower"
            )
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and argument > count:
            raise RefusedPickle(f"its opcode {count} stores memo entry {argument}; picklers number them in order")


class CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays of numbers, what CIFAR-100's files hold, and refuses
    any other global the pickle names: unpickling calls whatever it names, os.system included."""

    def find_class(self, module: str, name: str) -> object:
        stand_in = _CIFAR_GLOBALS.get((module, name))
        if stand_in is None:
            raise RefusedPickle(f"it references {module}.{name}, which could run code")
        return stand_in
