"""4-bit two's complement integers of a weight by output channel, two channels per byte row: the layout the conv
decode kernels read 4-bit codes in (``int8``'s and ``bie-bitplane``'s codes up to 4 bits, ``bbs``'s kept columns up
to 4 bits).

Channels 2c and 2c + 1 share the bytes of row c, in the low and high nibble, each channel's K contiguous: a vector
of one channel's weights is one contiguous load of bytes, widened, and one nibble of each lane taken, with the
nibble (the channel's parity) the same for the whole vector. (:func:`nibble` also reads ``int8``'s matmul panels,
two weights of a channel per byte.)
"""

from __future__ import annotations

import numpy as np
from tvm import tirx


def pack(codes: np.ndarray) -> np.ndarray:
    """``codes`` [N, K] (in -8..7) as int8 [ceil(N / 2), K]: channel ``n`` in nibble ``n % 2`` of row ``n // 2``."""
    pairs = np.zeros((-(-codes.shape[0] // 2) * 2, codes.shape[1]), np.int8)
    pairs[:len(codes)] = codes
    nibbles = pairs.view(np.uint8) & np.uint8(15)
    return (nibbles[0::2] | (nibbles[1::2] << np.uint8(4))).view(np.int8)


def nibble(byte, half) -> tirx.PrimExpr:
    """The signed 4-bit number in nibble ``half`` (0 low, 1 high) of the int8 ``byte``: the sign-extended byte shifted
    right by 4 (high), or its low 4 bits sign-extended by ``(b ^ 8) - 8`` (low). One shift per byte: shifts of
    512-bit vectors have one port, which four shifts per byte (each nibble to the top of an int32 and back) held."""
    wide = byte.astype("int32")
    low = ((wide & tirx.const(15, "int32")) ^ tirx.const(8, "int32")) - tirx.const(8, "int32")
    return tirx.Select(half == 0, low, wide >> tirx.const(4, "int32"))
