"""float16 <-> float32 and bfloat16 -> float32 conversion of numpy arrays by integer operations on the bits.

numpy casts float16 one element at a time (several ns each); these run as a handful of vectorised integer
passes and give the same bits as numpy's casts for every finite value (round to nearest, ties to even).
The post-hoc reconstruction converts every snapshot element once and every output element once, so on
a CPU this is most of its arithmetic (docs/phema.md, "Speed").

binary16: sign bit 15, exponent bits 10-14 (bias 15), mantissa bits 0-9.
binary32: sign bit 31, exponent bits 23-30 (bias 127), mantissa bits 0-22.
bfloat16: the upper 16 bits of a binary32 (sign bit 15, exponent bits 7-14, mantissa bits 0-6); numpy has
no bfloat16 dtype, so these arrays hold its bit patterns as uint16.
"""

from __future__ import annotations

import numpy as np

_REBIAS = 112  # 127 - 15: exponent bias of binary32 minus that of binary16
_SIGN_AND_MAGNITUDE = np.int32(-0x70000001)  # 0x8FFFFFFF: a half's bits << 13 without its sign extension
_SCALE_UP = np.float32(2.0**_REBIAS)
_ROUND_AND_REBIAS = np.int32(0x0FFF - (_REBIAS << 23))  # half an output ulp minus one, then rebias
EXPONENT_BITS = {"F16": np.uint16(0x7C00), "BF16": np.uint16(0x7F80)}  # by safetensors dtype name
_INFINITY = 0x7C00  # a half's bits for +infinity
_MIN_NORMAL = 0x0400  # the smallest normal half's bits: below it the half is subnormal (or zero)


def nonfinite(h: np.ndarray, work: np.ndarray, exponent: np.uint16 = EXPONENT_BITS["F16"]) -> bool:
    """Whether a float16 array (or bfloat16 bits, with `exponent=EXPONENT_BITS["BF16"]`) holds an infinity
    or NaN: all exponent bits set. `work`: uint16, h's shape."""
    np.bitwise_and(h.view(np.uint16), exponent, out=work)
    return bool(np.max(work, initial=0) == exponent)


def bfloat16_to_float32(b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns `b` (uint16, any strides) as float32, computed in the int32 array `out` (b's
    shape): the same bits in the upper half, so every value (inf and NaN included) is kept exactly."""
    np.copyto(out, b)  # zero-extends
    np.left_shift(out, 16, out=out)
    return out.view(np.float32)


def to_float32(h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float16 array `h` (finite, any strides) as float32, computed in the int32 array `out` (h's shape);
    returns `out` viewed as float32."""
    np.copyto(out, h.view(np.int16))  # sign-extends into bits 16-31
    np.left_shift(out, 13, out=out)  # exponent and mantissa to bits 23-27 and 13-22
    np.bitwise_and(out, _SIGN_AND_MAGNITUDE, out=out)  # sign at bit 31, bits 28-30 cleared
    f = out.view(np.float32)
    # x * 2^-112 as a float32, and a power-of-two rescale is exact: subnormal halves become normal floats
    np.multiply(f, _SCALE_UP, out=f)
    return f


def to_float16(x: np.ndarray, out: np.ndarray, work: tuple[np.ndarray, ...]) -> None:
    """float32 array `x` (contiguous) rounded to nearest even into the float16 array `out` (x's shape, any
    strides). `work`: three int32 arrays and one bool array of x's shape. Out-of-range values become
    infinities as in numpy; results in the half's subnormal range are cast by numpy (they are rare)."""
    sign, magnitude, odd, low = work
    bits = x.view(np.int32)
    np.right_shift(bits, 16, out=sign)
    np.bitwise_and(sign, 0x8000, out=sign)
    np.bitwise_and(bits, 0x7FFFFFFF, out=magnitude)
    np.right_shift(magnitude, 13, out=odd)
    np.bitwise_and(odd, 1, out=odd)  # the last mantissa bit kept: a tie rounds to make it even
    np.add(magnitude, odd, out=magnitude)
    np.add(magnitude, _ROUND_AND_REBIAS, out=magnitude)
    np.right_shift(magnitude, 13, out=magnitude)
    if magnitude.max(initial=0) > _INFINITY:  # at or beyond 65520 (rare: one read instead of a clamp)
        np.minimum(magnitude, _INFINITY, out=magnitude)
    np.less(magnitude, _MIN_NORMAL, out=low)  # rebiasing holds only for normal halves
    np.bitwise_or(magnitude, sign, out=magnitude)
    index = np.flatnonzero(low)
    if index.size:
        magnitude.reshape(-1)[index] = x.reshape(-1)[index].astype(np.float16).view(np.uint16)
    np.copyto(out.view(np.uint16), magnitude, casting="unsafe")
